"""Tests of the multi-process ProcessSampler: the same trajectories as the in-process sampler
for the same seed whatever the number of workers, recovery from and clear reports of workers that
die, hang or raise, and no child process left behind."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

import envs
from rlmaml.core.params import expand_params, module_params, stack_params
from rlmaml.rl.policies import GaussianMLPPolicy
from rlmaml.rl.process_sampler import ProcessSampler
from rlmaml.rl.samplers import Sampler, VectorizedSampler
from rlmaml.rl.trajectories import Trajectories

NAV_ID = "rlmaml/Navigation2D-v0"
PROBE_ID = "rlmaml_test/Probe-v0"
PROBE_HORIZON = 5
WORKER_IMPORTS = (__name__,)
"""Workers import this module, which registers PROBE_ID in them too."""


class ProbeEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """A test-only task family that can end early, hang or kill its own process.

    A task is ``{"length": k}`` plus optionally ``"sleep_s"`` (each step sleeps that long),
    ``"kill": True`` (the first step SIGKILLs the process) or ``"kill_once": path`` (the first
    step creates ``path`` and SIGKILLs the process unless ``path`` exists). The observation is
    ``(steps taken, u)`` with ``u`` drawn from ``np_random`` at reset, so it reveals the reset
    seed; the reward of step ``k`` is ``k``.
    """

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._task: dict[str, Any] = {"length": 1}
        self._steps = 0
        self._u = 0.0

    def sample_tasks(self, n: int) -> list[dict[str, Any]]:
        return [{"length": int(k)} for k in self.np_random.integers(1, 8, size=n)]

    def set_task(self, task: dict[str, Any]) -> None:
        self._task = {**task, "length": int(task["length"])}  # a bad length raises here

    @property
    def task(self) -> dict[str, Any]:
        return dict(self._task)

    def _obs(self) -> np.ndarray:
        return np.array([self._steps, self._u], dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._steps = 0
        self._u = float(self.np_random.uniform())
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        time.sleep(self._task.get("sleep_s", 0.0))
        marker = self._task.get("kill_once")
        if self._task.get("kill") or (marker is not None and not Path(marker).exists()):
            if marker is not None:
                Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        self._steps += 1
        return self._obs(), float(self._steps), self._steps == self._task["length"], False, {}


if PROBE_ID not in gymnasium.registry:
    gymnasium.register(
        PROBE_ID, entry_point=f"{__name__}:ProbeEnv", max_episode_steps=PROBE_HORIZON
    )


def make_policy(act_dim: int = 2) -> GaussianMLPPolicy:
    torch.manual_seed(0)
    return GaussianMLPPolicy(2, act_dim, hidden=(16, 16))


def theta(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in module_params(policy).items()}


def distinct_params(policy: torch.nn.Module, num_tasks: int) -> dict[str, torch.Tensor]:
    return stack_params(
        [{k: v + 0.05 * i for k, v in theta(policy).items()} for i in range(num_tasks)]
    )


def nav_tasks(n: int) -> list[dict]:
    env = gymnasium.make(NAV_ID)
    env.reset(seed=0)
    return envs.require_task_family(env).sample_tasks(n)


def assert_identical(a: Trajectories, b: Trajectories) -> None:
    for name, x, y in zip(Trajectories._fields, a, b, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y), name


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_no_children(pids: list[int | None]) -> None:
    assert multiprocessing.active_children() == []
    assert pids and not any(is_running(pid) for pid in pids if pid is not None)


@pytest.mark.parametrize(
    ("num_workers", "start_method"), [(1, "spawn"), (2, "spawn"), (2, "forkserver")]
)
def test_navigation_trajectories_equal_the_vectorized_samplers(
    num_workers: int, start_method: Literal["spawn", "forkserver"]
) -> None:
    policy = make_policy()
    tasks = nav_tasks(3)
    kwargs = {"goal_tolerance": 0.15}  # some episodes end early, so masks are compared too
    requests = [
        (expand_params(theta(policy), 3), tasks, 6, 7, None),
        (distinct_params(policy, 3), tasks, 6, 8, None),
        (distinct_params(policy, 1), tasks[:1], 5, 9, None),  # fewer tasks than workers
        # Workers get runs of tasks balanced by their episodes: here 1 task and 2.
        (distinct_params(policy, 3), tasks, 6, 10, [6, 1, 2]),
    ]
    with VectorizedSampler(NAV_ID, policy, kwargs) as reference:
        expected = [reference.sample(*r[:4], episode_counts=r[4]) for r in requests]
    with ProcessSampler(
        NAV_ID, policy, kwargs, num_workers=num_workers, start_method=start_method
    ) as sampler:
        assert isinstance(sampler, Sampler) and sampler.horizon == 100
        for r, want in zip(requests, expected, strict=True):
            assert_identical(sampler.sample(*r[:4], episode_counts=r[4]), want)
    assert (expected[0].lengths < 100).any()
    assert_no_children(sampler.worker_pids)


def test_a_phase_is_cut_into_runs_of_tasks_balanced_by_their_episodes() -> None:
    from rlmaml.rl.process_sampler import _balanced_bounds

    for num_tasks, parts in [(5, 2), (20, 2), (7, 3), (6, 4), (3, 3), (1, 1)]:
        bounds = _balanced_bounds(np.full(num_tasks, 4), parts)
        sizes = np.diff(bounds)
        assert bounds[0] == 0 and bounds[-1] == num_tasks and len(sizes) == parts
        assert sizes.min() >= 1 and sizes.max() - sizes.min() <= 1
    assert _balanced_bounds(np.array([6, 1, 2]), 2) == [0, 1, 3]
    assert _balanced_bounds(np.array([1, 1, 1, 1, 12]), 2) == [0, 4, 5]
    assert _balanced_bounds(np.array([10, 1, 1]), 3) == [0, 1, 2, 3]  # one task each at least


def test_gymnasium_envs_get_the_phase_reset_seeds_and_worker_errors_surface() -> None:
    policy = make_policy(act_dim=1)
    tasks = [{"length": k} for k in (2, 5, 3, 1, 4)]
    params = distinct_params(policy, len(tasks))
    with VectorizedSampler(PROBE_ID, policy) as reference:
        expected = reference.sample(params, tasks, 3, seed=4)
    with ProcessSampler(PROBE_ID, policy, num_workers=2, worker_imports=WORKER_IMPORTS) as sampler:
        traj = sampler.sample(params, tasks, 3, seed=4)
        assert_identical(traj, expected)
        # Each episode was reset with its own seed of the whole phase (distinct draws u).
        assert len(set(traj.observations[:, :, 0, 1].flatten().tolist())) == 15
        pids = sampler.worker_pids
        with pytest.raises(RuntimeError, match=r"(?s)worker 1 \(pid \d+\) raised.*ValueError"):
            sampler.sample(params, [*tasks[:4], {"length": "five"}], 3, seed=4)
        with pytest.raises(ValueError, match="leading axis of len"):
            sampler.sample(params, tasks[:2], 3, seed=4)
        # An exception leaves the workers running and usable.
        assert sampler.worker_pids == pids
        assert_identical(sampler.sample(params, tasks, 3, seed=4), expected)


@pytest.mark.parametrize("env_id", ["rlmaml/AntVel-v0", "rlmaml/HalfCheetahVel-v0"])
def test_locomotion_workers_step_batched_copies_and_equal_the_gymnasium_pool(env_id) -> None:
    pytest.importorskip("mujoco")
    assert envs.batched_env_for(env_id) is not None  # what the workers' samplers use
    env = gymnasium.make(env_id)
    env.reset(seed=0)
    tasks = envs.require_task_family(env).sample_tasks(4)
    torch.manual_seed(0)
    act_dim = env.action_space.shape[0]
    # Wild actions (a large initial std) make some ants fall, so early ends are compared too.
    policy = GaussianMLPPolicy(env.observation_space.shape[0], act_dim, (16, 16), init_std=3.0)
    # Per-task parameters: the workers lay the policy's input out as the whole phase, so even
    # the rounding of its matrix products matches the single process's.
    params = distinct_params(policy, 4)
    kwargs = {"max_episode_steps": 25}  # short, to keep the test quick
    with VectorizedSampler(env_id, policy, kwargs, use_batched=False) as reference:
        expected = reference.sample(params, tasks, 3, seed=2)
    with ProcessSampler(env_id, policy, kwargs, num_workers=2) as sampler:
        assert_identical(sampler.sample(params, tasks, 3, seed=2), expected)
    if env_id.startswith("rlmaml/Ant"):
        assert (expected.lengths < 25).any()  # early ends (falls) and padding are compared too


def test_a_worker_killed_between_phases_is_replaced_and_gives_the_same_trajectories() -> None:
    policy = make_policy()
    tasks = nav_tasks(4)
    params = distinct_params(policy, 4)
    sampler = ProcessSampler(NAV_ID, policy, num_workers=2)
    with sampler:
        first = sampler.sample(params, tasks, 4, seed=1)
        killed = sampler.worker_pids[1]
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        start = time.monotonic()
        again = sampler.sample(params, tasks, 4, seed=1)
        assert time.monotonic() - start < 15.0  # one worker start, a second or two
        assert_identical(again, first)
        pids = sampler.worker_pids
        assert killed not in pids
    sampler.close()  # closing twice is fine
    assert_no_children([killed, *pids])
    with pytest.raises(RuntimeError, match="closed"):
        sampler.sample(params, tasks, 4, seed=1)


def test_a_worker_dying_in_a_phase_is_restarted_once_then_reported(tmp_path: Path) -> None:
    policy = make_policy(act_dim=1)
    params = expand_params(theta(policy), 2)
    with ProcessSampler(PROBE_ID, policy, num_workers=1, worker_imports=WORKER_IMPORTS) as sampler:
        dies_once = [{"length": 3, "kill_once": str(tmp_path / "killed")}, {"length": 4}]
        recovered = sampler.sample(params, dies_once, 2, seed=3)
        assert (tmp_path / "killed").exists()
        with VectorizedSampler(PROBE_ID, policy) as reference:
            expected = reference.sample(params, dies_once, 2, seed=3)
        assert_identical(recovered, expected)

        start = time.monotonic()
        with pytest.raises(RuntimeError) as error:
            sampler.sample(params, [{"length": 3, "kill": True}] * 2, 2, seed=3)
        assert time.monotonic() - start < 15.0  # two deaths and one restart
        message = str(error.value)
        assert message.startswith(f"ProcessSampler ({PROBE_ID}): sampling failed")
        assert message.count("was killed by SIGKILL (exit code -9)") == 2, message
        assert "worker 0 (pid" in message and "its replacement (pid" in message
        # The next phase starts a fresh worker.
        assert_identical(sampler.sample(params, dies_once, 2, seed=3), recovered)
    assert_no_children(sampler.worker_pids)


def test_a_hanging_worker_is_terminated_and_reported_within_the_timeout() -> None:
    policy = make_policy(act_dim=1)
    params = expand_params(theta(policy), 2)
    timeout_s = 1.0
    with ProcessSampler(
        PROBE_ID, policy, num_workers=2, timeout_s=timeout_s, worker_imports=WORKER_IMPORTS
    ) as sampler:
        pids = sampler.worker_pids
        start = time.monotonic()
        with pytest.raises(RuntimeError, match=r"worker 1 \(pid \d+\) gave no reply within 1 s"):
            sampler.sample(params, [{"length": 2}, {"length": 2, "sleep_s": 60.0}], 2, seed=0)
        assert time.monotonic() - start < timeout_s + 3.0
        hung = pids[1]
        assert hung is not None and not is_running(hung)
        # The worker that answered is kept; the hung one is replaced at the next phase.
        traj = sampler.sample(params, [{"length": 2}, {"length": 3}], 2, seed=0)
        assert traj.lengths.tolist() == [[2, 2], [3, 3]]
        assert sampler.worker_pids[0] == pids[0] and sampler.worker_pids[1] != hung
    assert_no_children([*pids, *sampler.worker_pids])


def test_a_worker_start_up_error_surfaces_its_message() -> None:
    with pytest.raises(RuntimeError, match=r"(?s)failed to start.*not a registered Gymnasium id"):
        ProcessSampler("rlmaml/NoSuchEnv-v0", make_policy(), num_workers=2)
    assert multiprocessing.active_children() == []


def test_workers_dying_at_start_are_reported_even_with_a_large_policy(tmp_path: Path) -> None:
    # A script without a main guard: each spawned worker re-runs it, tries to start workers of
    # its own and dies while starting. With the policy (90k parameters, far beyond a pipe's
    # buffer) among the process's arguments, the parent hung in ``process.start()``.
    script = tmp_path / "no_main_guard.py"
    script.write_text(
        "from rlmaml.rl.policies import GaussianMLPPolicy\n"
        "from rlmaml.rl.process_sampler import ProcessSampler\n"
        "ProcessSampler('rlmaml/Navigation2D-v0', GaussianMLPPolicy(2, 2, [300, 300]), "
        "num_workers=2)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode != 0
    assert "a worker failed to start" in done.stderr
    assert "__main__" in done.stderr.splitlines()[-1]


def test_invalid_arguments_raise_before_any_worker_starts() -> None:
    policy = make_policy()
    with pytest.raises(ValueError, match="num_workers"):
        ProcessSampler(NAV_ID, policy, num_workers=0)
    with pytest.raises(ValueError, match="timeouts must be positive"):
        ProcessSampler(NAV_ID, policy, timeout_s=0)
    with pytest.raises(ValueError, match="start_method"):
        ProcessSampler(NAV_ID, policy, start_method="fork")  # type: ignore[arg-type]
    assert multiprocessing.active_children() == []


def test_garbage_collection_and_interpreter_exit_stop_the_workers() -> None:
    sampler = ProcessSampler(NAV_ID, make_policy(), num_workers=1)
    pids = sampler.worker_pids
    del sampler
    gc.collect()
    assert_no_children(pids)

    script = (
        "from rlmaml.rl.policies import GaussianMLPPolicy\n"
        "from rlmaml.rl.process_sampler import ProcessSampler\n"
        "if __name__ == '__main__':\n"
        "    sampler = ProcessSampler('rlmaml/Navigation2D-v0', GaussianMLPPolicy(2, 2), "
        "num_workers=1)\n"
        "    print(sampler.worker_pids[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert not is_running(int(done.stdout))


def test_workers_start_with_passive_openmp_waiting_unless_the_user_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rlmaml.rl.process_sampler import _worker_environment

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with _worker_environment():
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with _worker_environment():
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
