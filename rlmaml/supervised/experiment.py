"""Meta-training and evaluation of a supervised problem: the :class:`Trainable` of the loop."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rlmaml.core import MetaLearner, adaptation_curve, detach_step_size, module_buffers
from rlmaml.runs.evaluation import AdaptationResult, summarise
from rlmaml.runs.loop import Selection, ensure_finite
from rlmaml.runs.state import capture_state, restore_state
from rlmaml.supervised.config import SupervisedConfig
from rlmaml.supervised.per_step import PerStepLearner, has_per_step_batch_norm
from rlmaml.supervised.problems import Problem, build_problem
from rlmaml.supervised.tasks import TaskBatch

# Held-out tasks come from their own random streams, fixed per run seed and never the
# training stream, so every evaluation of a run sees the same tasks.
_TEST_STREAM, _VALIDATION_STREAM = 1, 2


class SupervisedExperiment:
    """One supervised meta-learning run: problem, learner, outer optimiser and RNG streams."""

    def __init__(self, config: SupervisedConfig, problem: Problem | None = None) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        if config.run.threads is not None:
            torch.set_num_threads(config.run.threads)
        self.device = torch.device(config.run.device)
        self.problem = problem if problem is not None else build_problem(config)
        self.problem.model.to(self.device)
        meta = config.meta
        learner_class = (
            PerStepLearner if has_per_step_batch_norm(self.problem.model) else MetaLearner
        )
        self.learner = learner_class(
            self.problem.model,
            self.problem.task_loss,
            algorithm=meta.algorithm,
            inner_steps=meta.inner_steps,
            inner_lr=meta.inner_lr,
            vectorize=meta.vectorize,
            chunk_size=meta.chunk_size,
        )
        optimizer_class = torch.optim.Adam if meta.optimizer == "adam" else torch.optim.SGD
        self.optimizer = optimizer_class(self.learner.meta_parameters(), lr=meta.meta_lr)
        self.rng = np.random.default_rng(config.seed)

    @property
    def name(self) -> str:
        return self.problem.name

    @property
    def reference(self) -> dict[str, tuple[list[int], list[float]]]:
        """Published numbers to draw beside the adaptation curve."""
        return self.problem.reference

    @property
    def progress_keys(self) -> tuple[str, ...]:
        """Metrics shown on the progress bar."""
        return ("query_loss", f"val_{self.problem.metric}_post")

    @property
    def selection(self) -> Selection | None:
        """The best iteration is the one with the best validation metric after adaptation."""
        if not self.config.eval.val_every:
            return None
        return Selection(f"val_{self.problem.metric}_post", self.problem.higher_is_better)

    def close(self) -> None:
        """Nothing to release (RL experiments close their samplers)."""

    # -- Trainable -----------------------------------------------------------------------
    def train_iteration(self, iteration: int) -> dict[str, float]:
        """One meta-update on a fresh batch of training tasks."""
        batch = self.problem.train_tasks(self.config.meta.meta_batch, self.rng).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.learner.meta_backward(*_support_query(batch))
        ensure_finite(losses, self.learner.meta_parameters())
        self.optimizer.step()
        values = {"query_loss": losses.mean().item()}
        every = self.config.eval.val_every
        if every and (iteration + 1) % every == 0:
            values.update(self.validate())
        return values

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors, metadata = capture_state(self._tensors(), self.optimizer, {"tasks": self.rng})
        return tensors, {**metadata, "vectorize": self.learner.vectorize}

    def load_state(self, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> None:
        restore_state(
            tensors,
            metadata,
            self._tensors(),
            self.optimizer,
            {"tasks": self.rng},
            learning_rate=self.config.meta.meta_lr,
        )
        self.learner.vectorize = metadata["vectorize"]

    def _tensors(self) -> dict[str, Tensor]:
        """The meta-parameters and the model's buffers (per-step BatchNorm's running
        statistics, under ``buffers/``): what a checkpoint must hold to continue the run."""
        buffers = module_buffers(self.problem.model)
        return {**self.learner.state_tensors(), **{f"buffers/{n}": b for n, b in buffers.items()}}

    # -- evaluation ----------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """The metric on a fixed set of held-out tasks before and after training's inner steps."""
        steps = self.config.meta.inner_steps
        result = self.evaluate(steps, self.config.eval.val_tasks, stream=_VALIDATION_STREAM)
        name = self.problem.metric
        return {f"val_{name}_pre": result.mean[0], f"val_{name}_post": result.mean[steps]}

    def evaluate(self, steps: int, n_tasks: int, stream: int = _TEST_STREAM) -> AdaptationResult:
        """The metric on ``n_tasks`` held-out tasks after 0..``steps`` inner steps."""
        rng = np.random.default_rng([self.config.seed, stream])
        per_task = []
        for start in range(0, n_tasks, self.config.eval.batch):
            count = min(self.config.eval.batch, n_tasks - start)
            batch = self.problem.test_tasks(count, rng).to(self.device)
            per_task.append(self._adaptation_curve(batch, steps).cpu())
        return summarise(self.problem.metric, torch.cat(per_task))

    def _adaptation_curve(self, batch: TaskBatch, steps: int) -> Tensor:
        """The metric on each task's query set after 0..``steps`` inner steps, ``[tasks, steps
        + 1]``; per-step BatchNorm evaluates with its running statistics."""
        if isinstance(self.learner, PerStepLearner):
            return self.learner.adaptation_curve(
                self.problem.task_metric, *_support_query(batch), steps=steps
            )
        return adaptation_curve(
            self.learner.params,
            self.problem.task_loss,
            self.problem.task_metric,
            *_support_query(batch),
            steps=steps,
            lr=detach_step_size(self.learner.step_size()),
            vectorize=self.learner.vectorize is not False,
            chunk_size=self.config.meta.chunk_size,
        )


def _support_query(batch: TaskBatch) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    return (batch.support_x, batch.support_y), (batch.query_x, batch.query_y)
