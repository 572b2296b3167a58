"""Sinusoid regression tasks, the toy few-shot regression benchmark of Finn et al. (2017).

Each task is a sine wave ``y = A sin(x - phase)`` with its own amplitude and phase; a learner
sees a few ``(x, y)`` points (the support set) and must predict the whole curve (the query set).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from rlmaml.supervised.tasks import TaskBatch


class SinusoidParams(NamedTuple):
    """The parameters of a batch of sinusoid tasks, kept so the true curves can be plotted.

    Attributes:
        amplitude: Amplitude of each task, shape ``[T]``.
        phase: Phase of each task, shape ``[T]``.
    """

    amplitude: np.ndarray
    phase: np.ndarray

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        """Evaluates each task's true function.

        Args:
            x: Inputs of shape ``[K]`` (shared by all tasks) or ``[T, K]`` (one row per task).

        Returns:
            ``A sin(x - phase)`` of shape ``[T, K]``.
        """
        return self.amplitude[:, None] * np.sin(x - self.phase[:, None])


class SinusoidTasks:
    """The distribution of sinusoid regression tasks.

    Defaults are the ranges of the MAML paper: amplitude in [0.1, 5.0], phase in [0, pi] and
    inputs in [-5, 5], all drawn uniformly.

    Args:
        amplitude_range: ``(low, high)`` of the uniform amplitude distribution.
        phase_range: ``(low, high)`` of the uniform phase distribution.
        x_range: ``(low, high)`` of the uniform input distribution.

    Raises:
        ValueError: If a range has ``low > high``.
    """

    def __init__(
        self,
        *,
        amplitude_range: tuple[float, float] = (0.1, 5.0),
        phase_range: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        for name, (low, high) in (
            ("amplitude_range", amplitude_range),
            ("phase_range", phase_range),
            ("x_range", x_range),
        ):
            if low > high:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(low, high)}")
        self.amplitude_range = amplitude_range
        self.phase_range = phase_range
        self.x_range = x_range

    def sample_params(self, n_tasks: int, rng: np.random.Generator) -> SinusoidParams:
        """Draws the amplitude and phase of ``n_tasks`` tasks.

        Args:
            n_tasks: Number of tasks.
            rng: Source of randomness.

        Returns:
            The task parameters, each of shape ``[n_tasks]``.

        Raises:
            ValueError: If ``n_tasks < 1``.
        """
        if n_tasks < 1:
            raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
        amplitude = rng.uniform(*self.amplitude_range, size=n_tasks)
        phase = rng.uniform(*self.phase_range, size=n_tasks)
        return SinusoidParams(amplitude, phase)

    def sample_points(
        self, params: SinusoidParams, k_support: int, k_query: int, rng: np.random.Generator
    ) -> TaskBatch:
        """Draws support and query points for given tasks.

        Separate from :meth:`sample_params` so evaluation can fix a task and redraw points.

        Args:
            params: The tasks, e.g. from :meth:`sample_params`.
            k_support: Points per task in the support set.
            k_query: Points per task in the query set.
            rng: Source of randomness.

        Returns:
            A batch whose tensors are float32 of shape ``[T, K, 1]``.

        Raises:
            ValueError: If ``k_support`` or ``k_query`` is below 1.
        """
        if k_support < 1 or k_query < 1:
            raise ValueError(f"k_support and k_query must be >= 1, got {k_support}, {k_query}")
        n_tasks = len(params.amplitude)
        x = rng.uniform(*self.x_range, size=(n_tasks, k_support + k_query))
        y = params.evaluate(x)
        return TaskBatch(
            support_x=_column(x[:, :k_support]),
            support_y=_column(y[:, :k_support]),
            query_x=_column(x[:, k_support:]),
            query_y=_column(y[:, k_support:]),
        )

    def sample(
        self, n_tasks: int, k_support: int, k_query: int, rng: np.random.Generator
    ) -> TaskBatch:
        """Draws a batch of new tasks with their support and query points.

        Args:
            n_tasks: Number of tasks.
            k_support: Points per task in the support set.
            k_query: Points per task in the query set.
            rng: Source of randomness; the same generator state gives the same batch.

        Returns:
            A batch whose tensors are float32 of shape ``[T, K, 1]``.

        Raises:
            ValueError: If a count is below 1.
        """
        return self.sample_points(self.sample_params(n_tasks, rng), k_support, k_query, rng)


def _column(values: np.ndarray) -> torch.Tensor:
    """Converts ``[T, K]`` values into a contiguous float32 tensor ``[T, K, 1]``."""
    return torch.tensor(values[..., None], dtype=torch.float32)
