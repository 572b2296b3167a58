"""Supervised few-shot learning data: sinusoid regression and Omniglot classification tasks."""

from rlmaml.supervised.episodes import EpisodeSampler
from rlmaml.supervised.omniglot import (
    OmniglotCorruptError,
    OmniglotData,
    OmniglotNotFoundError,
    background_split,
    download_omniglot,
    load_omniglot,
    paper_split,
)
from rlmaml.supervised.sinusoid import SinusoidParams, SinusoidTasks
from rlmaml.supervised.tasks import TaskBatch

__all__ = [
    "EpisodeSampler",
    "OmniglotCorruptError",
    "OmniglotData",
    "OmniglotNotFoundError",
    "SinusoidParams",
    "SinusoidTasks",
    "TaskBatch",
    "background_split",
    "download_omniglot",
    "load_omniglot",
    "paper_split",
]
