"""Meta-objectives over a batch of tasks, all built on :func:`rlmaml.core.inner.adapt`.

* MAML (second order), first-order MAML and Meta-SGD share :func:`maml_losses`: adapt on each
  task's support data, evaluate on its query data. They differ only in ``first_order`` and in
  whether ``lr`` is a float or a dict of learned per-parameter tensors.
* Reptile uses :func:`reptile_direction`: the mean displacement ``theta - phi_i`` of the
  adapted parameters, which an outer optimiser treats as a gradient.

A task loss is ``task_loss(params, data) -> scalar`` for one task's data (no task axis).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rlmaml.core.inner import StepSize, adapt
from rlmaml.core.params import Params
from rlmaml.core.tasks import map_tasks

TaskLoss = Callable[[Params, Any], Tensor]


def adapt_tasks(
    params: Params,
    task_loss: TaskLoss,
    support: Any,
    *,
    steps: int,
    lr: StepSize,
    first_order: bool = False,
    vectorize: bool = True,
    chunk_size: int | None = None,
) -> Params:
    """Adapt ``params`` to every task of ``support``; returns a stacked dict (task axis first)."""

    def one_task(task_support: Any) -> Params:
        return adapt(
            params,
            lambda p: task_loss(p, task_support),
            steps=steps,
            lr=lr,
            first_order=first_order,
        )

    return map_tasks(one_task, support, vectorize=vectorize, chunk_size=chunk_size)


def maml_losses(
    params: Params,
    task_loss: TaskLoss,
    support: Any,
    query: Any,
    *,
    steps: int,
    lr: StepSize,
    first_order: bool = False,
    vectorize: bool = True,
    chunk_size: int | None = None,
) -> Tensor:
    """Post-adaptation query loss of each task, shape ``[tasks]``.

    Its mean is the MAML meta-objective; differentiating it with respect to ``params`` (and to
    ``lr`` when that is a dict of tensors that require grad: Meta-SGD) gives the meta-gradient.
    """

    def one_task(task_support: Any, task_query: Any) -> Tensor:
        adapted = adapt(
            params,
            lambda p: task_loss(p, task_support),
            steps=steps,
            lr=lr,
            first_order=first_order,
        )
        return task_loss(adapted, task_query)

    return map_tasks(one_task, support, query, vectorize=vectorize, chunk_size=chunk_size)


def reptile_direction(
    params: Params,
    task_loss: TaskLoss,
    support: Any,
    *,
    steps: int,
    lr: StepSize,
    vectorize: bool = True,
    chunk_size: int | None = None,
) -> Params:
    """Reptile's update direction ``mean_i(theta - phi_i)`` (Nichol et al. 2018), detached.

    Used as the gradient of an outer optimiser: plain SGD with step ``eps`` gives exactly
    ``theta <- theta + eps * mean_i(phi_i - theta)``.
    """
    base = {name: p.detach() for name, p in params.items()}
    adapted = adapt_tasks(
        base,
        task_loss,
        support,
        steps=steps,
        lr=lr,
        first_order=True,
        vectorize=vectorize,
        chunk_size=chunk_size,
    )
    return {name: (base[name] - adapted[name].mean(0)).detach() for name in base}


def adaptation_curve(
    params: Params,
    task_loss: TaskLoss,
    task_metric: Callable[[Params, Any], Tensor],
    support: Any,
    query: Any,
    *,
    steps: int,
    lr: StepSize,
    vectorize: bool = True,
    chunk_size: int | None = None,
) -> Tensor:
    """``task_metric`` on each task's query data after 0, 1, ..., ``steps`` inner steps.

    Returns a ``[tasks, steps + 1]`` tensor, detached. Each step continues from the previous
    one, so a curve of N steps costs N inner steps, not N(N+1)/2.
    """
    base = {name: p.detach() for name, p in params.items()}

    def one_task(task_support: Any, task_query: Any) -> Tensor:
        current, values = base, [task_metric(base, task_query)]
        for _ in range(steps):
            current = adapt(current, lambda p: task_loss(p, task_support), steps=1, lr=lr)
            current = {name: t.detach() for name, t in current.items()}
            values.append(task_metric(current, task_query))
        return torch.stack(values)

    with torch.no_grad():
        return map_tasks(one_task, support, query, vectorize=vectorize, chunk_size=chunk_size)
