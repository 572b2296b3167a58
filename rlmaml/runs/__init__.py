"""Run-folder infrastructure: typed configs, checkpoints, metrics and plots.

Generic on purpose: nothing here knows about MAML, environments or datasets.
"""

from rlmaml.runs.checkpoint import (
    Checkpoint,
    checkpoint_steps,
    flatten_state,
    latest_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    optimizer_state_to_tensors,
    restore_rng,
    restore_torch_rng,
    rng_state,
    save_checkpoint,
    torch_rng_state,
    unflatten_state,
)
from rlmaml.runs.config import ConfigError, check, config_to_dict, load_config, save_config
from rlmaml.runs.metrics import MetricsLogger, read_metrics
from rlmaml.runs.plots import plot_adaptation_curve, plot_learning_curves
from rlmaml.runs.rundir import RunDir

__all__ = [
    "Checkpoint",
    "ConfigError",
    "MetricsLogger",
    "RunDir",
    "check",
    "checkpoint_steps",
    "config_to_dict",
    "flatten_state",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "load_optimizer_state",
    "optimizer_state_to_tensors",
    "plot_adaptation_curve",
    "plot_learning_curves",
    "read_metrics",
    "restore_rng",
    "restore_torch_rng",
    "rng_state",
    "save_checkpoint",
    "save_config",
    "torch_rng_state",
    "unflatten_state",
]
