"""Everything a run needs to continue exactly: named tensors, optimiser, random generators.

Both settings checkpoint the same way through these two functions: the trainable tensors under
their own names, the optimiser's state under ``optimizer/``, torch's RNG under ``rng/torch`` and
each numpy Generator's state in the JSON metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rlmaml.runs.checkpoint import (
    load_optimizer_state,
    optimizer_state_to_tensors,
    restore_rng,
    restore_torch_rng,
    rng_state,
    torch_rng_state,
)

_OPTIMIZER = "optimizer/"
_TORCH_RNG = "rng/torch"


def capture_state(
    tensors: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer | None,
    generators: Mapping[str, np.random.Generator],
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, metadata)`` for :func:`~rlmaml.runs.checkpoint.save_checkpoint`."""
    out = {**tensors, _TORCH_RNG: torch_rng_state()}
    metadata: dict[str, Any] = {"rngs": {name: rng_state(g) for name, g in generators.items()}}
    if optimizer is not None:
        optim_tensors, metadata["optimizer"] = optimizer_state_to_tensors(optimizer)
        out.update({_OPTIMIZER + k: v for k, v in optim_tensors.items()})
    return out, metadata


def restore_state(
    saved: Mapping[str, Tensor],
    metadata: Mapping[str, Any],
    tensors: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer | None,
    generators: Mapping[str, np.random.Generator],
    learning_rate: float | None = None,
) -> None:
    """Copy a :func:`capture_state` checkpoint back into ``tensors``, optimiser and generators.

    ``learning_rate``, when given, replaces the optimiser's saved one, so a run can be resumed
    with a lower learning rate.

    Raises:
        KeyError: if the checkpoint lacks one of ``tensors`` (it belongs to another model).
    """
    missing = [name for name in tensors if name not in saved]
    if missing:
        raise KeyError(f"checkpoint lacks {missing}: was it written by a different model?")
    with torch.no_grad():
        for name, tensor in tensors.items():
            tensor.copy_(saved[name])
    restore_torch_rng(saved[_TORCH_RNG])
    for name, generator in generators.items():
        restore_rng(generator, metadata["rngs"][name])
    if optimizer is not None:
        optim = {k[len(_OPTIMIZER) :]: v for k, v in saved.items() if k.startswith(_OPTIMIZER)}
        load_optimizer_state(optimizer, optim, metadata["optimizer"])
        if learning_rate is not None:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
