"""A supervised meta-learning problem: a model, its task loss and metric, and task sources.

:func:`build_problem` assembles the paper's sinusoid and Omniglot problems from a config. A user
bringing their own data set builds a :class:`Problem` directly (for images, an
:class:`~rlmaml.supervised.episodes.EpisodeSampler` over a ``[classes, examples, H, W]`` array).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rlmaml.core import Params, TaskLoss
from rlmaml.supervised.config import SupervisedConfig
from rlmaml.supervised.episodes import EpisodeSampler
from rlmaml.supervised.models import ConvNet, SinusoidMLP
from rlmaml.supervised.omniglot import load_omniglot, paper_split
from rlmaml.supervised.sinusoid import SinusoidTasks
from rlmaml.supervised.tasks import TaskBatch

TaskSource = Callable[[int, np.random.Generator], TaskBatch]

# The paper's numbers (REFERENCE.md section 4), drawn beside a run's adaptation curve:
# {label: (inner steps, values)}.
PAPER_RESULTS: dict[str, dict[str, tuple[list[int], list[float]]]] = {
    "sinusoid": {"MAML paper, K=5": ([1, 5, 10], [0.67, 0.38, 0.35])},
    "omniglot-5w1s": {"MAML paper": ([3], [98.7])},
    "omniglot-5w5s": {"MAML paper": ([3], [99.9])},
    "omniglot-20w1s": {"MAML paper": ([5], [95.8])},
    "omniglot-20w5s": {"MAML paper": ([5], [98.9])},
}


@dataclass
class Problem:
    """Everything the meta-learner needs to know about one supervised task family.

    Attributes:
        name: a short identifier (``sinusoid``, ``omniglot-5w1s``).
        model: the network whose parameters are meta-learned.
        task_loss: ``task_loss(params, (x, y)) -> scalar`` for one task. For a network with
            per-step BatchNorm it must also pass keyword arguments to the model, as
            :func:`criterion_loss` does (and ``task_metric`` likewise).
        task_metric: the reported metric for one task (MSE, or accuracy in percent).
        metric: the metric's name.
        higher_is_better: whether a larger metric is better (accuracy) or worse (a loss).
        train_tasks: ``train_tasks(n, rng)`` draws meta-training tasks.
        test_tasks: ``test_tasks(n, rng)`` draws held-out tasks (unseen functions or classes).
        reference: published numbers to draw beside the run's adaptation curve.
    """

    name: str
    model: nn.Module
    task_loss: TaskLoss
    task_metric: TaskLoss
    metric: str
    higher_is_better: bool
    train_tasks: TaskSource
    test_tasks: TaskSource
    reference: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)


def criterion_loss(model: nn.Module, criterion: Callable[[Tensor, Tensor], Tensor]) -> TaskLoss:
    """``criterion(model(x), y)`` on one task's ``(x, y)``, e.g. ``F.mse_loss`` or
    ``F.cross_entropy``.

    Keyword arguments of the loss go to the model's forward pass, which is how per-step
    BatchNorm learns the inner step (``loss(params, data, step=k)``). When they make the model
    return ``(output, statistics)`` (``return_stats=True``), the loss returns
    ``(loss, statistics)``.
    """

    def loss(params: Params, data: tuple[Tensor, Tensor], **forward: Any) -> Any:
        x, y = data
        output = _forward(model, params, x, forward)
        if isinstance(output, tuple):
            scores, statistics = output
            return criterion(scores, y), statistics
        return criterion(output, y)

    return loss


def accuracy_percent(model: nn.Module) -> TaskLoss:
    """Percentage of one task's ``(x, labels)`` that ``model`` classifies correctly; keyword
    arguments go to the model's forward pass, as for :func:`criterion_loss`."""

    def metric(params: Params, data: tuple[Tensor, Tensor], **forward: Any) -> Tensor:
        x, y = data
        return (_forward(model, params, x, forward).argmax(-1) == y).float().mean() * 100.0

    return metric


def _forward(model: nn.Module, params: Params, x: Tensor, options: dict[str, Any]) -> Any:
    """``model(x, **options)`` with ``params`` in place of the model's own parameters."""
    return torch.func.functional_call(model, params, (x,), options, strict=False)


def build_problem(config: SupervisedConfig) -> Problem:
    """The problem named by ``config.setting``, with the model initialised from torch's RNG."""
    if config.setting == "sinusoid":
        return _sinusoid(config)
    return _omniglot(config)


def _sinusoid(config: SupervisedConfig) -> Problem:
    settings, family = config.sinusoid, SinusoidTasks()
    model = SinusoidMLP()
    loss = criterion_loss(model, F.mse_loss)
    return Problem(
        name="sinusoid",
        model=model,
        task_loss=loss,
        task_metric=loss,
        metric="mse",
        higher_is_better=False,
        train_tasks=lambda n, rng: family.sample(n, settings.k_support, settings.k_query, rng),
        test_tasks=lambda n, rng: family.sample(n, settings.k_support, settings.eval_k_query, rng),
        reference=PAPER_RESULTS["sinusoid"],
    )


def _omniglot(config: SupervisedConfig) -> Problem:
    settings = config.omniglot
    data = load_omniglot(Path(settings.root), cache_dir=settings.cache_dir)
    train_images, test_images = paper_split(
        data, n_train=settings.train_classes, seed=settings.split_seed
    )
    return image_problem(config, train_images, test_images)


def image_problem(
    config: SupervisedConfig, train_images: np.ndarray, test_images: np.ndarray
) -> Problem:
    """N-way K-shot classification with the paper's conv net on any class-indexed images.

    Args:
        config: the run config; its ``omniglot`` section gives ways, shots, rotation and the
            network, ``meta.inner_steps`` the per-step BatchNorm depth.
        train_images, test_images: ``[classes, examples, H, W]`` arrays of disjoint classes,
            for meta-training and held-out tasks.
    """
    settings = config.omniglot
    samplers = [
        EpisodeSampler(images, settings.ways, settings.shots, settings.query_shots, settings.rotate)
        for images in (train_images, test_images)
    ]
    model = ConvNet(
        settings.ways,
        filters=settings.filters,
        batch_norm=settings.batch_norm,
        inner_steps=config.meta.inner_steps,
        momentum=settings.batch_norm_momentum,
    )
    name = f"omniglot-{settings.ways}w{settings.shots}s"
    return Problem(
        name=name,
        model=model,
        task_loss=criterion_loss(model, F.cross_entropy),
        task_metric=accuracy_percent(model),
        metric="accuracy",
        higher_is_better=True,
        train_tasks=samplers[0].sample,
        test_tasks=samplers[1].sample,
        reference=PAPER_RESULTS.get(name, {}),
    )
