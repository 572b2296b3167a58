"""Shared fixtures: the Omniglot data set, decoded once per test session."""

import os
from pathlib import Path

import pytest
import torch

from rlmaml.supervised import OmniglotData, load_omniglot


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    """The Omniglot directory: ``$RLMAML_OMNIGLOT_DIR`` or the shared copy beside the repo."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
    root = Path(os.environ.get("RLMAML_OMNIGLOT_DIR", shared))
    if not root.is_dir():
        pytest.skip(f"Omniglot data not found in {root} (set RLMAML_OMNIGLOT_DIR)")
    return root


@pytest.fixture(scope="session")
def omniglot_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-session cache directory, so tests never read or write a user's cache."""
    return tmp_path_factory.mktemp("omniglot_cache")


@pytest.fixture(scope="session")
def omniglot_data(omniglot_dir: Path, omniglot_cache_dir: Path) -> OmniglotData:
    """The full data set at 28x28, decoded once per session (about 5 s on one core)."""
    return load_omniglot(omniglot_dir, cache_dir=omniglot_cache_dir)


@pytest.fixture
def float64():
    """Double precision for gradient checks; the default dtype is restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def one_thread():
    """One torch intra-op thread: tiny models on a busy 2-core machine otherwise slow down many
    times (OpenMP workers waiting for a core); results are identical."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
