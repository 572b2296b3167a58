"""Tests of the sampler interface and the in-process VectorizedSampler: shapes and masks, seeding
and backend independence, per-task parameters, log-probabilities and Navigation2D rewards."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

import envs
from rlmaml.core.params import expand_params, module_params, stack_params
from rlmaml.rl.policies import CategoricalMLPPolicy, GaussianMLPPolicy, per_task_distribution
from rlmaml.rl.samplers import Sampler, VectorizedSampler, episode_seeds
from rlmaml.rl.step_budget import sample_step_budget
from rlmaml.rl.trajectories import Trajectories

NAV_ID = "rlmaml/Navigation2D-v0"
COUNTDOWN_ID = "rlmaml_test/Countdown-v0"
COUNTDOWN_HORIZON = 6


class CountdownEnv(gymnasium.Env[np.ndarray, Any]):
    """A task family whose episodes terminate after ``task["length"]`` steps.

    Observation: ``(steps taken, u)`` with ``u`` drawn from ``np_random`` at reset, so the
    observations reveal each episode's reset seed. Reward after step ``k`` (1-based) is ``k``.
    """

    def __init__(self, discrete: bool = False) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = (
            spaces.Discrete(3) if discrete else spaces.Box(-1.0, 1.0, (1,), np.float32)
        )
        self._length: int | None = None
        self._steps = 0
        self._u = 0.0

    def sample_tasks(self, n: int) -> list[dict]:
        return [{"length": int(k)} for k in self.np_random.integers(1, 10, size=n)]

    def set_task(self, task: dict) -> None:
        self._length = int(task["length"])

    @property
    def task(self) -> dict | None:
        return None if self._length is None else {"length": self._length}

    def _obs(self) -> np.ndarray:
        return np.array([self._steps, self._u], dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._steps = 0
        self._u = float(self.np_random.uniform())
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        assert self._length is not None and self._steps < self._length, "stepped after the end"
        self._steps += 1
        return self._obs(), float(self._steps), self._steps == self._length, False, {}


if COUNTDOWN_ID not in gymnasium.registry:
    gymnasium.register(COUNTDOWN_ID, entry_point=CountdownEnv, max_episode_steps=COUNTDOWN_HORIZON)


def make_policy(obs_dim: int = 2, act_dim: int = 2, seed: int = 0) -> GaussianMLPPolicy:
    torch.manual_seed(seed)
    return GaussianMLPPolicy(obs_dim, act_dim, hidden=(16, 16))


def detached(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in module_params(policy).items()}


def distinct_params(policy: torch.nn.Module, num_tasks: int) -> dict[str, torch.Tensor]:
    """A stack of ``num_tasks`` different parameter sets around the policy's own."""
    theta = detached(policy)
    return stack_params([{k: v + 0.05 * i for k, v in theta.items()} for i in range(num_tasks)])


def nav_tasks(n: int, seed: int = 0) -> list[dict]:
    return sample_tasks(NAV_ID, n, seed)


def sample_tasks(env_id: str, n: int, seed: int = 0) -> list[dict]:
    env = gymnasium.make(env_id)
    env.reset(seed=seed)
    return envs.require_task_family(env).sample_tasks(n)


def assert_identical(a: Trajectories, b: Trajectories) -> None:
    for name, x, y in zip(Trajectories._fields, a, b, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y), name


def test_navigation_shapes_dtypes_and_full_length_episodes() -> None:
    policy = make_policy()
    with VectorizedSampler(NAV_ID, policy) as sampler:
        assert isinstance(sampler, Sampler) and sampler.horizon == 100
        traj = sampler.sample(expand_params(detached(policy), 3), nav_tasks(3), 4, seed=0)
    assert traj.observations.shape == (3, 4, 100, 2) and traj.actions.shape == (3, 4, 100, 2)
    for name in ("observations", "actions", "rewards", "log_probs", "masks"):
        assert getattr(traj, name).dtype == torch.float32, name
    assert traj.lengths.dtype == torch.int64
    # Ordinary tensors (not inference tensors), so losses can differentiate through them.
    assert not any(field.is_inference() for field in traj)
    # A goal within 0.01 per axis is practically never hit by a random policy: no early ends.
    assert torch.equal(traj.lengths, torch.full((3, 4), 100))
    assert torch.equal(traj.observations[:, :, 0], torch.zeros(3, 4, 2))


@pytest.mark.parametrize("use_batched", [True, False])
def test_navigation_rewards_are_minus_the_distance_to_the_goal(use_batched: bool) -> None:
    policy = make_policy()
    tasks = nav_tasks(3)
    # A generous tolerance makes some episodes end early, so masking is exercised too.
    kwargs = {"goal_tolerance": 0.15}
    with VectorizedSampler(NAV_ID, policy, kwargs, use_batched=use_batched) as sampler:
        traj = sampler.sample(expand_params(detached(policy), 3), tasks, 5, seed=1)
    assert (traj.lengths < 100).any() and (traj.lengths == 100).any()
    goals = torch.tensor([task["goal"] for task in tasks]).view(3, 1, 1, 2)
    after_step = traj.observations + traj.actions.clamp(-0.1, 0.1)
    expected = -(after_step.double() - goals).norm(dim=-1)
    valid = traj.masks.bool()
    torch.testing.assert_close(traj.rewards[valid].double(), expected[valid])
    assert torch.all(traj.rewards[~valid] == 0)
    # The observation of step t + 1 is the position reached by step t.
    inner = valid[:, :, 1:]
    torch.testing.assert_close(traj.observations[:, :, 1:][inner], after_step[:, :, :-1][inner])


def test_masks_follow_task_dependent_termination() -> None:
    policy = make_policy(act_dim=1)
    tasks = [{"length": 2}, {"length": COUNTDOWN_HORIZON}, {"length": 9}]
    with VectorizedSampler(COUNTDOWN_ID, policy) as sampler:
        assert sampler.horizon == COUNTDOWN_HORIZON
        traj = sampler.sample(expand_params(detached(policy), 3), tasks, 2, seed=0)
    assert traj.lengths.tolist() == [[2, 2], [6, 6], [6, 6]]
    steps = torch.arange(COUNTDOWN_HORIZON, dtype=torch.float32)
    # Observations count the steps taken; rewards are 1, 2, ... up to the end, then 0.
    torch.testing.assert_close(traj.observations[1, :, :, 0], steps.expand(2, -1))
    torch.testing.assert_close(traj.rewards, (steps + 1) * traj.masks)
    assert torch.equal(traj.masks[0, 0], torch.tensor([1.0, 1, 0, 0, 0, 0]))


def test_episode_reset_seeds_depend_only_on_seed_task_and_episode() -> None:
    policy = make_policy(act_dim=1)
    tasks = [{"length": 3}, {"length": 3}]
    with VectorizedSampler(COUNTDOWN_ID, policy) as sampler:

        def reset_draws(episodes: int, seed: int) -> torch.Tensor:
            params = expand_params(detached(policy), 2)
            return sampler.sample(params, tasks, episodes, seed).observations[:, :, 0, 1]

        u = reset_draws(3, seed=5)
        assert len(set(u.flatten().tolist())) == 6
        assert torch.equal(reset_draws(2, seed=5), u[:, :2])
        assert not torch.equal(reset_draws(3, seed=6), u)
    seeds = episode_seeds(5, 2, 3)
    assert seeds.shape == (2, 3) and np.array_equal(episode_seeds(5, 2, 2), seeds[:, :2])


def test_same_seed_same_trajectories_and_different_seed_different() -> None:
    policy = make_policy()
    tasks = nav_tasks(2)
    params = distinct_params(policy, 2)
    with VectorizedSampler(NAV_ID, policy) as sampler:
        first = sampler.sample(params, tasks, 3, seed=11)
        assert_identical(first, sampler.sample(params, tasks, 3, seed=11))
        other = sampler.sample(params, tasks, 3, seed=12)
    assert not torch.equal(first.actions, other.actions)
    with VectorizedSampler(NAV_ID, policy) as fresh:
        assert_identical(first, fresh.sample(params, tasks, 3, seed=11))


def test_batched_and_gymnasium_paths_give_identical_trajectories() -> None:
    policy = make_policy()
    tasks = nav_tasks(3)
    params = distinct_params(policy, 3)
    kwargs = {"goal_tolerance": 0.15}
    with (
        VectorizedSampler(NAV_ID, policy, kwargs) as batched,
        VectorizedSampler(NAV_ID, policy, kwargs, use_batched=False) as generic,
    ):
        a = batched.sample(params, tasks, 4, seed=3)
        b = generic.sample(params, tasks, 4, seed=3)
        # The generic pool is reused (and grown) across phases.
        c = generic.sample(params, tasks, 2, seed=3)
        d = generic.sample(params, tasks, 4, seed=3)
    assert (a.lengths < 100).any()
    assert_identical(a, b)
    assert_identical(a, d)
    assert c.num_episodes == 2


@pytest.mark.parametrize("env_id", ["rlmaml/HalfCheetahVel-v0", "rlmaml/AntGoal-v0"])
def test_locomotion_batched_and_gymnasium_paths_give_identical_trajectories(env_id: str) -> None:
    pytest.importorskip("mujoco")
    assert envs.batched_env_for(env_id) is not None
    space = gymnasium.make(env_id)
    policy = make_policy(space.observation_space.shape[0], space.action_space.shape[0])
    tasks = sample_tasks(env_id, 3)
    params = distinct_params(policy, 3)
    kwargs = {"max_episode_steps": 25}  # short, to keep the test quick
    with (
        VectorizedSampler(env_id, policy, kwargs) as batched,
        VectorizedSampler(env_id, policy, kwargs, use_batched=False) as generic,
    ):
        a = batched.sample(params, tasks, 3, seed=5)
        b = generic.sample(params, tasks, 3, seed=5)
        # The copies are reused across phases of other sizes.
        batched.sample(expand_params(detached(policy), 2), tasks[:2], 4, seed=6)
        c = batched.sample(params, tasks, 3, seed=5)
    assert_identical(a, b)
    assert_identical(a, c)
    if "Ant" in env_id:  # some ants fall or flip: early ends and padding are compared too
        assert (a.lengths < 25).any() and (a.lengths == 25).any()


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("env_id", [COUNTDOWN_ID, NAV_ID])
def test_a_phase_sampled_in_task_slices_equals_the_phase_sampled_whole(
    env_id: str, shared: bool
) -> None:
    if env_id == COUNTDOWN_ID:
        policy = make_policy(act_dim=1)
        tasks = [{"length": k} for k in (2, 6, 9, 1, 4)]
        kwargs: dict[str, Any] = {}
    else:
        policy = make_policy()
        tasks = nav_tasks(5)
        kwargs = {"goal_tolerance": 0.15}  # some episodes end early: padding to compare
    params = expand_params(detached(policy), 5) if shared else distinct_params(policy, 5)
    episodes, seed = 4, 3
    with VectorizedSampler(env_id, policy, kwargs) as sampler:
        whole = sampler.sample(params, tasks, episodes, seed)
        parts = [
            sampler.sample(
                {name: t[start:stop] for name, t in params.items()},
                tasks[start:stop],
                episodes,
                seed,
                first_task=start,
                phase_tasks=len(tasks),
            )
            for start, stop in ((0, 2), (2, 5))
        ]
        # Sampled as a phase of its own, the second slice acts with other noise.
        alone = sampler.sample(
            {name: t[2:] for name, t in params.items()}, tasks[2:], episodes, seed
        )
    joined = Trajectories(*(torch.cat(fields) for fields in zip(*parts, strict=True)))
    assert_identical(joined, whole)  # real steps and padding alike
    assert not torch.equal(alone.actions, parts[1].actions)
    padding = whole.masks == 0
    assert padding.any() and (~padding).any()
    for name in ("observations", "actions", "rewards", "log_probs"):
        field = getattr(whole, name)
        assert torch.all(field[padding] == 0), name
        assert torch.all(getattr(parts[0], name)[padding[:2]] == 0), name


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize(
    ("env_id", "use_batched"),
    [(COUNTDOWN_ID, False), (NAV_ID, True), (NAV_ID, False), ("rlmaml/AntVel-v0", True)],
)
def test_episode_counts_run_the_first_episodes_of_the_full_phase_and_leave_the_rest_empty(
    env_id: str, use_batched: bool, shared: bool
) -> None:
    if env_id == COUNTDOWN_ID:
        policy = make_policy(act_dim=1)
        tasks = [{"length": k} for k in (2, 6, 9, 1)]
    else:
        env = gymnasium.make(env_id)
        policy = make_policy(env.observation_space.shape[0], env.action_space.shape[0])
        tasks = sample_tasks(env_id, 4)
    kwargs = {"max_episode_steps": 20} if env_id.startswith("rlmaml/Ant") else {}
    params = expand_params(detached(policy), 4) if shared else distinct_params(policy, 4)
    counts = [3, 1, 4, 2]
    with VectorizedSampler(env_id, policy, kwargs, use_batched=use_batched) as sampler:
        full = sampler.sample(params, tasks, 4, seed=11)
        some = sampler.sample(params, tasks, 4, seed=11, episode_counts=counts)
        every = sampler.sample(params, tasks, 4, seed=11, episode_counts=[4] * 4)
    assert_identical(every, full)
    for task, count in enumerate(counts):
        ran = Trajectories(*(field[task, :count] for field in some))
        assert_identical(ran, Trajectories(*(field[task, :count] for field in full)))
        assert torch.all(some.lengths[task, count:] == 0)
        for field in some:
            assert torch.all(field[task, count:] == 0)


def test_expand_params_marks_shared_parameters_with_stride_zero_for_any_task_count() -> None:
    theta = detached(make_policy())
    weight = theta["mean.0.weight"].clone().requires_grad_(True)
    for n in (1, 3):
        expanded = expand_params({**theta, "mean.0.weight": weight}, n)
        assert all(t.shape[0] == n and t.stride(0) == 0 for t in expanded.values())
        # Slices handed to a worker keep the marker; gradients reach the shared tensor.
        assert expanded["mean.0.bias"][n - 1 :].stride(0) == 0
        weight.grad = None
        expanded["mean.0.weight"].sum().backward()
        assert weight.grad is not None
        torch.testing.assert_close(weight.grad, torch.full_like(weight, float(n)))
    assert expand_params(theta, 0)["mean.0.bias"].shape[0] == 0
    with pytest.raises(ValueError, match="n_tasks"):
        expand_params(theta, -1)


def test_per_task_parameters_are_used() -> None:
    policy = make_policy()
    tasks = nav_tasks(1) * 2
    theta = detached(policy)
    shifted = dict(theta)
    shifted["mean.4.bias"] = theta["mean.4.bias"] + 100.0
    with VectorizedSampler(NAV_ID, policy) as sampler:
        shared = sampler.sample(expand_params(theta, 2), tasks, 3, seed=0)
        mixed = sampler.sample(stack_params([theta, shifted]), tasks, 3, seed=0)
    assert torch.all(mixed.actions[1] > 50) and torch.all(mixed.actions[0].abs() < 50)
    # Task 0 is unaffected by task 1's parameters (up to the rounding of other batch shapes).
    for x, y in zip(shared, mixed, strict=True):
        torch.testing.assert_close(x[0], y[0])


def test_shared_and_stacked_copies_of_one_parameter_set_agree() -> None:
    policy = make_policy()
    tasks = nav_tasks(4)
    theta = detached(policy)
    with VectorizedSampler(NAV_ID, policy) as sampler:
        expanded = sampler.sample(expand_params(theta, 4), tasks, 2, seed=4)
        stacked = sampler.sample(stack_params([theta] * 4), tasks, 2, seed=4)
    for x, y in zip(expanded, stacked, strict=True):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("shared", [True, False])
def test_log_probs_are_those_of_the_recorded_actions(shared: bool) -> None:
    policy = make_policy()
    params = expand_params(detached(policy), 2) if shared else distinct_params(policy, 2)
    with VectorizedSampler(NAV_ID, policy) as sampler:
        traj = sampler.sample(params, nav_tasks(2), 3, seed=2)
    with torch.no_grad():
        dist = per_task_distribution(policy, params, traj.observations.flatten(1, 2))
        expected = dist.log_prob(traj.actions.flatten(1, 2)).view_as(traj.log_probs)
    valid = traj.masks.bool()
    torch.testing.assert_close(traj.log_probs[valid], expected[valid])


def test_discrete_actions_with_a_categorical_policy() -> None:
    torch.manual_seed(0)
    policy = CategoricalMLPPolicy(obs_dim=2, n_actions=3, hidden=(8,))
    params = expand_params(detached(policy), 2)
    tasks = [{"length": 4}, {"length": 1}]
    with VectorizedSampler(COUNTDOWN_ID, policy, {"discrete": True}) as sampler:
        traj = sampler.sample(params, tasks, 5, seed=0)
    assert traj.discrete_actions and traj.actions.dtype == torch.int64
    assert traj.lengths.tolist() == [[4] * 5, [1] * 5]
    assert set(traj.actions.unique().tolist()) <= {0, 1, 2}
    with torch.no_grad():
        dist = per_task_distribution(policy, params, traj.observations.flatten(1, 2))
        expected = dist.log_prob(traj.actions.flatten(1, 2)).view_as(traj.log_probs)
    valid = traj.masks.bool()
    torch.testing.assert_close(traj.log_probs[valid], expected[valid])


def test_thread_count_is_restored_after_sampling() -> None:
    policy = make_policy()
    before = torch.get_num_threads()
    with VectorizedSampler(NAV_ID, policy, num_threads=1) as sampler:
        sampler.sample(expand_params(detached(policy), 1), nav_tasks(1), 1, seed=0)
    assert torch.get_num_threads() == before


def test_invalid_requests_raise_clear_errors() -> None:
    policy = make_policy()
    theta = detached(policy)
    tasks = nav_tasks(2)
    with VectorizedSampler(NAV_ID, policy) as sampler:
        with pytest.raises(ValueError, match="leading axis of len"):
            sampler.sample(expand_params(theta, 3), tasks, 1, seed=0)
        with pytest.raises(ValueError, match="leading axis of len"):
            sampler.sample(theta, tasks, 1, seed=0)
        with pytest.raises(ValueError, match="episodes_per_task"):
            sampler.sample(expand_params(theta, 2), tasks, 0, seed=0)
        with pytest.raises(ValueError, match="seed"):
            sampler.sample(expand_params(theta, 2), tasks, 1, seed=-1)
        with pytest.raises(ValueError, match="at least one task"):
            sampler.sample(expand_params(theta, 2), [], 1, seed=0)
        with pytest.raises(ValueError, match="first_task must be non-negative"):
            sampler.sample(expand_params(theta, 2), tasks, 1, seed=0, first_task=-1)
        with pytest.raises(ValueError, match="needs phase_tasks"):
            sampler.sample(expand_params(theta, 2), tasks, 1, seed=0, first_task=1)
        with pytest.raises(ValueError, match="do not fit in a phase of phase_tasks = 2"):
            sampler.sample(expand_params(theta, 2), tasks, 1, seed=0, first_task=1, phase_tasks=2)
        for counts in ([1], [0, 1], [1, 3], [1.0, 2.0]):
            with pytest.raises(ValueError, match="episode_counts must hold one integer from 1"):
                sampler.sample(expand_params(theta, 2), tasks, 2, seed=0, episode_counts=counts)
    with pytest.raises(ValueError, match="not a registered Gymnasium id"):
        VectorizedSampler("rlmaml/NoSuchEnv-v0", policy)
    with pytest.raises(ValueError, match="num_threads"):
        VectorizedSampler(NAV_ID, policy, num_threads=0)


# --- batches counted in time steps (rlmaml.rl.step_budget) ---------------------------------


class RecordingSampler:
    """A sampler that records the parameters and tasks of every request it passes on."""

    def __init__(self, sampler: VectorizedSampler) -> None:
        self.sampler = sampler
        self.requests: list[tuple[dict[str, torch.Tensor], list[dict], int, Any]] = []

    def sample(self, params, tasks, episodes_per_task, seed, *, episode_counts=None):
        self.requests.append((params, list(tasks), episodes_per_task, episode_counts))
        return self.sampler.sample(
            params, tasks, episodes_per_task, seed, episode_counts=episode_counts
        )


def test_a_step_budget_fills_every_task_with_whole_episodes() -> None:
    policy = make_policy(act_dim=1)
    # Horizon 6, 3 episodes: a budget of 18 steps per task.
    tasks = [{"length": 2}, {"length": 4}, {"length": 6}, {"length": 9}]
    with VectorizedSampler(COUNTDOWN_ID, policy) as inner:
        recorder = RecordingSampler(inner)
        traj = sample_step_budget(recorder, expand_params(detached(policy), 4), tasks, 3, seed=5)
    # 9 episodes of 2 steps; 5 of 4 (16 < 18, the fifth kept whole); 3 reaching the horizon.
    expected = [[2] * 9, [4] * 5, [6] * 3, [6] * 3]
    assert traj.num_episodes == 9
    for task, lengths in enumerate(expected):
        padded = lengths + [0] * (9 - len(lengths))
        assert traj.lengths[task].tolist() == padded, task
    # Returns 1 + 2 + ... + length per episode; empty episodes are not averaged in.
    torch.testing.assert_close(traj.mean_return(), torch.tensor([3.0, 10.0, 21.0, 21.0]))
    assert torch.all(traj.observations[1, 5:] == 0) and torch.all(traj.masks[1, 5:] == 0)
    # The second round asks only for the tasks still short of the budget, each for the
    # episodes its own shortfall needs at its mean length, plus one: 12 steps short at 2 per
    # episode, 6 short at 4. Shared parameters stay shared (stride 0: the sampler's
    # single-forward path).
    first, second = recorder.requests
    assert len(first[1]) == 4 and first[3] is None
    assert [t["length"] for t in second[1]] == [2, 4]
    assert second[2:] == (7, [7, 3])
    for params, tasks_, _, _ in recorder.requests:
        assert all(p.stride(0) == 0 and p.shape[0] == len(tasks_) for p in params.values())


def test_a_step_budget_with_per_task_params_gives_each_task_its_own() -> None:
    policy = make_policy(act_dim=1)
    tasks = [{"length": 3}, {"length": 6}, {"length": 1}]
    params = distinct_params(policy, 3)
    with VectorizedSampler(COUNTDOWN_ID, policy) as sampler:
        traj = sample_step_budget(sampler, params, tasks, 2, seed=1)
    for task in range(3):
        real = traj.masks[task].bool()
        dist = per_task_distribution(
            policy,
            {k: v[task : task + 1] for k, v in params.items()},
            traj.observations[task : task + 1],
        )
        torch.testing.assert_close(
            dist.log_prob(traj.actions[task : task + 1])[0][real], traj.log_probs[task][real]
        )


def test_a_step_budget_equals_one_phase_when_no_episode_ends_early() -> None:
    policy = make_policy()
    tasks = nav_tasks(3)
    params = expand_params(detached(policy), 3)
    with VectorizedSampler(NAV_ID, policy) as sampler:
        budgeted = sample_step_budget(sampler, params, tasks, 4, seed=0)
        plain = sampler.sample(params, tasks, 4, seed=0)
    assert torch.equal(plain.lengths, torch.full((3, 4), 100))
    assert_identical(budgeted, plain)
