"""The fast path of the Omniglot conv net against a plain PyTorch reference, in float64.

rlmaml's ``ConvNet`` normalises with :class:`~rlmaml.supervised.models.BatchStatNorm2d`
(statistics written for a cheap double backward) and the benchmark runs it under ``vmap`` in
chunks of tasks. Here the losses and second-order meta-gradients of every path (``vmap``
whole, ``vmap`` in chunks, loop) must equal those of the same network built from
``nn.Conv2d`` and ``nn.BatchNorm2d`` (the fused kernel) with the same state dict. The benchmark's
peers (``higher``, ``torchopt``) must compute the same meta-gradient as rlmaml too.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rlmaml.bench import supervised as bench
from rlmaml.core import MetaLearner
from rlmaml.supervised.models import BatchStatNorm2d, ConvNet, batch_moments
from rlmaml.supervised.problems import criterion_loss
from rlmaml.supervised.tasks import TaskBatch

pytestmark = pytest.mark.usefixtures("float64", "one_thread")

WAYS = 3


def tasks(n_tasks: int = 4, per_task: int = 3, size: int = 14, seed: int = 0) -> TaskBatch:
    """Random image tasks, ``[tasks, per_task, 1, size, size]``; 14 -> 7 -> 4 -> 2 -> 1 covers
    even and odd feature maps."""
    generator = torch.Generator().manual_seed(seed)

    def images() -> torch.Tensor:
        return torch.randn(n_tasks, per_task, 1, size, size, generator=generator)

    labels = torch.arange(per_task).remainder(WAYS).repeat(n_tasks, 1)
    return TaskBatch(images(), labels, images(), labels.clone())


def network(batch_norm: str) -> ConvNet:
    """A tiny ``ConvNet`` with BatchNorm scales and shifts away from their ones and zeros."""
    torch.manual_seed(0)
    model = ConvNet(WAYS, filters=4, batch_norm=batch_norm)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BatchStatNorm2d):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) - 0.5)
    return model


def plain_reference(model: ConvNet) -> nn.Module:
    """The same network from stock modules: every ``BatchStatNorm2d`` becomes
    ``nn.BatchNorm2d(track_running_stats=False)`` with the same scale and shift."""
    reference = copy.deepcopy(model)
    for index, module in enumerate(reference.features):
        if isinstance(module, BatchStatNorm2d):
            channels = module.weight.shape[0]
            stock = nn.BatchNorm2d(channels, eps=module.eps, track_running_stats=False)
            stock.load_state_dict(module.state_dict())
            reference.features[index] = stock
    return reference


def meta_gradient(
    model: nn.Module, batch: TaskBatch, vectorize: bool, chunk_size: int | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Post-adaptation query losses and second-order meta-gradients (2 inner steps)."""
    learner = MetaLearner(
        model,
        criterion_loss(model, F.cross_entropy),
        inner_steps=2,
        inner_lr=0.3,
        vectorize=vectorize,
        chunk_size=chunk_size,
    )
    losses = learner.meta_backward(
        (batch.support_x, batch.support_y), (batch.query_x, batch.query_y)
    )
    return losses, {name: p.grad for name, p in model.named_parameters()}


def test_reference_has_the_same_state_dict_and_stock_modules() -> None:
    model = network("transductive")
    reference = plain_reference(model)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0)
    assert all(type(m) is nn.Conv2d for m in model.modules() if isinstance(m, nn.Conv2d))
    assert any(isinstance(m, nn.BatchNorm2d) for m in reference.modules())


def test_batch_moments_are_mean_centred_input_and_biased_variance() -> None:
    x = torch.randn(5, 3, 6, 7) * 2 + 1
    mean, centred, variance = batch_moments(x)
    reference_variance, reference_mean = torch.var_mean(
        x, dim=(0, 2, 3), correction=0, keepdim=True
    )
    torch.testing.assert_close(mean, reference_mean)
    torch.testing.assert_close(centred, x - reference_mean)
    torch.testing.assert_close(variance, reference_variance)


@pytest.mark.parametrize("batch_norm", ["transductive", "none"])
@pytest.mark.parametrize(
    ("vectorize", "chunk_size"),
    [(True, None), (True, 3), (False, None)],
    ids=["vmap", "chunks", "loop"],
)
def test_losses_and_meta_gradients_equal_the_plain_reference(
    batch_norm: str, vectorize: bool, chunk_size: int | None
) -> None:
    batch = tasks()
    model = network(batch_norm)
    reference = plain_reference(model)
    expected_losses, expected = meta_gradient(reference, batch, vectorize=False, chunk_size=None)
    losses, grads = meta_gradient(model, batch, vectorize, chunk_size)
    torch.testing.assert_close(losses, expected_losses)
    assert grads.keys() == expected.keys()
    for name in grads:
        # The conv biases before a batch-statistics norm have a zero meta-gradient (the norm
        # cancels them), so they are compared on the scale of the other gradients.
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-9, atol=1e-12)
    assert any(g.abs().max() > 1e-3 for g in grads.values())


def test_benchmark_peers_compute_rlmamls_meta_gradient() -> None:
    """The peers run the same stock-``nn.Conv2d`` network on the same data: after one timed
    meta-iteration of each implementation, every parameter holds the same meta-gradient."""
    pytest.importorskip("higher")
    pytest.importorskip("torchopt")
    case = bench.Case(
        "tiny", lambda: network("transductive"), F.cross_entropy, tasks(), 1, 0.3, chunk_size=3
    )
    initial = case.make_model()
    steps = {
        "rlmaml_vmap": lambda m: bench.rlmaml_step(case, m, vectorize=True),
        "rlmaml_loop": lambda m: bench.rlmaml_step(case, m, vectorize=False),
        "higher": lambda m: bench.higher_step(case, m),
        "torchopt": lambda m: bench.torchopt_step(case, m),
    }
    grads = {}
    for name, make in steps.items():
        model = copy.deepcopy(initial)
        make(model)()
        grads[name] = {n: p.grad for n, p in model.named_parameters()}
    for name in steps:
        for parameter, grad in grads[name].items():
            torch.testing.assert_close(
                grad, grads["rlmaml_loop"][parameter], rtol=1e-9, atol=1e-12, msg=name
            )
