"""Crash-safe checkpoints: tensors in a safetensors file, everything else in a JSON file.

Checkpoint ``N`` is the pair ``ckpt_{N:08d}.safetensors`` + ``ckpt_{N:08d}.json``. Each file
is written to a temporary name in the same folder, fsynced and renamed into place, and the
JSON file is written last: it is the commit marker. A checkpoint counts only when both
files exist and the JSON parses, so a process killed mid-save leaves the previous
checkpoint as the latest one. Safetensors holds only tensors and cannot execute code on
load, unlike pickle.

Several state dicts share one file by prefixing their keys (:func:`flatten_state`);
optimiser state and RNG state have helpers that split them into tensors and JSON.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

_NAME = re.compile(r"ckpt_(\d+)\.json")
_TENSORS_NAME = re.compile(r"ckpt_(\d+)\.safetensors")
_SEP = "/"
_TENSOR_TAG = "__tensor__"
_TUPLE_TAG = "__tuple__"


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        step: Training step at which it was saved.
        tensors: Flat mapping of names to CPU tensors.
        metadata: The JSON-able dict given to :func:`save_checkpoint`.
    """

    step: int
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]


def save_checkpoint(
    directory: str | Path,
    step: int,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
    keep: int = 3,
) -> Path:
    """Atomically write checkpoint ``step`` and delete all but the newest ``keep`` ones.

    Tensors are detached, moved to the CPU and cloned into contiguous memory of their own,
    because safetensors refuses views, non-contiguous and storage-sharing tensors (tied
    weights, slices of one buffer).

    Args:
        directory: Checkpoint folder; created if needed.
        step: Training step; names the files.
        tensors: Flat mapping of names to tensors (see :func:`flatten_state`).
        metadata: JSON-serialisable data: config, counters, RNG state, optimiser scalars.
        keep: How many complete checkpoints to keep, newest first (at least 1).

    Returns:
        Path of the JSON file, whose presence marks the checkpoint complete.
    """
    if keep < 1:
        raise ValueError(f"keep: must be >= 1, got {keep}")
    if step < 0:
        raise ValueError(f"step: must be >= 0, got {step}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cpu = {}
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(tensor).__name__}")
        cpu[name] = tensor.detach().cpu().clone(memory_format=torch.contiguous_format)
    header = json.dumps({"step": step, "metadata": metadata}, indent=1)
    weights_path, json_path = _paths(directory, step)
    json_path.unlink(missing_ok=True)  # Un-commit an older save of the same step first.
    _atomic_write(weights_path, safetensors_bytes(cpu))
    _atomic_write(json_path, header.encode("utf-8"))
    _prune(directory, keep, step)
    return json_path


def latest_checkpoint(directory: str | Path) -> Checkpoint | None:
    """Load the complete checkpoint with the highest step in ``directory``, if any.

    Incomplete checkpoints (missing or unparsable JSON, missing tensors file) and stray
    temporary files are ignored.
    """
    steps = checkpoint_steps(Path(directory))
    return load_checkpoint(_paths(Path(directory), steps[-1])[1]) if steps else None


def load_checkpoint(
    path_or_step: str | Path | int, directory: str | Path | None = None
) -> Checkpoint:
    """Load one checkpoint, named by either of its files or by its step.

    Args:
        path_or_step: The ``.json`` or ``.safetensors`` file of a checkpoint, or a step.
        directory: Checkpoint folder; required when ``path_or_step`` is a step.

    Raises:
        FileNotFoundError: If the checkpoint is missing or incomplete.
    """
    if isinstance(path_or_step, int):
        if directory is None:
            raise ValueError("directory is required when loading a checkpoint by step")
        weights_path, json_path = _paths(Path(directory), path_or_step)
    else:
        json_path = Path(path_or_step).with_suffix(".json")
        weights_path = json_path.with_suffix(".safetensors")
    header = _read_header(json_path)
    if header is None or not weights_path.is_file():
        raise FileNotFoundError(f"no complete checkpoint at {json_path}")
    return Checkpoint(
        step=header["step"], tensors=load_file(weights_path), metadata=header["metadata"]
    )


def checkpoint_steps(directory: str | Path) -> list[int]:
    """Sorted steps of the complete checkpoints in ``directory`` (empty if it does not exist)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    steps = []
    for path in directory.iterdir():
        match = _NAME.fullmatch(path.name)
        if match and path.with_suffix(".safetensors").is_file() and _read_header(path):
            steps.append(int(match.group(1)))
    return sorted(steps)


def flatten_state(
    prefix_to_state: Mapping[str, Mapping[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Merge several tensor dicts into one, keys becoming ``"prefix/key"``.

    For example ``{"params": model.state_dict(), "optim": optimiser_tensors}``.
    """
    flat: dict[str, torch.Tensor] = {}
    for prefix, state in prefix_to_state.items():
        if not prefix or _SEP in prefix:
            raise ValueError(f"prefix {prefix!r}: must be non-empty and contain no {_SEP!r}")
        for key, tensor in state.items():
            flat[f"{prefix}{_SEP}{key}"] = tensor
    return flat


def unflatten_state(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Inverse of :func:`flatten_state`: split keys at their first ``"/"``."""
    nested: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        prefix, sep, key = name.partition(_SEP)
        if not sep:
            raise ValueError(f"{name!r}: tensor name has no {_SEP!r}-separated prefix")
        nested.setdefault(prefix, {})[key] = tensor
    return nested


def optimizer_state_to_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser's state dict into tensors and JSON-able metadata.

    Tensor entries (Adam's moments and step counts, a tensor learning rate) go to the
    tensors dict under keys like ``"state/0/exp_avg"``; everything else (hyperparameters,
    scalar state) stays in the JSON part, with tuples such as Adam's ``betas`` tagged so
    that they come back as tuples. Together they restore the optimiser exactly through
    :func:`load_optimizer_state`. The tensors are the optimiser's live state, not copies:
    save them before its next step.

    Returns:
        ``(tensors, json_meta)``.
    """
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta = {
        "state": {
            str(index): _encode(entry, f"state{_SEP}{index}", tensors)
            for index, entry in state_dict["state"].items()
        },
        "param_groups": _encode(state_dict["param_groups"], "param_groups", tensors),
    }
    return tensors, meta


def load_optimizer_state(
    optimizer: torch.optim.Optimizer,
    tensors: Mapping[str, torch.Tensor],
    json_meta: Mapping[str, Any],
) -> None:
    """Restore state saved by :func:`optimizer_state_to_tensors` into ``optimizer``.

    The optimiser must be built over the same parameters, in the same order and groups.
    """
    state_dict = {
        "state": {
            int(index): _decode(entry, tensors) for index, entry in json_meta["state"].items()
        },
        "param_groups": _decode(json_meta["param_groups"], tensors),
    }
    optimizer.load_state_dict(state_dict)


def rng_state(generator: np.random.Generator) -> dict[str, Any]:
    """Return the JSON-able state of a numpy Generator (its bit generator's state dict)."""
    return _jsonable(generator.bit_generator.state)


def restore_rng(generator: np.random.Generator, state: Mapping[str, Any]) -> None:
    """Put ``generator`` back in a state from :func:`rng_state`, so its stream continues.

    Raises:
        ValueError: If the state belongs to a different bit generator algorithm.
    """
    expected = type(generator.bit_generator).__name__
    if state.get("bit_generator") != expected:
        raise ValueError(f"RNG state is for {state.get('bit_generator')}, not {expected}")
    generator.bit_generator.state = dict(state)


def torch_rng_state() -> torch.Tensor:
    """Return torch's global CPU RNG state, a uint8 tensor to store with the checkpoint."""
    return torch.get_rng_state()


def restore_torch_rng(state: torch.Tensor) -> None:
    """Restore torch's global CPU RNG state from :func:`torch_rng_state`."""
    torch.set_rng_state(state.to(device="cpu", dtype=torch.uint8))


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Make ``value`` JSON-able, moving tensors into ``tensors`` under ``key``-derived names."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value
        return {_TENSOR_TAG: key}
    if isinstance(value, Mapping):
        return {str(k): _encode(v, f"{key}{_SEP}{k}", tensors) for k, v in value.items()}
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [_encode(v, f"{key}{_SEP}{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}{_SEP}{i}", tensors) for i, v in enumerate(value)]
    return value


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`_encode`."""
    if isinstance(value, Mapping):
        if _TENSOR_TAG in value:
            return tensors[value[_TENSOR_TAG]]
        if _TUPLE_TAG in value:
            return tuple(_decode(v, tensors) for v in value[_TUPLE_TAG])
        return {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    """Replace numpy arrays and scalars (e.g. in an MT19937 state) by lists and numbers."""
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


def _paths(directory: Path, step: int) -> tuple[Path, Path]:
    """The (tensors, JSON) file paths of checkpoint ``step``."""
    stem = directory / f"ckpt_{step:08d}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def _read_header(json_path: Path) -> dict[str, Any] | None:
    """Parse a checkpoint's JSON file; None if it is missing, truncated or malformed."""
    try:
        header = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict) or not isinstance(header.get("step"), int):
        return None
    return header if "metadata" in header else None


def _prune(directory: Path, keep: int, newest: int) -> None:
    """Delete complete checkpoints beyond the newest ``keep``, and orphaned tensor files.

    An orphan is a tensors file without its JSON from a save that was interrupted; only
    those older than ``newest`` are removed. JSON goes first so that a checkpoint never
    looks complete with its tensors half deleted.
    """
    for step in checkpoint_steps(directory)[:-keep]:
        weights_path, json_path = _paths(directory, step)
        json_path.unlink(missing_ok=True)
        weights_path.unlink(missing_ok=True)
    for path in directory.glob("ckpt_*.safetensors"):
        match = _TENSORS_NAME.fullmatch(path.name)
        if match and int(match.group(1)) < newest and not path.with_suffix(".json").exists():
            path.unlink(missing_ok=True)


def _atomic_write(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a fsynced temporary file and an atomic rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
