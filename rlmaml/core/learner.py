"""``MetaLearner``: a model's meta-parameters plus one meta-learning algorithm.

It turns a batch of tasks into meta-gradients on the meta-parameters, whatever the algorithm:

=========  ==============================================================================
maml       second-order MAML: differentiate the query loss through the inner steps
fomaml     first-order MAML: inner gradients treated as constants
metasgd    second-order MAML with a learned step size per parameter entry (Li et al. 2017)
reptile    the mean displacement of the adapted parameters is used as the gradient
=========  ==============================================================================

Any ``torch.optim`` optimiser then applies them, so the outer loop is ordinary PyTorch.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from rlmaml.core.inner import StepSize, detach_step_size
from rlmaml.core.objectives import TaskLoss, adapt_tasks, maml_losses, reptile_direction
from rlmaml.core.params import Params, module_params

Algorithm = Literal["maml", "fomaml", "metasgd", "reptile"]
ALGORITHMS: tuple[str, ...] = ("maml", "fomaml", "metasgd", "reptile")
Vectorize = bool | Literal["auto"]


class MetaLearner:
    """Meta-parameters of ``model`` and the rule that turns task batches into meta-gradients.

    Args:
        model: any ``nn.Module``; it is evaluated functionally, never modified in place except
            by the outer optimiser stepping its parameters.
        task_loss: ``task_loss(params, data) -> scalar`` for one task's data (no task axis).
        algorithm: one of ``maml``, ``fomaml``, ``metasgd``, ``reptile``.
        inner_steps: inner gradient steps during meta-training.
        inner_lr: inner step size (Meta-SGD: the initial value of every learned step size).
        vectorize: adapt tasks with ``vmap`` (True), a loop (False), or ``"auto"``: time both
            on the first batch and keep the faster (vmap is skipped if the model cannot use it).
        chunk_size: with vmap, adapt at most this many tasks at once (bounds memory).
    """

    def __init__(
        self,
        model: nn.Module,
        task_loss: TaskLoss,
        *,
        algorithm: Algorithm = "maml",
        inner_steps: int = 1,
        inner_lr: float = 0.01,
        vectorize: Vectorize = "auto",
        chunk_size: int | None = None,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
        if inner_lr <= 0:
            raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
        self.model = model
        self.task_loss = task_loss
        self.algorithm = algorithm
        self.inner_steps = inner_steps
        self.params: Params = module_params(model)
        self.inner_lrs: dict[str, nn.Parameter] | None = None
        self._inner_lr = inner_lr
        if algorithm == "metasgd":
            self.inner_lrs = {
                name: nn.Parameter(torch.full_like(p.detach(), inner_lr))
                for name, p in self.params.items()
            }
        self.vectorize = vectorize
        self.chunk_size = chunk_size

    # -- state ---------------------------------------------------------------------------
    def meta_parameters(self) -> list[Tensor]:
        """Everything the outer optimiser updates (model parameters, learned step sizes)."""
        lrs = list(self.inner_lrs.values()) if self.inner_lrs is not None else []
        return list(self.params.values()) + lrs

    def state_tensors(self) -> dict[str, Tensor]:
        """Meta-parameters by name, for checkpoints (``params/...`` and ``inner_lr/...``)."""
        state = {f"params/{n}": p for n, p in self.params.items()}
        if self.inner_lrs is not None:
            state.update({f"inner_lr/{n}": p for n, p in self.inner_lrs.items()})
        return state

    def step_size(self) -> StepSize:
        """The inner step size: a float, or Meta-SGD's per-parameter tensors."""
        return self._inner_lr if self.inner_lrs is None else self.inner_lrs

    # -- meta-training -------------------------------------------------------------------
    def meta_backward(self, support: Any, query: Any) -> Tensor:
        """Put the meta-gradient of one task batch into ``.grad``; return per-task query losses.

        The losses (``[tasks]``, detached) are measured after adaptation. For Reptile, whose
        update does not use a query loss, they come from a separate no-grad evaluation.
        """
        vectorize = self._resolve_vectorize(support, query)
        if self.algorithm == "reptile":
            direction = reptile_direction(
                self.params,
                self.task_loss,
                support,
                steps=self.inner_steps,
                lr=self._inner_lr,
                vectorize=vectorize,
                chunk_size=self.chunk_size,
            )
            for name, p in self.params.items():
                p.grad = direction[name].clone()
            with torch.no_grad():
                return self._query_losses(support, query, vectorize, first_order=True)
        losses = self._query_losses(
            support, query, vectorize, first_order=self.algorithm == "fomaml"
        )
        losses.mean().backward()
        return losses.detach()

    def _query_losses(
        self, support: Any, query: Any, vectorize: bool, *, first_order: bool
    ) -> Tensor:
        return maml_losses(
            self.params,
            self.task_loss,
            support,
            query,
            steps=self.inner_steps,
            lr=self.step_size(),
            first_order=first_order,
            vectorize=vectorize,
            chunk_size=self.chunk_size,
        )

    # -- evaluation ----------------------------------------------------------------------
    def adapt(self, support: Any, steps: int | None = None) -> Params:
        """Detached adapted parameters per task (stacked), for evaluation."""
        adapted = adapt_tasks(
            {n: p.detach() for n, p in self.params.items()},
            self.task_loss,
            support,
            steps=self.inner_steps if steps is None else steps,
            lr=detach_step_size(self.step_size()),
            first_order=True,
            vectorize=self._resolve_vectorize(support, support),
            chunk_size=self.chunk_size,
        )
        return {n: t.detach() for n, t in adapted.items()}

    # -- strategy ------------------------------------------------------------------------
    def _resolve_vectorize(self, support: Any, query: Any) -> bool:
        """Decide vmap vs loop once, by timing both on a real batch when ``vectorize='auto'``."""
        if self.vectorize != "auto":
            return bool(self.vectorize)

        def run(vectorize: bool) -> None:
            losses = self._query_losses(
                support, query, vectorize, first_order=self.algorithm in ("fomaml", "reptile")
            )
            torch.autograd.grad(losses.sum(), self.meta_parameters(), allow_unused=True)

        seconds = {v: _seconds_per_call(run, v) for v in (True, False)}
        self.vectorize = seconds[True] <= seconds[False]
        return self.vectorize


def _seconds_per_call(run: Callable[[bool], None], vectorize: bool, repeats: int = 2) -> float:
    """Seconds per ``run(vectorize)`` after a warm-up; inf when vmap cannot trace the model."""
    try:
        run(vectorize)
    except (RuntimeError, NotImplementedError) as error:
        if not vectorize:
            raise
        warnings.warn(
            f"vmap cannot batch this model, adapting tasks in a loop: {error}", stacklevel=3
        )
        return float("inf")
    start = time.perf_counter()
    for _ in range(repeats):
        run(vectorize)
    return (time.perf_counter() - start) / repeats
