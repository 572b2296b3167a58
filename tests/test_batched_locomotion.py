"""Tests of the natively batched MuJoCo locomotion families: every copy reproduces the Gymnasium
env bit for bit (reset noise from the same seeds, observations, rewards, termination, early ends,
truncation, copies with different tasks), unstable simulations end a copy cleanly as the single
env does, and the batched twins are the ones samplers find."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gymnasium
import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")
pytest.importorskip(
    "gymnasium.envs.mujoco", reason="Gymnasium's MuJoCo envs need gymnasium[mujoco] (imageio)"
)

from envs import batched_env_for, require_task_family  # noqa: E402
from envs.ant import BatchedAnt, BatchedAntGoal  # noqa: E402
from envs.cheetah import BatchedHalfCheetah  # noqa: E402
from envs.humanoid import BatchedHumanoidDir  # noqa: E402
from envs.mujoco_copies import PerCopyData, RolloutStates  # noqa: E402
from rlmaml.rl.config import RLConfig  # noqa: E402
from rlmaml.runs import load_config  # noqa: E402

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

BATCHED = {
    "rlmaml/HalfCheetahVel-v0": BatchedHalfCheetah,
    "rlmaml/HalfCheetahDir-v0": BatchedHalfCheetah,
    "rlmaml/AntVel-v0": BatchedAnt,
    "rlmaml/AntDir-v0": BatchedAnt,
    "rlmaml/AntGoal-v0": BatchedAntGoal,
    "rlmaml/HumanoidDir-v0": BatchedHumanoidDir,
}
HORIZON = 40
"""A short time limit, so that the long-running copies are truncated within the test."""

CASES = [pytest.param(env_id, {}, id=env_id.split("/")[1]) for env_id in BATCHED] + [
    pytest.param(env_id, {"solver_warmstart": True}, id=f"{env_id.split('/')[1]}-warmstart")
    for env_id in BATCHED
    if "Cheetah" in env_id
]
"""Every family with its defaults (the cheetah's twin then steps all copies with one
``mujoco.rollout`` call), and the cheetah with v5's warm-started solver (copy by copy)."""


def sample_tasks(env_id: str, n: int, seed: int = 0) -> list[dict]:
    env = gymnasium.make(env_id)
    env.reset(seed=seed)
    return require_task_family(env).sample_tasks(n)


def make_batched(env_id: str, **kwargs: Any) -> Any:
    return BATCHED[env_id].from_env(gymnasium.make(env_id, max_episode_steps=HORIZON, **kwargs))


def random_actions(env_id: str, n: int, scale: float = 1.5, seed: int = 0) -> np.ndarray:
    """``[HORIZON, n, act_dim]`` float32 actions up to ``scale`` times the bounds (the excess is
    clipped; large actions make the ant and the humanoid fall or flip, so episodes end early)."""
    space = gymnasium.make(env_id).action_space
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-scale, scale, (HORIZON, n, *space.shape)) * space.high
    return actions.astype(np.float32)


Hook = Callable[[int, np.ndarray], None]
"""Called before step ``t`` with ``(t, qvel)``: the velocities of the copy (or env) it may
corrupt, a writable view into that copy's simulation state."""


def copy_velocities(batched: Any, copy: int) -> np.ndarray:
    """The writable ``qvel`` of one copy, whichever way the twin simulates its copies."""
    copies = batched.copies
    if isinstance(copies, RolloutStates):
        return copies.arrays["qvel"][copy]
    return copies.datas[copy].qvel


def run_batched(
    batched: Any,
    tasks: list[dict],
    seeds: list[int],
    actions: np.ndarray,
    hook: tuple[int, Hook] | None = None,
) -> dict[str, np.ndarray]:
    """Every step of the batched copies to the horizon: observations (reset's first), rewards,
    flags, and ``active`` before each step; ``hook = (copy, f)`` runs ``f`` on that copy."""
    record: dict[str, list] = {"obs": [batched.reset_tasks(tasks, seeds)], "active": []}
    record.update(reward=[], terminated=[], truncated=[])
    while (t := batched.elapsed_steps) < batched.horizon:
        if hook is not None:
            hook[1](t, copy_velocities(batched, hook[0]))
        record["active"].append(batched.active)
        obs, reward, terminated, truncated = batched.step(actions[t])
        record["obs"].append(obs)
        record["reward"].append(reward)
        record["terminated"].append(terminated)
        record["truncated"].append(truncated)
    assert not batched.active.any()
    return {name: np.array(values) for name, values in record.items()}


def run_single(
    env_id: str,
    task: dict,
    seed: int,
    actions: np.ndarray,
    hook: Hook | None = None,
    **kwargs: Any,
) -> dict[str, list]:
    """One episode of the Gymnasium env (``TimeLimit`` included) under ``actions``."""
    env = gymnasium.make(env_id, max_episode_steps=HORIZON, **kwargs)
    require_task_family(env).set_task(task)
    observation, _ = env.reset(seed=seed)
    record: dict[str, list] = {"obs": [observation], "reward": [], "terminated": []}
    record.update(truncated=[], info=[])
    for t, action in enumerate(actions):
        if hook is not None:
            hook(t, env.unwrapped.data.qvel)
        observation, reward, terminated, truncated, info = env.step(action)
        record["obs"].append(observation)
        record["reward"].append(reward)
        record["terminated"].append(terminated)
        record["truncated"].append(truncated)
        record["info"].append(info)
        if terminated or truncated:
            break
    return record


def assert_copy_equals_single(batched: dict, copy: int, single: dict) -> None:
    """Copy ``copy`` equals the single env bit for bit up to its end, and is frozen after it."""
    length = len(single["reward"])
    np.testing.assert_array_equal(batched["active"][:length, copy], True)
    np.testing.assert_array_equal(batched["active"][length:, copy], False)
    np.testing.assert_array_equal(batched["obs"][: length + 1, copy], np.array(single["obs"]))
    np.testing.assert_array_equal(batched["reward"][:length, copy], single["reward"])
    np.testing.assert_array_equal(batched["terminated"][:length, copy], single["terminated"])
    np.testing.assert_array_equal(batched["truncated"][:length, copy], single["truncated"])
    # After its end a copy keeps its last observation and flags and gets reward 0.
    after = slice(length + 1, None)
    np.testing.assert_array_equal(
        batched["obs"][after, copy],
        np.broadcast_to(single["obs"][-1], batched["obs"][after, copy].shape),
    )
    np.testing.assert_array_equal(batched["reward"][length:, copy], 0.0)
    np.testing.assert_array_equal(batched["terminated"][length:, copy], single["terminated"][-1])
    np.testing.assert_array_equal(batched["truncated"][length:, copy], single["truncated"][-1])


@pytest.mark.parametrize(("env_id", "kwargs"), CASES)
def test_every_copy_reproduces_the_gymnasium_env_exactly(env_id: str, kwargs: dict) -> None:
    tasks = sample_tasks(env_id, 3)
    copies = [tasks[0], tasks[1], tasks[2], tasks[0], tasks[1]]  # repeated tasks, other seeds
    seeds = [7, 8, 9, 10, 2**32 - 1]
    actions = random_actions(env_id, len(copies))
    batched = run_batched(make_batched(env_id, **kwargs), copies, seeds, actions)
    lengths = []
    for copy, (task, seed) in enumerate(zip(copies, seeds, strict=True)):
        single = run_single(env_id, task, seed, actions[:, copy], **kwargs)
        assert_copy_equals_single(batched, copy, single)
        lengths.append(len(single["reward"]))
    # The reset noise differs between seeds, so every copy starts elsewhere.
    assert len({row.tobytes() for row in batched["obs"][0]}) == len(copies)
    if "Cheetah" in env_id:
        assert lengths == [HORIZON] * len(copies)  # the cheetah never terminates on its own
    else:  # some episodes end early, others run into the time limit (or all fall, humanoid)
        assert min(lengths) < HORIZON
        assert "Humanoid" in env_id or max(lengths) == HORIZON


def test_copies_are_stepped_by_one_rollout_call_only_where_a_step_depends_on_the_state_alone() -> (
    None
):
    cheetah = make_batched("rlmaml/HalfCheetahVel-v0")
    assert isinstance(cheetah.copies, RolloutStates)
    assert cheetah.model.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_WARMSTART
    warm = make_batched("rlmaml/HalfCheetahVel-v0", solver_warmstart=True)
    assert isinstance(warm.copies, PerCopyData)
    with pytest.raises(ValueError, match="warm start"):
        RolloutStates(warm.model, frame_skip=1)
    # The ant reads contact forces and positions computed inside the step: copy by copy.
    assert isinstance(make_batched("rlmaml/AntVel-v0").copies, PerCopyData)


def test_resets_reuse_the_copies_for_any_count_and_do_not_depend_on_the_past() -> None:
    env_id = "rlmaml/AntGoal-v0"
    tasks = sample_tasks(env_id, 4)
    seeds = [3, 4, 5, 6]
    actions = random_actions(env_id, 4)
    fresh = run_batched(make_batched(env_id), tasks, seeds, actions)
    reused = make_batched(env_id)
    run_batched(reused, tasks[:2], seeds[:2], actions[:, :2])
    run_batched(reused, tasks[:1] * 6, list(range(6)), random_actions(env_id, 6, seed=1))
    again = run_batched(reused, tasks, seeds, actions)
    for name in fresh:
        np.testing.assert_array_equal(again[name], fresh[name], err_msg=name)


def test_configuration_is_taken_from_the_single_env() -> None:
    env_id = "rlmaml/AntVel-v0"
    kwargs = {
        "healthy_reward": 0.5,
        "ctrl_cost_weight": 0.1,
        "healthy_z_range": (0.3, 0.9),
        "include_cfrc_ext_in_observation": False,
        "reset_noise_scale": 0.3,
        "clip_actions": False,
    }
    tasks = sample_tasks(env_id, 2)
    actions = random_actions(env_id, 2, scale=1.2)
    batched = run_batched(make_batched(env_id, **kwargs), tasks, [1, 2], actions)
    assert batched["obs"].shape[-1] == 27
    for copy in range(2):
        single = run_single(env_id, tasks[copy], copy + 1, actions[:, copy], **kwargs)
        assert_copy_equals_single(batched, copy, single)


@pytest.mark.parametrize(
    "config", ["halfcheetah_vel", "halfcheetah_dir", "ant_vel", "ant_dir", "ant_goal"]
)
def test_the_paper_configs_env_settings_are_reproduced(config: str) -> None:
    """The configs' env keywords (the paper's time step, the torso position observed)."""
    settings = load_config(RLConfig, EXPERIMENTS / f"{config}.yaml").env
    env_id, kwargs = settings.id, settings.kwargs
    assert kwargs["exclude_current_positions_from_observation"] is False
    tasks = sample_tasks(env_id, 2)
    actions = random_actions(env_id, 2)
    batched = run_batched(make_batched(env_id, **kwargs), tasks, [3, 4], actions)
    for copy in range(2):
        single = run_single(env_id, tasks[copy], copy + 3, actions[:, copy], **kwargs)
        assert_copy_equals_single(batched, copy, single)
        # the x position is the observation's first value and moves with the torso
        assert np.ptp(np.array(single["obs"])[:, 0]) > 0


# --- unstable simulations -----------------------------------------------------------------

WHEN = 4
"""The step at which the simulation of the victim copy is made unstable."""


def corrupt_qvel_nan(t: int, qvel: np.ndarray) -> None:
    if t == WHEN:
        qvel[:] = np.nan


def corrupt_qvel_huge(t: int, qvel: np.ndarray) -> None:
    if t == WHEN:
        qvel[:] = 1e12


DOOMED = 0.123456789
"""A first joint velocity that makes the patched simulator raise ``mujoco.FatalError``."""


def fatal_error_in(monkeypatch: pytest.MonkeyPatch) -> Hook:
    """A hook after which stepping the copy raises ``FatalError``, as an arena overflow would:
    ``mujoco.mj_step`` raises for a state whose first velocity is :data:`DOOMED`, and so does
    a ``mujoco.rollout`` call whose batch holds such a state (rollout runs in C, so it is
    patched as a whole; the twin then replays the step copy by copy with ``mj_step``)."""
    real_step = mujoco.mj_step
    real_rollout = RolloutStates.__init__

    def mj_step(model: Any, data: Any, nstep: int = 1) -> None:
        if data.qvel[0] == DOOMED:
            raise mujoco.FatalError("simulated arena overflow")
        real_step(model, data, nstep)

    def init_with_failing_rollout(self: RolloutStates, model: Any, frame_skip: int) -> None:
        real_rollout(self, model, frame_skip)
        rollout = self._rollout.rollout

        def failing(models, datas, start, *args, **kwargs):  # noqa: ANN001, ANN202
            if (start[:, 1 + model.nq] == DOOMED).any():
                raise mujoco.FatalError("simulated arena overflow")
            return rollout(models, datas, start, *args, **kwargs)

        self._rollout = SimpleNamespace(rollout=failing)

    monkeypatch.setattr(mujoco, "mj_step", mj_step)
    monkeypatch.setattr(RolloutStates, "__init__", init_with_failing_rollout)

    def hook(t: int, qvel: np.ndarray) -> None:
        if t == WHEN:
            qvel[0] = DOOMED

    return hook


@pytest.mark.parametrize(("env_id", "kwargs"), CASES)
@pytest.mark.parametrize(
    ("kind", "message"),
    [("qvel_nan", "QVEL"), ("qvel_huge", "Q"), ("nan_action", "CTRL"), ("fatal", "FatalError")],
)
def test_an_unstable_copy_ends_cleanly_as_the_single_env_does(
    env_id: str, kwargs: dict, kind: str, message: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo's default handler would write MUJOCO_LOG.TXT here
    tasks = sample_tasks(env_id, 3)
    seeds = [1, 2, 3]
    victim = 1
    actions = random_actions(env_id, 3, scale=0.5)
    hooks: dict[str, Hook] = {"qvel_nan": corrupt_qvel_nan, "qvel_huge": corrupt_qvel_huge}
    if kind == "nan_action":
        actions[WHEN, victim] = np.nan
    if kind == "fatal":
        hooks["fatal"] = fatal_error_in(monkeypatch)
    hook = hooks.get(kind)
    batched = make_batched(env_id, **kwargs)
    record = run_batched(batched, tasks, seeds, actions, None if hook is None else (victim, hook))
    np.testing.assert_array_equal(batched.unstable, [False, True, False])
    assert any(message in text for text in batched.mujoco_warnings), batched.mujoco_warnings
    for copy in range(3):
        single = run_single(
            env_id,
            tasks[copy],
            seeds[copy],
            actions[:, copy],
            hook if copy == victim else None,
            **kwargs,
        )
        assert_copy_equals_single(record, copy, single)
        unstable = [info["unstable"] for info in single["info"]]
        assert unstable == ([False] * WHEN + [True] if copy == victim else [False] * len(unstable))
    # The unstable step: reward 0, terminated, the previous observation kept.
    assert record["reward"][WHEN, victim] == 0.0 and record["terminated"][WHEN, victim]
    np.testing.assert_array_equal(record["obs"][WHEN + 1, victim], record["obs"][WHEN, victim])
    assert list(tmp_path.iterdir()) == []


# --- construction and errors --------------------------------------------------------------


def test_batched_env_for_returns_each_familys_twin() -> None:
    for env_id, batched_type in BATCHED.items():
        assert batched_env_for(env_id) is batched_type


def test_a_twin_accepts_only_the_single_envs_it_reproduces() -> None:
    with pytest.raises(TypeError, match="BatchedAnt twins AntVelEnv, AntDirEnv, got AntGoalEnv"):
        BatchedAnt.from_env(gymnasium.make("rlmaml/AntGoal-v0"))
    with pytest.raises(TypeError, match="got HalfCheetahVelEnv"):
        BatchedHumanoidDir.from_env(gymnasium.make("rlmaml/HalfCheetahVel-v0"))
    unlimited = gymnasium.make("rlmaml/AntVel-v0", max_episode_steps=None).unwrapped
    with pytest.raises(ValueError, match="no time limit"):
        BatchedAnt.from_env(unlimited)
    assert BatchedAnt(unlimited, horizon=3).horizon == 3


def test_bad_resets_and_steps_raise() -> None:
    batched = make_batched("rlmaml/HalfCheetahDir-v0")
    with pytest.raises(ValueError, match="direction"):
        batched.reset_tasks([{"direction": 0}], [0])
    with pytest.raises(ValueError, match="one reset seed per task"):
        batched.reset_tasks([{"direction": 1}], [0, 1])
    with pytest.raises(ValueError, match="at least one task"):
        batched.reset_tasks([], [])
    batched.reset_tasks([{"direction": 1}, {"direction": -1}], [0, 1])
    with pytest.raises(ValueError, match=r"shape \(2, 6\)"):
        batched.step(np.zeros((3, 6)))
    for _ in range(HORIZON):
        *_, truncated = batched.step(np.zeros((2, 6)))
    assert truncated.all()
    with pytest.raises(RuntimeError, match="horizon"):
        batched.step(np.zeros((2, 6)))
