"""How close the sampling backends come to the raw MuJoCo stepping rate of a locomotion family.

One run measures, in environment steps per second (one env step = ``frame_skip`` simulator
steps):

- ``raw``: the env's own model stepped by ``mujoco.rollout`` (MuJoCo's C loop: no policy, no
  Python at all per step) from its reset state under uniform random controls drawn before
  timing, one episode length per trajectory; one spawned process per core, each stepping a
  fixed number of env steps, all starting together; the rate is all their steps over the
  slowest one's time. ``raw_python_loop`` is the same with a Python loop of ``mj_step`` calls
  on one ``MjData`` instead (the reference of this benchmark's earlier versions; the Python
  call per step costs about a microsecond, a fifth of a HalfCheetah step);
- each sampler backend (``VectorizedSampler`` in-process, ``ProcessSampler`` with one worker
  per core) collecting one sampling phase of the paper's locomotion settings (40 tasks x 20
  episodes of the env's horizon) with the paper's 2x100 Gaussian policy, one parameter set
  shared by all tasks (pre-update sampling). The phase size matters: the policy call and the
  process hops cost per time step, whatever the number of copies, so small phases understate
  what a run sees (8 tasks x 5 episodes gave AntVel 0.62 of the Python-loop raw rate, this
  phase 0.81);
- ``ratio``: the best backend's rate over the raw (C loop) rate, i.e. the share of the
  simulator's throughput that survives the policy, the environment's own Python (for the
  locomotion families, their natively batched twins: ``mj_rnePostConstraint``, observations,
  rewards and checks in NumPy; see :mod:`envs.batched_locomotion`) and the process hops.

Both backends step the natively batched twin, as training does. On a machine shared with other
work every rate drops and moves between runs, the raw one included (it needs every core at
once); compare ratios measured together, and repeat a run that looks off.

Each figure is the median over ``repeats`` timed runs after one untimed warm-up. The rates
are those of the env as ``gymnasium.make(env_id, **env_kwargs)`` builds it (its defaults unless
``--env-kwargs`` says otherwise, e.g. ``'{"frame_skip": 1}'`` for the paper's cheetah dynamics:
five times fewer simulator steps per env step, so the policy's share of the time grows).

Run ``rlmaml bench sampler [--env ID] [--env-kwargs JSON] [--repeats N] [--config CONFIG]
[--json]``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from multiprocessing import get_context

import torch

TASKS = 40
EPISODES = 20
RAW_STEPS = 20000
"""Env steps each raw-stepping process takes per timed run."""

PAPER_CONFIGS = {
    "rlmaml/HalfCheetahVel-v0": "experiments/halfcheetah_vel.yaml",
    "rlmaml/HalfCheetahDir-v0": "experiments/halfcheetah_dir.yaml",
    "rlmaml/AntVel-v0": "experiments/ant_vel.yaml",
    "rlmaml/AntDir-v0": "experiments/ant_dir.yaml",
    "rlmaml/AntGoal-v0": "experiments/ant_goal.yaml",
    "rlmaml/HumanoidDir-v0": "experiments/humanoid_dir.yaml",
}
"""Each family's config with the paper's locomotion settings, whose meta-iteration the benchmark
times (HumanoidDir is not in the paper; its config applies the same settings)."""


def _raw_worker(
    env_id: str, env_kwargs: dict, steps: int, seed: int, in_c: bool, barrier, results
) -> None:
    """Step the env's MuJoCo model ``steps`` env steps from its reset state, one episode
    length at a time, under uniform random controls; put (steps, seconds).

    ``in_c``: all episodes in one ``mujoco.rollout`` call (a C loop, no Python per step);
    otherwise a Python loop of ``mj_step`` calls on one ``MjData``."""
    import gymnasium
    import mujoco
    import numpy as np
    from mujoco import rollout

    import envs  # noqa: F401  (registers the rlmaml/ ids)
    from envs.mujoco_copies import FULL_PHYSICS

    env = gymnasium.make(env_id, **env_kwargs)
    model = env.unwrapped.model
    frame_skip = env.unwrapped.frame_skip
    horizon = env.spec.max_episode_steps or 200
    data = mujoco.MjData(model)
    low, high = model.actuator_ctrlrange.T
    episodes = -(-steps // horizon)
    steps = episodes * horizon
    controls = np.random.default_rng(seed).uniform(low, high, size=(episodes, horizon, model.nu))
    if in_c:
        start_state = np.empty((episodes, mujoco.mj_stateSize(model, FULL_PHYSICS)))
        mujoco.mj_getState(model, data, start_state[0], FULL_PHYSICS)
        start_state[1:] = start_state[0]
        per_substep = np.repeat(controls, frame_skip, axis=1)
        states = np.empty((episodes, horizon * frame_skip, start_state.shape[1]))
        runner = rollout.Rollout(nthread=0)

        def step_all() -> None:
            runner.rollout(model, data, start_state, per_substep, state=states)
    else:

        def step_all() -> None:
            for episode in controls:
                mujoco.mj_resetData(model, data)
                for control in episode:
                    data.ctrl[:] = control
                    mujoco.mj_step(model, data, nstep=frame_skip)

    barrier.wait()
    start = time.perf_counter()
    step_all()
    seconds = time.perf_counter() - start
    results.put((steps, seconds))
    env.close()


def raw_rate(
    env_id: str, env_kwargs: dict, processes: int, in_c: bool = True, steps: int = RAW_STEPS
) -> float:
    """Env steps/s of ``processes`` concurrent raw-stepping processes together (``in_c``: each
    steps in one ``mujoco.rollout`` call, else in a Python loop of ``mj_step``)."""
    context = get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(
            target=_raw_worker, args=(env_id, env_kwargs, steps, seed, in_c, barrier, results)
        )
        for seed in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        done = [results.get(timeout=300) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
    return sum(s for s, _ in done) / max(seconds for _, seconds in done)


def _median_rate(run: Callable[[], int], repeats: int) -> float:
    """Median steps/s of ``run`` (which returns its step count) after one warm-up."""
    run()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        steps = run()
        rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates)


def backend_rates(env_id: str, env_kwargs: dict, workers: int, repeats: int) -> dict[str, float]:
    """Env steps/s, policy included, of each sampler backend on one meta-batch phase."""
    import gymnasium

    from envs import require_task_family
    from rlmaml.core.params import expand_params, module_params
    from rlmaml.rl.policies import GaussianMLPPolicy
    from rlmaml.rl.process_sampler import ProcessSampler
    from rlmaml.rl.samplers import VectorizedSampler

    env = gymnasium.make(env_id, **env_kwargs)
    env.reset(seed=0)
    tasks = require_task_family(env).sample_tasks(TASKS)
    obs_dim = env.observation_space.shape[0]
    act_dim = env.action_space.shape[0]
    env.close()
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(obs_dim, act_dim, hidden=(100, 100))
    params = expand_params({name: p.detach() for name, p in module_params(policy).items()}, TASKS)
    backends = {
        "vectorized": lambda: VectorizedSampler(env_id, policy, env_kwargs),
        "process": lambda: ProcessSampler(env_id, policy, env_kwargs, num_workers=workers),
    }
    rates = {}
    for name, make in backends.items():
        with make() as sampler:
            seeds = iter(range(1_000_000))  # a new seed for every phase

            def phase(s=sampler, seeds=seeds) -> int:
                return s.sample(params, tasks, EPISODES, next(seeds)).num_steps()

            rates[name] = _median_rate(phase, repeats)
    return rates


def iteration_seconds(config_path: str, repeats: int) -> dict[str, float]:
    """One meta-iteration of ``config_path``: sampling, adaptation, outer step and in all."""
    from rlmaml.bench.rl import breakdown
    from rlmaml.rl.config import RLConfig
    from rlmaml.runs import load_config

    config = load_config(RLConfig, config_path, overrides=["run.progress=false"])
    times = breakdown(config, repeats)
    return {
        "sampling": times["sampling"],
        "adaptation": times["collect"] - times["sampling"],
        "outer_step": times["surrogate_gradient"] + times["trpo_step"],
        "iteration": times["iteration"],
    }


def run(
    env_id: str,
    repeats: int = 3,
    config_path: str | None = None,
    iteration_repeats: int = 1,
    env_kwargs: dict | None = None,
) -> dict[str, object]:
    """The raw rate, every backend's rate, their ratio and the meta-iteration's breakdown (when
    a config is given or the family has one in ``PAPER_CONFIGS``), as one JSON-able dict."""
    env_kwargs = dict(env_kwargs or {})
    cores = os.cpu_count() or 1
    raw = statistics.median(raw_rate(env_id, env_kwargs, cores) for _ in range(max(repeats, 1)))
    raw_python = statistics.median(
        raw_rate(env_id, env_kwargs, cores, in_c=False) for _ in range(max(repeats, 1))
    )
    backends = backend_rates(env_id, env_kwargs, cores, repeats)
    config_path = config_path or PAPER_CONFIGS.get(env_id)
    iteration = None if config_path is None else iteration_seconds(config_path, iteration_repeats)
    return {
        "env": env_id,
        "env_kwargs": env_kwargs,
        "unit": "env steps per second",
        "cores": cores,
        "phase": f"{TASKS} tasks x {EPISODES} episodes",
        "repeats": repeats,
        "raw_steps_per_s": raw,
        "raw_python_loop_steps_per_s": raw_python,
        "backends": backends,
        "ratio": max(backends.values()) / raw,
        "iteration_config": config_path,
        "iteration_s": iteration,
    }


def main(
    env_id: str = "rlmaml/HalfCheetahVel-v0",
    repeats: int = 3,
    as_json: bool = False,
    config_path: str | None = None,
    env_kwargs: dict | None = None,
) -> int:
    """Print the rates and the iteration breakdown (a table, or one JSON object)."""
    results = run(env_id, repeats, config_path, env_kwargs=env_kwargs)
    if as_json:
        print(json.dumps(results))
        return 0
    print(
        f"{env_id} {results['env_kwargs'] or ''}: env steps/s on {results['cores']} cores, "
        f"{results['phase']}, median of {repeats}"
    )
    print(f"  {'raw (C loop)':<12} {results['raw_steps_per_s']:>12,.0f}")
    print(f"  {'raw (Python)':<12} {results['raw_python_loop_steps_per_s']:>12,.0f}")
    for name, rate in results["backends"].items():
        print(f"  {name:<12} {rate:>12,.0f}")
    print(f"  best backend / raw: {results['ratio']:.3f}")
    if results["iteration_s"] is not None:
        parts = "  ".join(f"{k} {v:.2f}" for k, v in results["iteration_s"].items())
        print(f"one meta-iteration of {results['iteration_config']}, seconds: {parts}")
    return 0
