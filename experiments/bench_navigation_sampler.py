"""Benchmark: Navigation2D sampling rate in environment steps per second.

Measures the natively batched environment alone (random actions) and the in-process
:class:`~rlmaml.rl.samplers.VectorizedSampler` including policy inference (the paper's
2x100 Gaussian MLP), with one parameter set shared by all tasks (pre-update sampling) and with
a distinct set per task (post-update sampling, which runs the policy under ``vmap``).

Usage::

    python experiments/bench_navigation_sampler.py [--repeats 5] [--threads 1] [--json]

``--threads`` is the sampler's ``num_threads`` (torch intra-op threads while sampling; its
default is 1). Compare ``--threads 1`` and ``--threads 2`` on your machine: on shared cores,
multi-threaded small matrix products can be orders of magnitude slower.

Rates count real transitions only (steps before an episode ended); each figure is the median
over ``--repeats`` timed runs after one warm-up run, with the best run alongside, because
timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import gymnasium
import numpy as np
import torch

from envs import require_task_family
from envs.navigation import BatchedNavigation2D
from rlmaml.core.params import expand_params, module_params, stack_params
from rlmaml.rl.policies import GaussianMLPPolicy
from rlmaml.rl.samplers import VectorizedSampler

ENV_ID = "rlmaml/Navigation2D-v0"
SIZES: tuple[tuple[int, int], ...] = ((20, 20), (40, 100))
"""(tasks, episodes per task): the paper's meta-batch, and a larger one."""


def rates(run: Callable[[], int], repeats: int) -> dict[str, float]:
    """Median and best steps per second of ``run`` (which returns its step count)."""
    run()
    measured = []
    for _ in range(repeats):
        start = time.perf_counter()
        steps = run()
        measured.append(steps / (time.perf_counter() - start))
    return {"median": statistics.median(measured), "best": max(measured)}


def raw_env_run(env: BatchedNavigation2D, goals: np.ndarray, seed: int) -> Callable[[], int]:
    """One full batch of episodes with uniform random actions drawn before timing starts."""
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-0.1, 0.1, size=(env.horizon, len(goals), 2)).astype(np.float32)

    def run() -> int:
        env.reset(goals)
        steps = 0
        for t in range(env.horizon):
            steps += int(env.active.sum())
            env.step(actions[t])
        return steps

    return run


def sampler_run(
    sampler: VectorizedSampler, params: dict[str, torch.Tensor], tasks: list[dict], episodes: int
) -> Callable[[], int]:
    """One sampling phase, with a new seed each time."""
    seeds = iter(range(1_000_000))

    def run() -> int:
        return sampler.sample(params, tasks, episodes, next(seeds)).num_steps()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure")
    parser.add_argument("--threads", type=int, default=1, help="the sampler's num_threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    torch.manual_seed(0)
    env = gymnasium.make(ENV_ID)
    env.reset(seed=0)
    all_tasks = require_task_family(env).sample_tasks(max(tasks for tasks, _ in SIZES))
    policy = GaussianMLPPolicy(obs_dim=2, act_dim=2, hidden=(100, 100))
    theta = {name: p.detach() for name, p in module_params(policy).items()}
    batched = BatchedNavigation2D.from_env(env)

    results: dict[str, dict[str, float]] = {}
    with VectorizedSampler(ENV_ID, policy, num_threads=args.threads) as sampler:
        for num_tasks, episodes in SIZES:
            tasks = all_tasks[:num_tasks]
            size = f"{num_tasks}x{episodes}"
            goals = np.repeat(BatchedNavigation2D.goals_from_tasks(tasks), episodes, axis=0)
            results[f"raw_env_{size}"] = rates(raw_env_run(batched, goals, 0), args.repeats)
            shared = expand_params(theta, num_tasks)
            per_task = stack_params(
                [{k: v + 0.01 * i for k, v in theta.items()} for i in range(num_tasks)]
            )
            results[f"sampler_shared_{size}"] = rates(
                sampler_run(sampler, shared, tasks, episodes), args.repeats
            )
            results[f"sampler_per_task_{size}"] = rates(
                sampler_run(sampler, per_task, tasks, episodes), args.repeats
            )

    report = {
        "unit": "env steps per second",
        "horizon": batched.horizon,
        "sampler_threads": args.threads,
        "torch_threads_outside_sampler": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "repeats": args.repeats,
        "rates": results,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"Navigation2D, horizon {report['horizon']}, sampler threads {args.threads}, "
        f"{report['cpu_count']} CPUs, load average {report['load_average_1min']:.2f}"
    )
    for name, rate in results.items():
        print(f"  {name:<28} {rate['median']:>14,.0f} steps/s (best {rate['best']:,.0f})")


if __name__ == "__main__":
    main()
