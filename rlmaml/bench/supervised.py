"""Meta-iteration time of rlmaml against ``higher`` and ``torchopt`` on identical problems.

Every implementation meta-trains the same model (same initial weights) on the same fixed task
batch with second-order MAML and Adam, and one meta-iteration is: adapt every task, the query
loss, its meta-gradient and the Adam step. Task sampling is left out (it is common to all). The
peers are used the way their own MAML examples use them: a Python loop over tasks with
``higher.innerloop_ctx`` / ``torchopt.MetaSGD``.

rlmaml's ``vmap`` runs with the case's ``chunk_size`` (``MetaLearner(chunk_size=...)``, the
``meta.chunk_size`` setting of a run). For the conv net that is 16 tasks at a time: under
``vmap`` a convolution with per-task weights becomes one grouped convolution over the tasks of a
chunk, and on a 2-core CPU the input gradient of a grouped convolution took 3 times as long
per task with 32 groups as with 8 (oneDNN, 14x14 maps). Measured side by side, chunks of 16
tasks made a meta-iteration 20-25% faster than all 32 at once, at 1 and 2 threads (chunks of
8: as fast at 1 thread, slower at 2).

Run ``rlmaml bench supervised [--json]`` (the peers come with ``pip install -e .[bench]``).
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rlmaml.core import MetaLearner
from rlmaml.supervised.episodes import EpisodeSampler
from rlmaml.supervised.models import ConvNet, SinusoidMLP
from rlmaml.supervised.problems import criterion_loss
from rlmaml.supervised.sinusoid import SinusoidTasks
from rlmaml.supervised.tasks import TaskBatch


@dataclass(frozen=True)
class Case:
    """One benchmark setting."""

    name: str
    make_model: Callable[[], nn.Module]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batch: TaskBatch
    steps: int
    lr: float
    chunk_size: int | None = None  # rlmaml's vmap: adapt at most this many tasks at once


def cases() -> list[Case]:
    """The issue's settings: sinusoid (meta-batch 25, K=10; 1 and 5 steps), Omniglot 5w1s."""
    rng = np.random.default_rng(0)
    sinusoid = SinusoidTasks().sample(25, 10, 10, rng)
    # Random 28x28 "characters": speed does not depend on the pixels.
    images = (rng.random((50, 20, 28, 28)) * 255).astype(np.uint8)
    omniglot = EpisodeSampler(images, ways=5, shots=1, query_shots=1).sample(32, rng)
    return [
        Case("sinusoid_mb25_k10_1step", SinusoidMLP, F.mse_loss, sinusoid, 1, 0.01),
        Case("sinusoid_mb25_k10_5steps", SinusoidMLP, F.mse_loss, sinusoid, 5, 0.01),
        Case("omniglot_5w1s_mb32_1step", lambda: ConvNet(5), F.cross_entropy, omniglot, 1, 0.4, 16),
    ]


def rlmaml_step(case: Case, model: nn.Module, vectorize: bool) -> Callable[[], None]:
    """One rlmaml meta-iteration (the MetaLearner, vmap in chunks of ``case.chunk_size`` tasks
    or a loop over tasks)."""
    learner = MetaLearner(
        model,
        criterion_loss(model, case.loss),
        inner_steps=case.steps,
        inner_lr=case.lr,
        vectorize=vectorize,
        chunk_size=case.chunk_size,
    )
    optimizer = torch.optim.Adam(learner.meta_parameters(), lr=1e-3)
    b = case.batch

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        learner.meta_backward((b.support_x, b.support_y), (b.query_x, b.query_y))
        optimizer.step()

    return step


def higher_step(case: Case, model: nn.Module) -> Callable[[], None]:
    """One meta-iteration the way ``higher``'s MAML example writes it."""
    import higher

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inner = torch.optim.SGD(model.parameters(), lr=case.lr)
    b, n = case.batch, case.batch.support_x.shape[0]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for i in range(n):
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, opt):
                for _ in range(case.steps):
                    opt.step(case.loss(fmodel(b.support_x[i]), b.support_y[i]))
                (case.loss(fmodel(b.query_x[i]), b.query_y[i]) / n).backward()
        optimizer.step()

    return step


def torchopt_step(case: Case, model: nn.Module) -> Callable[[], None]:
    """One meta-iteration the way ``torchopt``'s MAML example writes it."""
    import torchopt

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inner = torchopt.MetaSGD(model, lr=case.lr)
    b, n = case.batch, case.batch.support_x.shape[0]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        state = torchopt.extract_state_dict(model)
        for i in range(n):
            for _ in range(case.steps):
                inner.step(case.loss(model(b.support_x[i]), b.support_y[i]))
            (case.loss(model(b.query_x[i]), b.query_y[i]) / n).backward()
            torchopt.recover_state_dict(model, state)
        optimizer.step()

    return step


def milliseconds(step: Callable[[], None], repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``step`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def run(repeats: int = 20) -> dict[str, dict[str, float]]:
    """Milliseconds per meta-iteration: ``{case: {implementation: ms}}``."""
    results: dict[str, dict[str, float]] = {}
    for case in cases():
        torch.manual_seed(0)
        initial = case.make_model()
        makers = {
            "rlmaml_vmap": lambda m, c=case: rlmaml_step(c, m, vectorize=True),
            "rlmaml_loop": lambda m, c=case: rlmaml_step(c, m, vectorize=False),
            "higher": lambda m, c=case: higher_step(c, m),
            "torchopt": lambda m, c=case: torchopt_step(c, m),
        }
        results[case.name] = {
            name: milliseconds(make(copy.deepcopy(initial)), repeats)
            for name, make in makers.items()
        }
    return results


def main(repeats: int = 20, as_json: bool = False) -> int:
    """Print the timings (a table, or one JSON object) and the speed-ups over the peers."""
    results = run(repeats)
    if as_json:
        print(json.dumps(results))
        return 0
    print(f"ms per meta-iteration (median of {repeats}), torch threads {torch.get_num_threads()}")
    for case, times in results.items():
        ours = min(times["rlmaml_vmap"], times["rlmaml_loop"])
        peer = min(times["higher"], times["torchopt"])
        cells = "  ".join(f"{name} {ms:8.2f}" for name, ms in times.items())
        print(f"{case:28s} {cells}  speed-up vs faster peer {peer / ours:5.1f}x")
    return 0
