"""Tests of the MuJoCo locomotion task families: Gymnasium compliance, rewards recomputed from the
simulator state, task sampling, task switching, termination and unstable simulations."""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Callable

import gymnasium
import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")
pytest.importorskip(
    "gymnasium.envs.mujoco", reason="Gymnasium's MuJoCo envs need gymnasium[mujoco] (imageio)"
)

from gymnasium.utils.env_checker import check_env  # noqa: E402

from envs import TASK_FAMILY_IDS, require_task_family  # noqa: E402
from envs.ant import AntGoalEnv, AntVelEnv  # noqa: E402
from envs.cheetah import HalfCheetahDirEnv, HalfCheetahVelEnv  # noqa: E402
from envs.humanoid import HumanoidDirEnv  # noqa: E402

LOCOMOTION_IDS = (
    "rlmaml/HalfCheetahVel-v0",
    "rlmaml/HalfCheetahDir-v0",
    "rlmaml/AntVel-v0",
    "rlmaml/AntDir-v0",
    "rlmaml/AntGoal-v0",
    "rlmaml/HumanoidDir-v0",
)


def make(env_id: str, task: dict | None = None, **kwargs) -> gymnasium.Env:
    """The unwrapped env of ``env_id`` (set to ``task`` if given), reset with seed 0."""
    env = gymnasium.make(env_id, **kwargs).unwrapped
    if task is not None:
        env.set_task(task)
    env.reset(seed=0)
    return env


def test_every_locomotion_id_is_registered_with_a_200_step_horizon() -> None:
    for env_id in LOCOMOTION_IDS:
        assert env_id in TASK_FAMILY_IDS
        assert gymnasium.spec(env_id).max_episode_steps == 200


@pytest.mark.parametrize("env_id", LOCOMOTION_IDS)
def test_check_env_passes(env_id: str) -> None:
    env = gymnasium.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=r".*observation space (min|max)imum value is")
        check_env(env.unwrapped, skip_render_check=True)


# --- rewards recomputed from the simulator state ------------------------------------------


def torso_xy(env: gymnasium.Env) -> np.ndarray:
    return env.data.body("torso").xpos[:2].copy()


def centre_of_mass_xy(env: gymnasium.Env) -> np.ndarray:
    mass = env.model.body_mass
    return (mass @ env.data.xipos / mass.sum())[:2]


def ant_costs(env: gymnasium.Env, action: np.ndarray) -> float:
    """The paper's Ant terms shared by the three Ant tasks, read from the simulator."""
    contact = np.square(np.clip(env.data.cfrc_ext, -1.0, 1.0)).sum()
    return 0.05 - 0.005 * np.square(action).sum() - 5e-4 * contact


def ant_healthy(env: gymnasium.Env) -> bool:
    return 0.2 <= env.data.qpos[2] <= 1.0


Expected = Callable[[gymnasium.Env, np.ndarray, np.ndarray, np.ndarray, dict], float]
"""Expected reward from (env after the step, position before, position after, clipped action,
task)."""

REWARD_CASES: dict[str, tuple[dict, Callable[[gymnasium.Env], np.ndarray], Expected]] = {
    "rlmaml/HalfCheetahVel-v0": (
        {"velocity": 1.3},
        lambda env: env.data.qpos[:1].copy(),
        lambda env, x0, x1, a, task: (
            -abs((x1[0] - x0[0]) / (0.01 * 5) - task["velocity"]) - 0.05 * np.square(a).sum()
        ),
    ),
    "rlmaml/HalfCheetahDir-v0": (
        {"direction": -1},
        lambda env: env.data.qpos[:1].copy(),
        lambda env, x0, x1, a, task: (
            task["direction"] * (x1[0] - x0[0]) / (0.01 * 5) - 0.05 * np.square(a).sum()
        ),
    ),
    "rlmaml/AntVel-v0": (
        {"velocity": 2.1},
        torso_xy,
        lambda env, x0, x1, a, task: (
            -abs((x1[0] - x0[0]) / (0.01 * 5) - task["velocity"])
            + 1.0 * ant_healthy(env)
            + ant_costs(env, a)
        ),
    ),
    "rlmaml/AntDir-v0": (
        {"direction": 1},
        torso_xy,
        lambda env, x0, x1, a, task: (
            task["direction"] * (x1[0] - x0[0]) / (0.01 * 5) + ant_costs(env, a)
        ),
    ),
    "rlmaml/AntGoal-v0": (
        {"goal": [1.5, -2.0]},
        torso_xy,
        lambda env, x0, x1, a, task: (
            -np.abs(x1 - np.array(task["goal"])).sum() + 4.0 + ant_costs(env, a)
        ),
    ),
    "rlmaml/HumanoidDir-v0": (
        {"direction": -1},
        centre_of_mass_xy,
        lambda env, x0, x1, a, task: (
            1.25 * task["direction"] * (x1[0] - x0[0]) / (0.003 * 5)
            + 5.0 * (1.0 < env.data.qpos[2] < 2.0)
            - 0.1 * np.square(a).sum()
            - min(5e-7 * np.square(env.data.cfrc_ext).sum(), 10.0)
        ),
    ),
}


@pytest.mark.parametrize("env_id", LOCOMOTION_IDS)
def test_reward_matches_the_formula_recomputed_from_the_simulator(env_id: str) -> None:
    task, position, expected = REWARD_CASES[env_id]
    env = make(env_id, task)
    space = env.action_space
    rng = np.random.default_rng(1)
    for _ in range(6):
        # Up to 1.5x the bounds: the control cost must charge the clipped action.
        action = (rng.uniform(-1.5, 1.5, space.shape) * space.high).astype(np.float32)
        clipped = np.clip(action.astype(np.float64), space.low, space.high)
        before = position(env)
        _, reward, terminated, truncated, info = env.step(action)
        after = position(env)
        assert reward == pytest.approx(expected(env, before, after, clipped, task), rel=1e-9)
        terms = {key: value for key, value in info.items() if key.startswith("reward_")}
        assert set(terms) == set(env._reward_keys)
        assert sum(terms.values()) == pytest.approx(reward, rel=1e-12, abs=1e-12)
        assert info["task"] == env.task and info["unstable"] is False
        assert not truncated
        if terminated:
            break


def test_velocity_is_the_torso_displacement_over_dt() -> None:
    env = make("rlmaml/AntDir-v0", {"direction": 1})
    before = env.data.body("torso").xpos.copy()
    _, _, _, _, info = env.step(np.full(8, 0.5, dtype=np.float32))
    after = env.data.body("torso").xpos
    assert env.dt == pytest.approx(0.05)
    assert info["x_velocity"] == pytest.approx((after[0] - before[0]) / 0.05)
    assert info["reward_forward"] == pytest.approx(info["x_velocity"])


def test_clip_actions_false_charges_the_raw_action() -> None:
    action = np.full(6, 2.0, dtype=np.float32)
    clipped = make("rlmaml/HalfCheetahDir-v0", {"direction": 1})
    raw = make("rlmaml/HalfCheetahDir-v0", {"direction": 1}, clip_actions=False)
    obs_clipped, _, _, _, info_clipped = clipped.step(action)
    obs_raw, _, _, _, info_raw = raw.step(action)
    np.testing.assert_array_equal(obs_clipped, obs_raw)  # the simulator clamps either way
    assert info_clipped["reward_ctrl"] == pytest.approx(-0.05 * 6 * 1.0)
    assert info_raw["reward_ctrl"] == pytest.approx(-0.05 * 6 * 4.0)


# --- tasks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env_id", "low", "high"),
    [("rlmaml/HalfCheetahVel-v0", 0.0, 2.0), ("rlmaml/AntVel-v0", 0.0, 3.0)],
)
def test_velocities_cover_the_documented_range(env_id: str, low: float, high: float) -> None:
    env = make(env_id)
    velocities = np.array([task["velocity"] for task in env.sample_tasks(2000)])
    assert velocities.min() >= low and velocities.max() <= high
    span = high - low
    assert velocities.min() < low + 0.01 * span and velocities.max() > high - 0.01 * span
    assert velocities.mean() == pytest.approx((low + high) / 2, abs=0.03 * span)


@pytest.mark.parametrize(
    "env_id", ["rlmaml/HalfCheetahDir-v0", "rlmaml/AntDir-v0", "rlmaml/HumanoidDir-v0"]
)
def test_directions_are_both_signs_with_equal_odds(env_id: str) -> None:
    env = make(env_id)
    directions = np.array([task["direction"] for task in env.sample_tasks(2000)])
    assert set(directions.tolist()) == {-1.0, 1.0}
    assert np.mean(directions == 1.0) == pytest.approx(0.5, abs=0.04)


def test_goals_cover_the_documented_square() -> None:
    env = make("rlmaml/AntGoal-v0")
    goals = np.array([task["goal"] for task in env.sample_tasks(2000)])
    assert goals.shape == (2000, 2)
    assert goals.min() >= -3.0 and goals.max() <= 3.0
    assert np.all(goals.min(axis=0) < -2.95) and np.all(goals.max(axis=0) > 2.95)
    narrow = AntGoalEnv(goal_low=0.5, goal_high=1.0)
    narrow.reset(seed=0)
    narrow_goals = np.array([task["goal"] for task in narrow.sample_tasks(100)])
    assert narrow_goals.min() >= 0.5 and narrow_goals.max() <= 1.0


@pytest.mark.parametrize("env_id", LOCOMOTION_IDS)
def test_tasks_and_first_episode_are_reproducible_under_reset_seed(env_id: str) -> None:
    def run(seed: int) -> tuple[list[dict], dict, np.ndarray]:
        env = gymnasium.make(env_id)
        family = require_task_family(env)
        observation, info = env.reset(seed=seed)
        assert info["task"] == family.task  # the first reset drew it
        return family.sample_tasks(20), family.task, observation

    tasks, first_task, observation = run(5)
    again = run(5)
    assert tasks == again[0] and first_task == again[1]
    np.testing.assert_array_equal(observation, again[2])
    assert json.loads(json.dumps(tasks)) == tasks
    assert run(6)[0] != tasks


@pytest.mark.parametrize(
    ("env_id", "first", "second"),
    [
        ("rlmaml/HalfCheetahVel-v0", {"velocity": 0.5}, {"velocity": 1.5}),
        ("rlmaml/HalfCheetahDir-v0", {"direction": 1}, {"direction": -1}),
        ("rlmaml/AntVel-v0", {"velocity": 0.2}, {"velocity": 2.8}),
        ("rlmaml/AntDir-v0", {"direction": 1}, {"direction": -1}),
        ("rlmaml/AntGoal-v0", {"goal": [2.0, 2.0]}, {"goal": [-2.0, 0.5]}),
        ("rlmaml/HumanoidDir-v0", {"direction": 1}, {"direction": -1}),
    ],
)
def test_set_task_changes_the_reward_and_not_the_dynamics(
    env_id: str, first: dict, second: dict
) -> None:
    actions = np.random.default_rng(2).uniform(-1, 1, (4, *make(env_id).action_space.shape))
    runs = []
    for task in (first, second):
        env = make(env_id, task)
        assert env.task == task
        steps = [env.step(action.astype(np.float32)) for action in actions]
        runs.append(steps)
    for step_a, step_b in zip(*runs, strict=True):
        np.testing.assert_array_equal(step_a[0], step_b[0])
        assert step_a[1] != step_b[1]
        assert step_a[4]["task"] == first and step_b[4]["task"] == second
    if "direction" in first:  # flipping the direction flips the forward term exactly
        for step_a, step_b in zip(*runs, strict=True):
            assert step_a[4]["reward_forward"] == -step_b[4]["reward_forward"]


def test_set_task_keeps_the_task_across_resets_and_rejects_malformed_ones() -> None:
    env = HalfCheetahVelEnv(task={"velocity": 3.5})  # outside the sampling range is allowed
    env.reset(seed=1)
    env.reset(seed=2)
    assert env.task == {"velocity": 3.5}
    for bad in ({"velocity": float("nan")}, {"velocity": "fast"}, {"direction": 1}, {}):
        with pytest.raises(ValueError, match="velocity"):
            env.set_task(bad)
    for bad in ({"direction": 0}, {"direction": True}, {"direction": 0.5}):
        with pytest.raises(ValueError, match="direction"):
            HalfCheetahDirEnv().set_task(bad)
    for bad in ({"goal": [1.0]}, {"goal": [1.0, float("inf")]}, {"goal": "here"}):
        with pytest.raises(ValueError, match="goal"):
            AntGoalEnv().set_task(bad)
    with pytest.raises(ValueError, match="low < high"):
        AntVelEnv(velocity_low=2.0, velocity_high=1.0)


def test_ant_goal_observes_its_position_and_the_others_do_not() -> None:
    goal = make("rlmaml/AntGoal-v0", {"goal": [1.0, 1.0]})
    observation, *_ = goal.step(np.zeros(8, dtype=np.float32))
    assert observation.shape == (107,)
    np.testing.assert_array_equal(observation[:2], goal.data.qpos[:2])
    assert make("rlmaml/AntVel-v0").observation_space.shape == (105,)
    assert make("rlmaml/HalfCheetahVel-v0").observation_space.shape == (17,)
    assert make("rlmaml/HumanoidDir-v0").observation_space.shape == (348,)


def test_envs_pickle_with_their_configuration() -> None:
    env = AntGoalEnv(goal_low=-1.0, goal_high=1.0, goal_reward_offset=2.0, task={"goal": [0, 1]})
    copy = pickle.loads(pickle.dumps(env))
    assert type(copy) is AntGoalEnv and copy.task == {"goal": [0.0, 1.0]}
    assert copy._task_distribution.low == -1.0 and copy._goal_reward_offset == 2.0
    assert copy._ctrl_cost_weight == 0.005


# --- termination and unstable simulations -------------------------------------------------


@pytest.mark.parametrize(
    ("env_id", "height"),
    [("rlmaml/AntVel-v0", 1.2), ("rlmaml/AntGoal-v0", 1.5), ("rlmaml/HumanoidDir-v0", 0.6)],
)
def test_leaving_the_healthy_height_range_terminates(env_id: str, height: float) -> None:
    env = make(env_id)
    qpos = env.data.qpos.copy()
    qpos[2] = height
    env.set_state(qpos, np.zeros_like(env.data.qvel))
    _, _, terminated, truncated, info = env.step(np.zeros(env.action_space.shape))
    assert terminated and not truncated and info["unstable"] is False
    assert info["reward_survive"] == 0.0


def test_cheetah_never_terminates_on_its_own() -> None:
    env = make("rlmaml/HalfCheetahDir-v0")
    rng = np.random.default_rng(3)
    for _ in range(50):
        assert env.step(rng.uniform(-1, 1, 6))[2:4] == (False, False)


def corrupt_qvel_nan(env: gymnasium.Env) -> np.ndarray:
    env.data.qvel[:] = np.nan
    return np.zeros(env.action_space.shape)


def corrupt_qvel_huge(env: gymnasium.Env) -> np.ndarray:
    env.data.qvel[:] = 1e12
    return np.zeros(env.action_space.shape)


def nan_action(env: gymnasium.Env) -> np.ndarray:
    return np.full(env.action_space.shape, np.nan)


def fatal_error(env: gymnasium.Env) -> np.ndarray:
    def explode(*args: object) -> None:
        raise mujoco.FatalError("simulated arena overflow")

    env.do_simulation = explode
    return np.zeros(env.action_space.shape)


@pytest.mark.parametrize("env_id", LOCOMOTION_IDS)
@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (corrupt_qvel_nan, "QVEL"),
        (corrupt_qvel_huge, "Q"),
        (nan_action, "CTRL"),
        (fatal_error, "FatalError"),
    ],
)
def test_unstable_step_ends_the_episode_cleanly(
    env_id: str,
    corrupt: Callable[[gymnasium.Env], np.ndarray],
    message: str,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo's default handler would write MUJOCO_LOG.TXT here
    env = make(env_id)
    observation, *_ = env.step(np.zeros(env.action_space.shape))
    action = corrupt(env)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        next_observation, reward, terminated, truncated, info = env.step(action)
    assert (reward, terminated, truncated) == (0.0, True, False)
    assert info["unstable"] is True and info["task"] == env.task
    assert any(message in text for text in info["mujoco_warnings"]), info["mujoco_warnings"]
    assert all(info[key] == 0.0 for key in env._reward_keys)
    np.testing.assert_array_equal(next_observation, observation)
    assert next_observation is not observation
    assert list(tmp_path.iterdir()) == []
    if corrupt is not fatal_error:  # a reset recovers; the next step is an ordinary one
        env.reset(seed=1)
        _, _, _, _, info = env.step(np.zeros(env.action_space.shape))
        assert info["unstable"] is False


def test_huge_action_is_clipped_or_ends_the_episode_without_raising() -> None:
    huge = np.full(6, 1e200)
    clipped = make("rlmaml/HalfCheetahVel-v0", {"velocity": 1.0})
    _, reward, terminated, _, info = clipped.step(huge)
    assert np.isfinite(reward) and not terminated and not info["unstable"]
    assert info["reward_ctrl"] == pytest.approx(-0.05 * 6)

    raw = make("rlmaml/HalfCheetahVel-v0", {"velocity": 1.0}, clip_actions=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the overflowing cost must not warn (or raise) either
        _, reward, terminated, _, info = raw.step(huge)
    assert (reward, terminated, info["unstable"]) == (0.0, True, True)


def test_unstable_state_is_caught_even_without_a_mujoco_warning() -> None:
    env = make("rlmaml/HumanoidDir-v0")
    env.model.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_AUTORESET
    env.data.warning.number[:] = 0
    env.data.qvel[:] = np.nan
    env.do_simulation = lambda *args: None  # the state stays NaN, nothing is counted
    _, reward, terminated, _, info = env.step(np.zeros(17))
    assert (reward, terminated, info["unstable"]) == (0.0, True, True)
    assert "non-finite" in info["mujoco_warnings"][-1]


def test_step_before_reset_and_wrong_action_shape_raise() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        HumanoidDirEnv().step(np.zeros(17))
    env = make("rlmaml/HalfCheetahDir-v0")
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(5))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.float32(0.5))
