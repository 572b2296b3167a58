"""MAML with per-step BatchNorm (MAML++: Antoniou et al. 2019, "How to train your MAML").

A network with :class:`~rlmaml.supervised.models.PerStepBatchNorm2d` layers (``ConvNet(...,
batch_norm="per_step")``) has its own BatchNorm scale, shift and running statistics for every
inner step ``k = 0..K`` (``K = inner_steps``; the query forward after the last inner step is
step ``K``). Its forward pass therefore needs the step index, and whether it belongs to
meta-training (batch statistics) or to evaluation (running statistics).

:class:`PerStepLearner` passes both through the task loss as keyword arguments
(``task_loss(params, data, step=k, ...)``, which :func:`~rlmaml.supervised.problems.criterion_loss`
forwards to the model). The core's :func:`~rlmaml.core.adapt` runs all its steps with one loss
closure, so this learner takes the inner steps one at a time, each with the closure of its
step, as ``rlmaml.rl.maml`` does with one support batch per step: evaluation calls ``adapt``
for one step at a time; meta-training takes each step with ``torch.func.grad(...,
has_aux=True)`` and the core's ``sgd_step``, because the step's batch statistics have to come
out of the inner gradient. The core knows nothing about BatchNorm.

Running statistics are buffers of the model, and a forward pass cannot update them in place
(under ``vmap`` every task would write into one unbatched tensor). Instead every meta-training
forward returns the batch statistics it normalised with; they leave the inner gradient as
auxiliary outputs and ``map_tasks`` stacked over tasks, and once the meta-gradient is computed
the learner folds their mean over tasks into the running averages, one update per step and
meta-iteration. The ``vmap`` and loop paths therefore update the buffers identically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from rlmaml.core import (
    MetaLearner,
    Params,
    StepSize,
    TaskLoss,
    adapt,
    detach_step_size,
    map_tasks,
    sgd_step,
)
from rlmaml.supervised.models import PerStepBatchNorm2d, Statistics

# One forward pass's batch statistics, {module name: (mean, unbiased variance)}.
LayerStatistics = Mapping[str, Statistics]


def has_per_step_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` has per-step BatchNorm layers (and so needs a :class:`PerStepLearner`)."""
    return any(isinstance(module, PerStepBatchNorm2d) for module in model.modules())


class PerStepLearner(MetaLearner):
    """A :class:`~rlmaml.core.MetaLearner` for networks with per-step BatchNorm.

    Meta-training (:meth:`meta_backward`) normalises with batch statistics and updates each
    step's running averages; evaluation (:meth:`adapt`, :meth:`adaptation_curve`) normalises
    with the running statistics, steps beyond ``inner_steps`` reusing those of the last step.
    All four algorithms work as in the base class.

    Args:
        model: a network with :class:`~rlmaml.supervised.models.PerStepBatchNorm2d` layers of
            ``inner_steps + 1`` steps, whose forward takes the keywords ``step``,
            ``running_stats`` and ``return_stats`` (as ``ConvNet`` does).
        task_loss: ``task_loss(params, data, **forward)`` passing ``forward`` to the model and
            returning ``(loss, statistics)`` when the model returns them (as
            :func:`~rlmaml.supervised.problems.criterion_loss` does).
        The other arguments are those of :class:`~rlmaml.core.MetaLearner`.

    Raises:
        ValueError: if the model has no per-step BatchNorm layer or one whose number of steps
            is not ``inner_steps + 1``.
    """

    def __init__(self, model: nn.Module, task_loss: TaskLoss, **options: Any) -> None:
        super().__init__(model, task_loss, **options)
        self.norms = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, PerStepBatchNorm2d)
        }
        if not self.norms:
            raise ValueError("the model has no per-step BatchNorm layer")
        steps = self.inner_steps + 1
        wrong = {name: m.steps for name, m in self.norms.items() if m.steps != steps}
        if wrong:
            raise ValueError(
                f"per-step BatchNorm layers need inner_steps + 1 = {steps} steps, got {wrong}"
            )

    # -- meta-training -------------------------------------------------------------------
    def meta_backward(self, support: Any, query: Any) -> Tensor:
        """Put the meta-gradient of one task batch into ``.grad``, update the running statistics
        and return the per-task query losses (``[tasks]``, detached).

        The running statistics are left alone when a loss, a statistic or a gradient is not
        finite: :func:`~rlmaml.runs.loop.ensure_finite` refuses such an update, and a refused
        meta-iteration must leave the whole state as it was.
        """
        vectorize = self._resolve_vectorize(support, query)
        if self.algorithm == "reptile":
            base = {name: p.detach() for name, p in self.params.items()}
            with torch.no_grad():
                losses, statistics, adapted = self._training_pass(
                    base, support, query, vectorize, first_order=True, keep_adapted=True
                )
            for name, p in self.params.items():
                p.grad = base[name] - adapted[name].mean(0)
        else:
            losses, statistics = self._training_pass(
                self.params, support, query, vectorize, first_order=self.algorithm == "fomaml"
            )
            losses.mean().backward()
        self._update_running_stats(losses, statistics)
        return losses.detach()

    def _query_losses(
        self, support: Any, query: Any, vectorize: bool, *, first_order: bool
    ) -> Tensor:
        """The per-task query losses of meta-training (the base class times this for ``auto``)."""
        losses, _ = self._training_pass(
            self.params, support, query, vectorize, first_order=first_order
        )
        return losses

    def _training_pass(
        self,
        params: Params,
        support: Any,
        query: Any,
        vectorize: bool,
        *,
        first_order: bool,
        keep_adapted: bool = False,
    ) -> tuple[Any, ...]:
        """Adapt every task with batch statistics, one inner step at a time.

        Returns ``(losses, statistics)`` and, with ``keep_adapted``, the adapted parameters:
        ``losses`` the post-adaptation query loss per task, ``statistics[k]`` the batch
        statistics of step ``k`` (support for ``k < K``, query for ``k = K``), stacked over
        tasks.
        """
        lr, steps = self.step_size(), self.inner_steps

        def one_task(task_support: Any, task_query: Any) -> tuple[Any, ...]:
            adapted, statistics = params, []
            for step in range(steps):
                grads, stats = torch.func.grad(
                    lambda p, k=step: self.task_loss(p, task_support, step=k, return_stats=True),
                    has_aux=True,
                )(adapted)
                if first_order:
                    grads = {name: g.detach() for name, g in grads.items()}
                adapted = sgd_step(adapted, grads, lr)
                statistics.append(stats)
            loss, stats = self.task_loss(adapted, task_query, step=steps, return_stats=True)
            statistics.append(stats)
            return (loss, statistics, adapted) if keep_adapted else (loss, statistics)

        return map_tasks(one_task, support, query, vectorize=vectorize, chunk_size=self.chunk_size)

    def _update_running_stats(self, losses: Tensor, statistics: list[LayerStatistics]) -> None:
        """Fold each step's batch statistics, averaged over tasks, into its running averages."""
        values = [losses.detach()] + [
            t for stats in statistics for pair in stats.values() for t in pair
        ]
        values += [p.grad for p in self.meta_parameters() if p.grad is not None]
        if not bool(torch.stack([torch.isfinite(t).all() for t in values]).all()):
            return
        for step, stats in enumerate(statistics):
            for name, (mean, variance) in stats.items():
                self.norms[name].update_running_stats(step, mean.mean(0), variance.mean(0))

    # -- evaluation ----------------------------------------------------------------------
    def adapt(self, support: Any, steps: int | None = None) -> Params:
        """Detached adapted parameters per task (stacked), adapted with running statistics."""
        base = {name: p.detach() for name, p in self.params.items()}
        lr, steps = detach_step_size(self.step_size()), self.inner_steps if steps is None else steps

        def one_task(task_support: Any) -> Params:
            current = base
            for step in range(steps):
                current = self._evaluation_step(current, task_support, step, lr)
            return current

        with torch.no_grad():
            return map_tasks(
                one_task, support, vectorize=self.vectorize is not False, chunk_size=self.chunk_size
            )

    def adaptation_curve(
        self, task_metric: TaskLoss, support: Any, query: Any, steps: int
    ) -> Tensor:
        """``task_metric`` on each task's query data after 0..``steps`` inner steps.

        The per-step counterpart of :func:`rlmaml.core.adaptation_curve`: every forward pass
        (inner steps and metric alike) normalises with the running statistics of its step, so
        no example's prediction depends on the others of its batch. ``task_metric`` takes the
        model's keyword arguments like ``task_loss`` (as
        :func:`~rlmaml.supervised.problems.accuracy_percent` does). Returns ``[tasks, steps +
        1]``, detached.
        """
        base = {name: p.detach() for name, p in self.params.items()}
        lr = detach_step_size(self.step_size())

        def one_task(task_support: Any, task_query: Any) -> Tensor:
            current = base
            values = [task_metric(current, task_query, step=0, running_stats=True)]
            for step in range(steps):
                current = self._evaluation_step(current, task_support, step, lr)
                values.append(task_metric(current, task_query, step=step + 1, running_stats=True))
            return torch.stack(values)

        with torch.no_grad():
            return map_tasks(
                one_task,
                support,
                query,
                vectorize=self.vectorize is not False,
                chunk_size=self.chunk_size,
            )

    def _evaluation_step(self, params: Params, support: Any, step: int, lr: StepSize) -> Params:
        """Inner step ``step`` of evaluation: one gradient step, running statistics, detached."""
        adapted = adapt(
            params,
            lambda p: self.task_loss(p, support, step=step, running_stats=True),
            steps=1,
            lr=lr,
        )
        return {name: t.detach() for name, t in adapted.items()}
