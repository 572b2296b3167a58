"""The result of an adaptation evaluation, shared by every setting: a metric after 0..N inner
steps on held-out tasks, with its mean and 95% confidence interval over tasks, and the paired
change from 0 steps with its own interval.

The change is computed task by task (after ``k`` steps minus before adapting, on the same
task) before averaging. Held-out tasks differ a lot in how hard they are (a far goal, a fast
target velocity), and that spread widens the intervals of the means at every step alike; the
paired change removes it, so it tells whether the adaptation steps help at all far more
sharply than two overlapping intervals of the means can.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class AdaptationResult:
    """A metric after 0..N inner steps on held-out tasks: mean and 95% confidence interval
    over tasks, the paired change from 0 steps (``change``, ``change_ci95``; 0 at step 0),
    each task's values (``per_task[i][k]``: task ``i`` after ``k`` steps) and, where a task is
    a small record (an RL task such as ``{"direction": -1.0}``), the tasks themselves
    (``tasks[i]``, else None), so that the hard ones can be told apart."""

    metric: str
    steps: list[int]
    mean: list[float]
    ci95: list[float]
    n_tasks: int
    change: list[float]
    change_ci95: list[float]
    per_task: list[list[float]]
    tasks: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "steps": self.steps,
            "mean": self.mean,
            "ci95": self.ci95,
            "n_tasks": self.n_tasks,
            "change": self.change,
            "change_ci95": self.change_ci95,
            "per_task": self.per_task,
            **({} if self.tasks is None else {"tasks": self.tasks}),
        }


def _mean_and_ci95(values: Tensor) -> tuple[list[float], list[float]]:
    """Mean over the first axis and its normal-approximation 95% interval (0 for one row)."""
    n = values.shape[0]
    std = values.std(0, unbiased=True) if n > 1 else torch.zeros(values.shape[1:])
    return values.mean(0).tolist(), (1.96 * std / math.sqrt(n)).tolist()


def summarise(
    metric: str, per_task: Tensor, tasks: list[dict[str, Any]] | None = None
) -> AdaptationResult:
    """Means, paired changes from step 0 and their 95% intervals over the tasks of a
    ``[tasks, steps + 1]`` tensor; ``tasks``, if given, names each row's task."""
    if tasks is not None and len(tasks) != per_task.shape[0]:
        raise ValueError(f"{len(tasks)} tasks for {per_task.shape[0]} rows of values")
    per_task = per_task.double()
    mean, ci95 = _mean_and_ci95(per_task)
    change, change_ci95 = _mean_and_ci95(per_task - per_task[:, :1])
    return AdaptationResult(
        metric=metric,
        steps=list(range(per_task.shape[1])),
        mean=mean,
        ci95=ci95,
        n_tasks=per_task.shape[0],
        change=change,
        change_ci95=change_ci95,
        per_task=per_task.tolist(),
        tasks=tasks,
    )
