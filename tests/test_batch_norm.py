"""Tests of the BatchNorm modes of the conv net, above all MAML++'s per-step BatchNorm.

Exact comparisons run in float64 on tiny networks (a few filters, 12x12 images); the training
runs use synthetic Omniglot-like images (one random stroke pattern per class plus noise), so
nothing here needs the real data set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from rlmaml.core import Params, adaptation_curve
from rlmaml.runs import ConfigError, RunDir, latest_checkpoint, load_config, read_metrics
from rlmaml.runs.loop import LoopSettings, run_training
from rlmaml.supervised import problems as problems_module
from rlmaml.supervised.config import SupervisedConfig
from rlmaml.supervised.experiment import SupervisedExperiment
from rlmaml.supervised.models import BatchStatNorm2d, ConvNet, PerStepBatchNorm2d
from rlmaml.supervised.per_step import PerStepLearner, has_per_step_batch_norm
from rlmaml.supervised.problems import (
    Problem,
    accuracy_percent,
    build_problem,
    criterion_loss,
    image_problem,
)

pytestmark = pytest.mark.usefixtures("one_thread")

WAYS = 3


def tiny_net(batch_norm: str = "per_step", inner_steps: int = 1, momentum: float = 0.1):
    return ConvNet(
        WAYS, filters=4, batch_norm=batch_norm, inner_steps=inner_steps, momentum=momentum
    )


def task_data(tasks: int = 3, per_task: int = 6, seed: int = 0) -> tuple[Any, Any]:
    """Random ``(support, query)`` image tasks, ``[tasks, per_task, 1, 12, 12]``."""
    generator = torch.Generator().manual_seed(seed)

    def part() -> tuple[Tensor, Tensor]:
        x = torch.randn(tasks, per_task, 1, 12, 12, generator=generator)
        return x, torch.arange(per_task).remainder(WAYS).repeat(tasks, 1)

    return part(), part()


def learner_for(model: ConvNet, inner_steps: int = 1, **kwargs: Any) -> PerStepLearner:
    kwargs = {"inner_lr": 0.1, "vectorize": False, **kwargs}
    return PerStepLearner(
        model, criterion_loss(model, F.cross_entropy), inner_steps=inner_steps, **kwargs
    )


def randomise_affine(model: ConvNet) -> None:
    """Scales and shifts away from their initial ones and zeros, different in every row."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, PerStepBatchNorm2d | BatchStatNorm2d):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) - 0.5)


def norms(model: ConvNet) -> dict[str, PerStepBatchNorm2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, PerStepBatchNorm2d)}


# ---------------------------------------------------------------------------------------
# The layer and the network


def test_per_step_parameters_and_buffers_have_one_row_per_step() -> None:
    model = ConvNet(5, filters=8, batch_norm="per_step", inner_steps=3)
    layers = norms(model)
    assert list(layers) == ["features.1", "features.4", "features.7", "features.10"]
    for name in layers:
        for suffix, value in (("weight", 1.0), ("bias", 0.0)):
            tensor = dict(model.named_parameters())[f"{name}.{suffix}"]
            assert tensor.shape == (4, 8) and torch.all(tensor == value)
        for suffix, value in (("running_mean", 0.0), ("running_var", 1.0)):
            tensor = dict(model.named_buffers())[f"{name}.{suffix}"]
            assert tensor.shape == (4, 8) and torch.all(tensor == value)
    assert has_per_step_batch_norm(model)
    for mode in ("transductive", "none"):
        other = ConvNet(5, filters=8, batch_norm=mode)
        assert not has_per_step_batch_norm(other) and not list(other.buffers())
    with pytest.raises(ValueError, match="batch_norm must be one of"):
        ConvNet(5, batch_norm="running")
    with pytest.raises(ValueError, match="step index"):
        model(torch.zeros(2, 1, 12, 12))


def test_training_forward_is_batch_normalisation_with_the_steps_parameters(float64) -> None:
    layer = PerStepBatchNorm2d(4, steps=3)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1.0, 1.0)
        layer.running_mean.uniform_(-1.0, 1.0)
        layer.running_var.uniform_(0.5, 2.0)
    x = torch.randn(6, 4, 5, 5) * 3 + 1
    for step in range(3):
        out, (mean, variance) = layer(x, step)
        expected = F.batch_norm(x, None, None, layer.weight[step], layer.bias[step], True)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(mean, x.mean(dim=(0, 2, 3)))
        torch.testing.assert_close(variance, x.var(dim=(0, 2, 3), unbiased=True))
        out, _ = layer(x, step, running_stats=True)
        expected = F.batch_norm(
            x,
            layer.running_mean[step],
            layer.running_var[step],
            layer.weight[step],
            layer.bias[step],
            False,
        )
        torch.testing.assert_close(out, expected)
    # A step beyond the last row (evaluation with more steps than training) uses the last row.
    torch.testing.assert_close(layer(x, 7)[0], layer(x, 2)[0])


def test_per_step_network_at_step_k_is_the_transductive_network_with_row_k(float64) -> None:
    per_step, transductive = tiny_net(inner_steps=2), tiny_net("transductive")
    randomise_affine(per_step)
    layers = norms(per_step)
    with torch.no_grad():  # the same convolutions and head
        for name, p in transductive.named_parameters():
            if name.rsplit(".", 1)[0] not in layers:
                p.copy_(per_step.get_parameter(name))
    x = torch.randn(6, 1, 12, 12)
    for step in range(3):
        with torch.no_grad():
            for name, layer in layers.items():
                reference = transductive.get_submodule(name)
                reference.weight.copy_(layer.weight[step])
                reference.bias.copy_(layer.bias[step])
        torch.testing.assert_close(per_step(x, step), transductive(x))


# ---------------------------------------------------------------------------------------
# Running statistics


def _first_conv(params: Params, x: Tensor) -> Tensor:
    return F.conv2d(x, params["features.0.weight"], params["features.0.bias"], 2, 1)


def test_running_stats_of_each_step_track_that_steps_activations(float64) -> None:
    """With the meta-parameters held fixed, the running statistics of the first BatchNorm layer
    converge to the task mean of each step's batch statistics: the support activations under
    the parameters after ``k`` inner steps for ``k < K``, the query activations for ``k = K``."""
    model = tiny_net(inner_steps=2, momentum=0.5)
    randomise_affine(model)
    learner = learner_for(model, inner_steps=2, algorithm="fomaml", inner_lr=0.3)
    support, query = task_data()
    for _ in range(40):  # no optimiser step: the meta-parameters stay where they are
        learner.meta_backward(support, query)

    loss = criterion_loss(model, F.cross_entropy)
    means, variances = [], []
    for task in range(3):
        params = {n: p.detach().requires_grad_() for n, p in learner.params.items()}
        task_support = (support[0][task], support[1][task])
        task_stats = []
        for step in range(2):
            task_stats.append(_first_conv(params, task_support[0]))
            grads = torch.autograd.grad(
                loss(params, task_support, step=step), list(params.values())
            )
            params = {n: p - 0.3 * g for (n, p), g in zip(params.items(), grads, strict=True)}
        task_stats.append(_first_conv(params, query[0][task]))
        means.append(torch.stack([a.mean(dim=(0, 2, 3)) for a in task_stats]))
        variances.append(torch.stack([a.var(dim=(0, 2, 3)) for a in task_stats]))
    layer = norms(model)["features.1"]
    torch.testing.assert_close(layer.running_mean, torch.stack(means).mean(0).detach())
    torch.testing.assert_close(layer.running_var, torch.stack(variances).mean(0).detach())
    assert not torch.allclose(layer.running_mean[0], layer.running_mean[1])


def test_non_finite_batches_leave_the_running_stats_alone() -> None:
    model = tiny_net()
    learner = learner_for(model)
    (sx, sy), query = task_data()
    sx = sx.clone()
    sx[0, 0, 0, 0, 0] = float("nan")
    before = {n: b.clone() for n, b in model.named_buffers()}
    losses = learner.meta_backward((sx, sy), query)
    assert not torch.isfinite(losses).all()
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


# ---------------------------------------------------------------------------------------
# Evaluation


class FirstExampleScores:
    """A task metric that returns the class scores of the first query example."""

    def __init__(self, model: ConvNet) -> None:
        self.model = model

    def __call__(self, params: Params, data: tuple[Tensor, Tensor], **forward: Any) -> Tensor:
        scores = torch.func.functional_call(self.model, params, (data[0],), forward, strict=False)
        return scores[0]


def test_per_step_evaluation_classifies_each_query_example_on_its_own(float64) -> None:
    support, (qx, qy) = task_data()
    other_qx = qx.clone()
    other_qx[:, 1:] = torch.randn_like(qx[:, 1:]) * 5 + 2  # every query example but the first

    model = tiny_net()
    randomise_affine(model)
    learner = learner_for(model)
    for _ in range(3):  # running statistics away from their initial values
        learner.meta_backward(support, (qx, qy))
    metric = FirstExampleScores(model)
    curves = [learner.adaptation_curve(metric, support, (x, qy), steps=3) for x in (qx, other_qx)]
    torch.testing.assert_close(curves[0], curves[1])
    alone = learner.adaptation_curve(metric, support, (qx[:, :1], qy[:, :1]), steps=3)
    torch.testing.assert_close(curves[0], alone)

    # The paper's transductive BatchNorm normalises the query set with its own statistics.
    model = tiny_net("transductive")
    curves = [
        adaptation_curve(
            dict(model.named_parameters()),
            criterion_loss(model, F.cross_entropy),
            FirstExampleScores(model),
            support,
            (x, qy),
            steps=3,
            lr=0.1,
        )
        for x in (qx, other_qx)
    ]
    assert not torch.allclose(curves[0], curves[1])


def test_adapt_reuses_the_last_step_beyond_the_trained_steps(float64) -> None:
    model = tiny_net(inner_steps=1)
    randomise_affine(model)
    learner = learner_for(model)
    support, query = task_data()
    learner.meta_backward(support, query)
    adapted = learner.adapt(support, steps=3)
    loss = criterion_loss(model, F.cross_entropy)
    expected = []
    for task in range(3):
        params = {n: p.detach() for n, p in learner.params.items()}
        data = (support[0][task], support[1][task])
        for step in (0, 1, 1):  # rows 0, 1, then row 1 again
            grads = torch.func.grad(
                lambda p, k=step, d=data: loss(p, d, step=k, running_stats=True)
            )(params)
            params = {n: p - 0.1 * grads[n] for n, p in params.items()}
        expected.append(params)
    for name, tensor in adapted.items():
        torch.testing.assert_close(tensor, torch.stack([e[name] for e in expected]))


# ---------------------------------------------------------------------------------------
# vmap and loop


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd", "reptile"])
def test_vmap_and_loop_give_the_same_update_statistics_and_curve(float64, algorithm: str) -> None:
    support, query = task_data()
    results = []
    for vectorize in (True, False):
        torch.manual_seed(0)
        model = tiny_net(inner_steps=2)
        learner = learner_for(model, inner_steps=2, algorithm=algorithm, vectorize=vectorize)
        losses = learner.meta_backward(support, query)
        grads = {
            n: p.grad.clone()
            for n, p in zip(learner.state_tensors(), learner.meta_parameters(), strict=True)
        }
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        curve = learner.adaptation_curve(accuracy_percent(model), support, query, steps=3)
        results.append((losses, grads, buffers, curve))
    (vmap, loop) = results
    for a, b in zip(vmap, loop, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(loop[2]["features.1.running_mean"], torch.zeros(3, 4))


def test_learner_checks_the_number_of_steps() -> None:
    model = tiny_net(inner_steps=2)
    with pytest.raises(ValueError, match="inner_steps \\+ 1 = 2 steps"):
        learner_for(model, inner_steps=1)
    with pytest.raises(ValueError, match="no per-step BatchNorm"):
        learner_for(tiny_net("transductive"))


# ---------------------------------------------------------------------------------------
# Configuration, training and checkpoints


def synthetic_images(classes: int, per_class: int, seed: int) -> np.ndarray:
    """Omniglot-like ``uint8`` images: a fixed random stroke pattern per class, each drawing
    with some pixels flipped."""
    rng = np.random.default_rng(seed)
    patterns = rng.random((classes, 1, 12, 12)) < 0.3
    flips = rng.random((classes, per_class, 12, 12)) < 0.05
    return ((patterns ^ flips) * 255).astype(np.uint8)


def synthetic_config(*overrides: str) -> SupervisedConfig:
    return load_config(
        SupervisedConfig,
        data={"setting": "omniglot"},
        overrides=[
            f"omniglot.ways={WAYS}",
            "omniglot.shots=1",
            "omniglot.query_shots=2",
            "omniglot.rotate=false",
            "omniglot.filters=8",
            "omniglot.batch_norm=per_step",
            "meta.meta_batch=4",
            "meta.inner_lr=0.4",
            "meta.vectorize=true",
            "eval.val_every=0",
            "eval.batch=20",
            "run.progress=false",
            *overrides,
        ],
    )


def synthetic_problem(config: SupervisedConfig) -> Problem:
    """The Omniglot problem of ``config`` on synthetic images, built like the real one."""
    torch.manual_seed(config.seed)
    return image_problem(config, *(synthetic_images(12, 4, seed) for seed in (0, 1)))


def test_config_accepts_per_step_and_names_bad_values() -> None:
    config = synthetic_config("omniglot.batch_norm_momentum=0.2")
    assert config.omniglot.batch_norm == "per_step"
    assert config.omniglot.batch_norm_momentum == 0.2
    with pytest.raises(ConfigError, match="omniglot.batch_norm"):
        synthetic_config("omniglot.batch_norm=per_task")
    with pytest.raises(ConfigError, match="omniglot.batch_norm_momentum: must be in"):
        synthetic_config("omniglot.batch_norm_momentum=0")


def test_build_problem_gives_a_per_step_network_for_the_training_steps(monkeypatch) -> None:
    images = synthetic_images(12, 4, 0)
    monkeypatch.setattr(problems_module, "load_omniglot", lambda root, cache_dir: None)
    monkeypatch.setattr(problems_module, "paper_split", lambda data, n_train, seed: (images,) * 2)
    config = synthetic_config("meta.inner_steps=3", "omniglot.batch_norm_momentum=0.3")
    model = build_problem(config).model
    layers = norms(model)
    assert len(layers) == 4
    assert all(m.steps == 4 and m.momentum == 0.3 for m in layers.values())


def test_tiny_omniglot_like_run_with_per_step_batch_norm_learns(tmp_path: Path) -> None:
    config = synthetic_config("meta.meta_lr=0.01")
    experiment = SupervisedExperiment(config, problem=synthetic_problem(config))
    assert isinstance(experiment.learner, PerStepLearner)
    before = experiment.evaluate(steps=1, n_tasks=40)
    settings = LoopSettings(iterations=100, checkpoint_every=1000, progress=False)
    assert run_training(experiment, RunDir(tmp_path), settings, resume=False) == 100
    after = experiment.evaluate(steps=1, n_tasks=40)

    losses = read_metrics(tmp_path)["query_loss"]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), losses
    # Held-out classes, evaluated with the running statistics: one inner step now helps.
    assert after.mean[1] > max(before.mean[1], after.mean[0]) + 5.0, (before, after)


def state_tensors(experiment: SupervisedExperiment) -> dict[str, Tensor]:
    tensors, _ = experiment.state()
    return {k: v.detach().clone() for k, v in tensors.items() if k != "rng/torch"}


def test_resumed_per_step_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    config = synthetic_config()
    settings = {"checkpoint_every": 2, "progress": False}

    reference = SupervisedExperiment(config, problem=synthetic_problem(config))
    run_training(reference, RunDir(tmp_path / "full"), LoopSettings(4, **settings), False)

    split = RunDir(tmp_path / "split")
    first = SupervisedExperiment(config, problem=synthetic_problem(config))
    run_training(first, split, LoopSettings(2, **settings), False)
    checkpoint = latest_checkpoint(split.checkpoints)
    assert checkpoint is not None
    saved = checkpoint.tensors["buffers/features.1.running_mean"]
    assert saved.shape == (2, 8) and not torch.equal(saved, torch.zeros(2, 8))

    resumed = SupervisedExperiment(config, problem=synthetic_problem(config))
    run_training(resumed, split, LoopSettings(4, **settings), True)
    expected, actual = state_tensors(reference), state_tensors(resumed)
    assert expected.keys() == actual.keys()
    assert [k for k in expected if not torch.equal(expected[k], actual[k])] == []
