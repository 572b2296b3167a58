"""Trust-region policy optimisation of the meta-parameters (Schulman et al. 2015).

Solve ``F s = -g`` by conjugate gradient (``F`` the Hessian of the KL, ``g`` the surrogate's
gradient), scale ``s`` so that the quadratic KL model equals ``max_kl``, then backtrack until the
surrogate improves and the measured KL stays within ``max_kl``. Parameters are dicts; the
arithmetic is done on flattened vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rlmaml.core import Params


@dataclass(frozen=True)
class TRPOSettings:
    """The paper's values by default (REFERENCE.md section 2)."""

    max_kl: float = 0.01
    damping: float = 1e-5
    cg_iters: int = 10
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15


@dataclass(frozen=True)
class TRPOResult:
    """What one update did: the accepted step fraction (0 if rejected), its KL and loss change."""

    step_fraction: float
    kl: float
    loss_before: float
    loss_after: float


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int, tolerance: float = 1e-10
) -> Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given ``x -> A x``."""
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    rr = residual @ residual
    for _ in range(iters):
        if rr <= tolerance:
            break
        a_direction = matvec(direction)
        alpha = rr / (direction @ a_direction)
        x += alpha * direction
        residual -= alpha * a_direction
        rr_next = residual @ residual
        direction = residual + (rr_next / rr) * direction
        rr = rr_next
    return x


def trpo_step(
    params: Params,
    loss_and_kl: Callable[[Params], tuple[Tensor, Tensor]],
    gradient: Params,
    fisher_product: Callable[[Params], Params],
    settings: TRPOSettings,
    loss_before: float,
) -> TRPOResult:
    """Update ``params`` in place by one TRPO step; the step is refused if no candidate passes.

    Args:
        params: the meta-parameters (leaf tensors), changed in place.
        loss_and_kl: the surrogate loss and KL at a candidate parameter dict (no gradient needed).
        gradient: the surrogate's gradient at ``params``.
        fisher_product: ``v -> F v`` at ``params``.
        settings: trust region and search settings.
        loss_before: the surrogate loss at ``params`` (the caller has it from the gradient).
    """
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def flat(d: Params) -> Tensor:
        return torch.cat([d[n].reshape(-1) for n in names])

    def unflat(v: Tensor) -> Params:
        return {n: t.view(s) for n, t, s in zip(names, v.split(sizes), shapes, strict=True)}

    def damped_fisher(v: Tensor) -> Tensor:
        return flat(fisher_product(unflat(v))) + settings.damping * v

    g = flat(gradient).detach()
    step = conjugate_gradient(damped_fisher, -g, settings.cg_iters)
    curvature = step @ damped_fisher(step)
    if not bool(torch.isfinite(curvature)) or curvature <= 0:
        raise FloatingPointError(f"TRPO: non-positive or non-finite curvature {curvature.item()}")
    full_step = step * torch.sqrt(2.0 * settings.max_kl / curvature)
    start = flat(params).detach()
    with torch.no_grad():
        fraction = 1.0
        for _ in range(settings.max_backtracks):
            candidate = unflat(start + fraction * full_step)
            loss, kl = (x.item() for x in loss_and_kl(candidate))
            if math.isfinite(loss) and loss < loss_before and kl <= settings.max_kl:
                _assign(params, candidate)
                return TRPOResult(fraction, kl, loss_before, loss)
            fraction *= settings.backtrack_ratio
    return TRPOResult(0.0, 0.0, loss_before, loss_before)


def _assign(params: Params, values: Params) -> None:
    with torch.no_grad():
        for name, tensor in params.items():
            tensor.copy_(values[name])
