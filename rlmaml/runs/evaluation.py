"""The result of an adaptation evaluation, shared by every setting: a metric after 0..N inner
steps on held-out tasks, with its mean and 95% confidence interval over tasks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class AdaptationResult:
    """A metric after 0..N inner steps on held-out tasks: mean and 95% confidence interval."""

    metric: str
    steps: list[int]
    mean: list[float]
    ci95: list[float]
    n_tasks: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "steps": self.steps,
            "mean": self.mean,
            "ci95": self.ci95,
            "n_tasks": self.n_tasks,
        }


def summarise(metric: str, per_task: Tensor) -> AdaptationResult:
    """Mean and normal-approximation 95% CI over tasks of a ``[tasks, steps + 1]`` tensor."""
    n = per_task.shape[0]
    std = per_task.std(0, unbiased=True) if n > 1 else torch.zeros(per_task.shape[1])
    return AdaptationResult(
        metric=metric,
        steps=list(range(per_task.shape[1])),
        mean=per_task.mean(0).tolist(),
        ci95=(1.96 * std / math.sqrt(n)).tolist(),
        n_tasks=n,
    )
