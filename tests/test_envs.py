"""Tests of the task families: Gymnasium compliance, the task protocol, Navigation2D dynamics,
the batched Navigation2D against the single env, and registration."""

from __future__ import annotations

import importlib
import json
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs import TASK_FAMILY_IDS, TaskFamily, batched_env_for, require_task_family
from envs.navigation import BatchedNavigation2D, Navigation2DEnv

NAV_ID = "rlmaml/Navigation2D-v0"


def make_nav(goal: list[float] | None = None) -> gymnasium.Env:
    """``rlmaml/Navigation2D-v0`` through ``gymnasium.make``, aiming at ``goal`` if given."""
    env = gymnasium.make(NAV_ID)
    if goal is not None:
        require_task_family(env).set_task({"goal": goal})
    return env


@pytest.mark.parametrize("env_id", TASK_FAMILY_IDS)
def test_check_env_passes_without_warnings(env_id: str) -> None:
    env = gymnasium.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Positions and velocities are unbounded by nature; Box(-inf, inf) says so honestly.
        warnings.filterwarnings("ignore", message=r".*observation space (min|max)imum value is")
        check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", TASK_FAMILY_IDS)
def test_every_family_follows_the_protocol_with_json_tasks(env_id: str) -> None:
    env = gymnasium.make(env_id)
    family = require_task_family(env)
    assert family is env.unwrapped and isinstance(family, TaskFamily)
    env.reset(seed=0)
    tasks = family.sample_tasks(3)
    assert len(tasks) == 3 and json.loads(json.dumps(tasks)) == tasks
    family.set_task(tasks[1])
    assert family.task == tasks[1]


@pytest.mark.parametrize("env_id", TASK_FAMILY_IDS)
def test_sample_tasks_is_seeded_by_reset(env_id: str) -> None:
    def tasks_after_reset(seed: int) -> list[dict]:
        env = gymnasium.make(env_id)
        env.reset(seed=seed)
        return require_task_family(env).sample_tasks(5)

    assert tasks_after_reset(7) == tasks_after_reset(7)
    assert tasks_after_reset(7) != tasks_after_reset(8)


def test_navigation_goals_cover_the_documented_range() -> None:
    env = Navigation2DEnv()
    env.reset(seed=0)
    goals = np.array([task["goal"] for task in env.sample_tasks(4000)])
    assert goals.shape == (4000, 2)
    assert goals.min() >= -0.5 and goals.max() <= 0.5
    assert np.all(goals.min(axis=0) < -0.49) and np.all(goals.max(axis=0) > 0.49)
    assert np.allclose(goals.mean(axis=0), 0.0, atol=0.02)

    wide = Navigation2DEnv(goal_low=1.0, goal_high=3.0)
    wide.reset(seed=0)
    wide_goals = np.array([task["goal"] for task in wide.sample_tasks(1000)])
    assert wide_goals.min() >= 1.0 and wide_goals.max() <= 3.0


def test_first_reset_draws_a_seeded_task_and_set_task_keeps_it() -> None:
    first, second = Navigation2DEnv(), Navigation2DEnv()
    assert first.task is None
    first.reset(seed=3)
    second.reset(seed=3)
    assert first.task is not None and first.task == second.task
    first.set_task({"goal": [0.1, 0.2]})
    first.reset(seed=4)
    assert first.task == {"goal": [0.1, 0.2]}


def test_reward_is_minus_distance_after_the_step_and_follows_the_task() -> None:
    env = make_nav([0.5, 0.0])
    env.reset(seed=0)
    obs, reward, *_ = env.step(np.array([0.1, 0.0], dtype=np.float32))
    assert obs.dtype == np.float32 and np.allclose(obs, [0.1, 0.0])
    assert reward == pytest.approx(-0.4)

    require_task_family(env).set_task({"goal": [0.1, 0.3]})
    env.reset()
    _, reward, *_ = env.step(np.array([0.1, 0.0], dtype=np.float32))
    assert reward == pytest.approx(-0.3)


def test_actions_are_clipped_to_the_box() -> None:
    env = make_nav([0.5, 0.5])
    env.reset(seed=0)
    obs, *_ = env.step(np.array([5.0, -5.0], dtype=np.float32))
    assert np.array_equal(obs, np.array([0.1, -0.1], dtype=np.float32))


def test_episode_terminates_at_the_goal() -> None:
    env = make_nav([0.3, -0.2])
    env.reset(seed=0)
    flags = []
    for action in ([0.1, -0.1], [0.1, -0.1], [0.1, 0.0]):
        _, _, terminated, truncated, _ = env.step(np.array(action, dtype=np.float32))
        flags.append((terminated, truncated))
    assert flags == [(False, False), (False, False), (True, False)]


def test_make_truncates_after_100_steps() -> None:
    env = make_nav([0.5, 0.5])
    env.reset(seed=0)
    zero = np.zeros(2, dtype=np.float32)
    for _ in range(99):
        assert env.step(zero)[2:4] == (False, False)
    assert env.step(zero)[2:4] == (False, True)


@pytest.mark.parametrize("task", [{"goal": [0.1]}, {"goal": [0.1, float("nan")]}, {"g": [0, 0]}])
def test_set_task_rejects_malformed_tasks(task: dict) -> None:
    with pytest.raises(ValueError, match="goal"):
        Navigation2DEnv().set_task(task)


def run_single(goal: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
    """One episode of ``gymnasium.make(NAV_ID)`` on ``goal`` until it ends."""
    env = make_nav(goal.tolist())
    obs, _ = env.reset(seed=0)
    observations, rewards, terminated, truncated = [obs], [], [], []
    for action in actions:
        obs, reward, term, trunc, _ = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        terminated.append(term)
        truncated.append(trunc)
        if term or trunc:
            break
    return {
        "obs": np.array(observations),
        "reward": np.array(rewards),
        "terminated": np.array(terminated),
        "truncated": np.array(truncated),
    }


def test_batched_and_single_navigation_agree_exactly() -> None:
    rng = np.random.default_rng(0)
    n, horizon = 8, 100
    actions = rng.normal(0.0, 0.08, size=(horizon, n, 2)).astype(np.float32)
    actions[:, 0] *= 10.0  # mostly outside the box: exercises clipping
    goals = rng.uniform(-0.5, 0.5, size=(n, 2))
    # Copies 1-3 aim at the point their random walk reaches at steps 5, 20 and 60, so they
    # terminate early (at the latest then, earlier if the walk passes by sooner).
    walk = np.cumsum(np.clip(actions, -0.1, 0.1), axis=0, dtype=np.float32)
    for copy, step in ((1, 5), (2, 20), (3, 60)):
        goals[copy] = walk[step - 1, copy]

    batched = BatchedNavigation2D.from_env(make_nav())
    batched_obs = [batched.reset(goals)]
    steps = []
    while batched.elapsed_steps < horizon:
        was_active = batched.active
        steps.append((was_active, *batched.step(actions[batched.elapsed_steps])))
        batched_obs.append(steps[-1][1])
    assert not batched.active.any()
    batched_obs = np.array(batched_obs)

    ends = []
    for copy in range(n):
        single = run_single(goals[copy], actions[:, copy])
        length = len(single["reward"])
        ends.append(length)
        np.testing.assert_array_equal(batched_obs[: length + 1, copy], single["obs"])
        for t, (was_active, _, reward, terminated, truncated) in enumerate(steps):
            assert was_active[copy] == (t < length)
            if t < length:
                assert reward[copy] == single["reward"][t]
                assert terminated[copy] == single["terminated"][t]
                assert truncated[copy] == single["truncated"][t]
            else:  # done copies stay done, frozen and unrewarded
                assert reward[copy] == 0.0
                assert (terminated[copy], truncated[copy]) == (
                    single["terminated"][-1],
                    single["truncated"][-1],
                )
        np.testing.assert_array_equal(
            batched_obs[length:, copy], single["obs"][-1:].repeat(horizon + 1 - length, axis=0)
        )
    assert ends[0] == horizon and ends[1] <= 5 and ends[2] <= 20 and ends[3] <= 60


def test_batched_rejects_bad_shapes_and_steps_past_the_horizon() -> None:
    batched = BatchedNavigation2D(horizon=2)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        batched.reset(np.zeros(2))
    batched.reset(np.full((3, 2), 0.4))
    with pytest.raises(ValueError, match="actions must have shape"):
        batched.step(np.zeros((2, 2)))
    batched.step(np.zeros((3, 2)))
    *_, truncated = batched.step(np.zeros((3, 2)))
    assert truncated.all()
    with pytest.raises(RuntimeError, match="reset"):
        batched.step(np.zeros((3, 2)))


def test_goals_from_tasks_matches_sampled_tasks() -> None:
    env = Navigation2DEnv()
    env.reset(seed=1)
    tasks = env.sample_tasks(4)
    goals = BatchedNavigation2D.goals_from_tasks(tasks)
    assert goals.shape == (4, 2) and goals.tolist() == [task["goal"] for task in tasks]


def test_require_task_family_names_what_is_missing() -> None:
    with pytest.raises(TypeError) as excinfo:
        require_task_family(gymnasium.make("CartPole-v1"))
    message = str(excinfo.value)
    for part in ("CartPole-v1", "CartPoleEnv", "sample_tasks()", "set_task()", "task"):
        assert part in message

    class OnlySamples(gymnasium.Env):
        def sample_tasks(self, n: int) -> list[dict]:
            return [{}] * n

    with pytest.raises(TypeError, match=r"missing set_task\(\), task\.") as excinfo:
        require_task_family(OnlySamples())
    assert "sample_tasks" not in str(excinfo.value).split("missing")[1].split(".")[0]


def test_registration_is_idempotent_and_lists_every_id() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        envs.register_task_families()
        importlib.reload(envs)
    assert envs.TASK_FAMILY_IDS == TASK_FAMILY_IDS
    for env_id in TASK_FAMILY_IDS:
        assert env_id.startswith("rlmaml/") and env_id in gymnasium.registry
    assert gymnasium.spec(NAV_ID).max_episode_steps == 100


def test_batched_env_for() -> None:
    assert batched_env_for(NAV_ID) is BatchedNavigation2D
    assert batched_env_for("CartPole-v1") is None
    with pytest.raises(ValueError, match="not a registered"):
        batched_env_for("rlmaml/Navigation2d-v0")


def test_action_scale_maps_unit_actions_to_the_displacement_box() -> None:
    """``action_scale=0.1`` is rllab's ``normalize``: unit actions, displacements of 0.1."""
    env = gymnasium.make("rlmaml/Navigation2D-v0", action_scale=0.1)
    assert env.action_space.low.tolist() == [-1.0, -1.0]
    env.unwrapped.set_task({"goal": [0.4, -0.4]})
    env.reset(seed=0)
    obs, *_ = env.step(np.array([0.5, -3.0]))
    np.testing.assert_allclose(obs, [0.05, -0.1], rtol=1e-6)
    batched = BatchedNavigation2D.from_env(env)
    batched.reset(np.array([[0.4, -0.4]]))
    batched_obs, *_ = batched.step(np.array([[0.5, -3.0]]))
    np.testing.assert_array_equal(batched_obs[0], obs)
