"""Where the time of one paper-config meta-RL iteration goes, for each Fisher-product choice.

For a config (by default Navigation2D with the paper's settings: 20 tasks x 20 trajectories x
100 steps, two phases, TRPO with 10 conjugate-gradient iterations), it times the phases of a
meta-iteration: sampling, advantages and inner adaptation, the surrogate gradient, the
conjugate gradient (Fisher-vector products) and the line search; and, as the reference the
Gauss-Newton product replaces, one Fisher-vector product by double backward through the inner
step.

Run ``rlmaml bench rl [--config CONFIG] [--fisher-subsample 1,4,10] [--json]``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from rlmaml.rl.config import RLConfig
from rlmaml.rl.experiment import RLExperiment
from rlmaml.rl.trpo import trpo_step
from rlmaml.runs import load_config


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _double_backward_product(experiment: RLExperiment, batch) -> Callable[[], object]:
    params = experiment.params

    def product() -> object:
        _, kl = experiment.maml.surrogate_and_kl(params, batch)
        grads = torch.autograd.grad(kl, list(params.values()), create_graph=True)
        dot = sum((g * torch.ones_like(g)).sum() for g in grads)
        return torch.autograd.grad(dot, list(params.values()))

    return product


def breakdown(config: RLConfig, repeats: int) -> dict[str, float]:
    """Median seconds of each phase of a meta-iteration over ``repeats`` iterations."""
    experiment = RLExperiment(config)
    phases: dict[str, list[float]] = {}
    try:
        for _ in range(repeats + 1):  # the first iteration warms up and is not counted
            times: dict[str, float] = {}
            tasks = experiment.task_env.sample_tasks(config.meta.meta_batch)
            start = time.perf_counter()
            batch, stats = experiment.collect(tasks, config.meta.episodes)
            times["collect"] = time.perf_counter() - start
            times["sampling"] = stats["sampling_s"]
            params = experiment.params
            start = time.perf_counter()
            loss, _ = experiment.maml.surrogate_and_kl(params, batch)
            grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
            times["surrogate_gradient"] = time.perf_counter() - start
            fisher = experiment.maml.fisher_vector_product(
                params, batch, config.meta.fisher_subsample
            )
            times["one_fisher_product"] = _seconds(lambda f=fisher, g=grads: f(g))
            start = time.perf_counter()
            trpo_step(
                params,
                lambda p, b=batch: experiment.maml.surrogate_and_kl(p, b),
                grads,
                fisher,
                experiment.trpo,
                loss.item(),
            )
            times["trpo_step"] = time.perf_counter() - start
            times["iteration"] = times["collect"] + times["surrogate_gradient"] + times["trpo_step"]
            times["double_backward_product"] = _seconds(_double_backward_product(experiment, batch))
            for key, value in times.items():
                phases.setdefault(key, []).append(value)
    finally:
        experiment.close()
    return {key: statistics.median(values) for key, values in phases.items()}


DEFAULT_CONFIG = "experiments/navigation2d.yaml"


def run(
    repeats: int = 3,
    config_path: str | None = None,
    subsamples: Sequence[int] = (1, 4, 10),
) -> dict[str, dict[str, float]]:
    """The breakdown of ``config_path``'s iteration (default: Navigation2D's paper config) for
    each Fisher-product subsample."""
    config_path = config_path or DEFAULT_CONFIG
    results = {}
    for subsample in subsamples:
        config = load_config(
            RLConfig,
            config_path,
            overrides=[f"meta.fisher_subsample={subsample}", "run.progress=false"],
        )
        results[f"fisher_subsample_{subsample}"] = breakdown(config, repeats)
    return results


def main(
    repeats: int = 3,
    as_json: bool = False,
    config_path: str | None = None,
    subsamples: Sequence[int] = (1, 4, 10),
) -> int:
    """Print the breakdown (a table, or one JSON object)."""
    config_path = config_path or DEFAULT_CONFIG
    results = run(repeats, config_path, subsamples)
    if as_json:
        print(json.dumps(results))
        return 0
    print(
        f"{config_path}: meta-iteration, seconds (median of {repeats}), "
        f"torch threads {torch.get_num_threads()}"
    )
    for name, times in results.items():
        print(f"{name}: " + "  ".join(f"{k} {v:.3f}" for k, v in times.items()))
    return 0
