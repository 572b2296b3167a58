"""The inner loop of MAML as one pure function.

``adapt`` takes a parameter dict and a loss closure and returns the adapted dict. It uses
:func:`torch.func.grad` rather than ``torch.autograd.grad`` so that it composes with
:func:`torch.func.vmap` (many tasks adapted at once) while staying differentiable by ordinary
autograd with respect to the initial parameters (second-order MAML) and to a learned step size
(Meta-SGD).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from rlmaml.core.params import Params

LossFn = Callable[[Params], Tensor]
StepSize = float | Mapping[str, Tensor]


def detach_step_size(lr: StepSize) -> StepSize:
    """``lr`` cut from the autograd graph (Meta-SGD's learned step sizes, at evaluation)."""
    return lr if isinstance(lr, float) else {name: t.detach() for name, t in lr.items()}


def sgd_step(params: Params, grads: Mapping[str, Tensor], lr: StepSize) -> Params:
    """One gradient-descent step ``p - lr * g``; ``lr`` is a float or a per-parameter dict."""
    if isinstance(lr, Mapping):
        missing = params.keys() - lr.keys()
        if missing:
            raise KeyError(f"per-parameter step sizes are missing for {sorted(missing)}")
        return {name: p - lr[name] * grads[name] for name, p in params.items()}
    return {name: p - lr * grads[name] for name, p in params.items()}


def adapt(
    params: Params,
    loss_fn: LossFn,
    *,
    steps: int = 1,
    lr: StepSize = 0.01,
    first_order: bool = False,
) -> Params:
    """Run ``steps`` steps of gradient descent on ``loss_fn`` starting from ``params``.

    Args:
        params: the initial parameters (the meta-parameters, or a slice of a task stack).
        loss_fn: maps a parameter dict to a scalar loss; it closes over the model and the data.
        steps: number of inner gradient steps (0 returns ``params`` unchanged).
        lr: the inner step size: a float, or a dict of tensors broadcastable to each parameter
            (Meta-SGD's learned per-parameter step sizes).
        first_order: treat the inner gradients as constants (first-order MAML). With ``False``
            the result is differentiable through the inner gradients (second-order MAML).

    Returns:
        The adapted parameter dict.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    grad_fn = torch.func.grad(loss_fn)
    for _ in range(steps):
        grads = grad_fn(params)
        if first_order:
            grads = {name: g.detach() for name, g in grads.items()}
        params = sgd_step(params, grads, lr)
    return params
