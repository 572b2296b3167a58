"""Functional parameters: any ``nn.Module`` seen as a plain ``dict[str, Tensor]``.

The MAML core never mutates modules. It reads a module's parameters (and buffers) once into
dicts and evaluates the module with :func:`torch.func.functional_call`, so an adapted parameter
set is just another dict, and a stack of per-task parameter sets is a dict whose tensors carry a
leading task axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]


def module_params(module: nn.Module) -> Params:
    """The trainable parameters of ``module`` as a name -> tensor dict (the live tensors)."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def module_buffers(module: nn.Module) -> Params:
    """The buffers of ``module`` (BatchNorm statistics, ...) as a name -> tensor dict."""
    return dict(module.named_buffers())


def functional_forward(
    module: nn.Module,
    params: Mapping[str, Tensor],
    *args: Any,
    buffers: Mapping[str, Tensor] | None = None,
) -> Any:
    """Evaluate ``module(*args)`` with ``params`` (and ``buffers``) in place of its own tensors.

    Tensors the dicts do not name are taken from the module itself, so a partial dict (only the
    adapted layers, say) is allowed.
    """
    tensors = dict(params) if buffers is None else {**buffers, **params}
    return torch.func.functional_call(module, tensors, args, strict=False)


def stack_params(per_task: Sequence[Mapping[str, Tensor]]) -> Params:
    """Stack per-task parameter dicts into one dict with a leading task axis."""
    if not per_task:
        raise ValueError("stack_params needs at least one parameter dict")
    names = per_task[0].keys()
    for i, p in enumerate(per_task):
        if p.keys() != names:
            raise ValueError(
                f"parameter dict {i} has names {sorted(p)} but dict 0 has {sorted(names)}"
            )
    return {name: torch.stack([p[name] for p in per_task]) for name in names}


def unstack_params(stacked: Mapping[str, Tensor]) -> list[Params]:
    """Split a dict with a leading task axis into one dict per task."""
    sizes = {t.shape[0] for t in stacked.values()}
    if len(sizes) != 1:
        raise ValueError(f"stacked parameters disagree on the task axis length: {sorted(sizes)}")
    (n,) = sizes
    return [{name: t[i] for name, t in stacked.items()} for i in range(n)]


def expand_params(params: Mapping[str, Tensor], n_tasks: int) -> Params:
    """``n_tasks`` copies of ``params`` along a new leading axis (a view, no memory copy).

    The task axis always has stride 0, also for ``n_tasks == 1``: samplers read stride 0 as
    "one parameter set shared by every task" and then run one plain forward pass instead of a
    ``vmap`` over tasks (slices of the view, and pickled copies of them, keep the stride, so a
    worker given a single task of a shared phase takes the same path). ``expand`` alone would
    not do: expanding the size-1 axis of ``unsqueeze(0)`` to size 1 keeps its nonzero stride.
    Expanding to at least 2 and slicing back keeps stride 0 and, unlike ``as_strided``, stays
    an ordinary view for autograd and ``torch.func``.

    Raises:
        ValueError: if ``n_tasks`` is negative.
    """
    if n_tasks < 0:
        raise ValueError(f"n_tasks must be non-negative, got {n_tasks}")
    return {
        name: t.unsqueeze(0).expand(max(n_tasks, 2), *t.shape)[:n_tasks]
        for name, t in params.items()
    }
