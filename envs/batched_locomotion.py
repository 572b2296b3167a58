"""The shared core of the natively batched MuJoCo locomotion families.

:class:`BatchedLocomotion` runs N copies of one locomotion task env (``envs.cheetah``,
``envs.ant``, ``envs.humanoid``), each with its own task and reset seed, in lockstep. It is the
batched counterpart of :class:`~envs.locomotion.LocomotionTaskMixin` and is organised the same
way: the core clips actions, steps the simulator, detects unstable steps, sums the reward terms
and keeps the episode bookkeeping; each family module adds a subclass that implements only its
pieces (observation, tracked position, reward terms, termination, reset noise), vectorised over
the copies. The single env stays the reference: a batched family is built from one with
:meth:`BatchedLocomotion.from_env`, reads its configuration from it (weights, ranges,
observation switches, action bounds, time limit) and shares its ``MjModel``.

What is batched, and why:

- The simulator runs in one of two ways (:mod:`envs.mujoco_copies`): one ``MjData``
  per copy and one ``mj_step(model, data, frame_skip)`` each (plus ``mj_rnePostConstraint``
  for families that use contact forces), exactly the calls of Gymnasium's ``do_simulation``;
  or, where a step depends on the state vector alone (the model's solver warm start disabled,
  as the HalfCheetah families do by default) and the family reads only ``qpos`` and ``qvel``,
  all copies as rows of one state array stepped by one ``mujoco.rollout`` call, which gives
  the same numbers without a Python loop over copies.
- Everything else is NumPy over all copies at once: after each step the arrays the family
  needs (``qpos``, ``qvel``, ``cfrc_ext``, ...) are gathered into ``[N, ...]`` arrays, and the
  observations, reward terms, health checks and instability tests are array expressions over
  the copy axis. They use the same operations in the same order as the single env (the
  reward is summed term by term in the single env's order, sums of squares run along one
  contiguous row per copy, as NumPy sums a single copy's vector), so observations, rewards
  and termination flags are bit-identical to the single env's.
- Resets run per copy too (once per episode, not per step): ``mj_resetData`` and the family's
  reset noise drawn from ``gymnasium.utils.seeding.np_random(seed)``, the generator
  ``reset(seed=seed)`` gives the single env, so a copy starts where the single env would.

Unstable steps are detected as :mod:`envs.locomotion` does: a MuJoCo warning counted during the
step, a ``mujoco.FatalError``, or a non-finite state, observation or reward. Such a copy ends
its episode with reward 0, ``terminated`` True and its previous observation, and is flagged in
:attr:`BatchedLocomotion.unstable`. MuJoCo's messages are collected in
:attr:`BatchedLocomotion.mujoco_warnings` instead of going to stdout and ``MUJOCO_LOG.TXT``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import gymnasium
import mujoco
import numpy as np
from gymnasium.utils.seeding import np_random

from envs.batched import BatchedEpisodes
from envs.locomotion import capture_mujoco_warnings
from envs.mujoco_copies import PerCopyData, RolloutStates
from envs.protocol import Task


def sum_of_squares(values: np.ndarray) -> np.ndarray:
    """``np.sum(np.square(row))`` for every copy's row of ``values`` ``[N, ...]``.

    Each copy's entries are summed along one contiguous row, in the order in which NumPy sums
    the single env's (flattened) array, so the result equals the single env's bit for bit.
    """
    return np.square(values).reshape(len(values), -1).sum(axis=1)


class BatchedLocomotion(BatchedEpisodes):
    """N copies of a locomotion task env, each with its own task and reset seed, in lockstep.

    Copies run from :meth:`reset_tasks` for at most :attr:`horizon` steps. A copy that is done
    (terminated, unstable, or truncated at the horizon) is no longer simulated: it keeps its
    last observation, its rewards are 0 and its flags stay as they were on its last real step.
    A sampler masks with :attr:`active` read before each step: a copy's step is a real
    transition exactly when it was active before it. Up to each copy's end, observations,
    rewards and ``terminated`` equal those of the Gymnasium env (``gymnasium.make(env_id)``,
    ``set_task(tasks[i])``, ``reset(seed=seeds[i])``, the same actions) bit for bit, and
    ``truncated`` is True for the copies still running at the horizon, as ``TimeLimit`` sets it.
    Observations are float64, as the single env's.

    A family subclass lists the single env classes it twins (:attr:`_env_types`) and the
    ``MjData`` arrays it reads (:attr:`_fields`, gathered after every step into
    ``self._arrays[name]`` of shape ``[N, *shape]``), and implements :meth:`_observations`,
    :meth:`_tracked_positions` and :meth:`_reward_terms`, and if needed
    :meth:`_task_terminated` and :meth:`_reset_state`. Configuration is read from the single
    env, ``self._env``.

    Args:
        env: the unwrapped single env whose configuration and ``MjModel`` the copies take.
        horizon: number of steps after which every running copy is truncated.
    """

    _env_types: ClassVar[tuple[type, ...]] = ()
    """The single env classes (exactly these, not subclasses) this family reproduces."""

    _fields: ClassVar[tuple[str, ...]] = ("qpos", "qvel")
    """``MjData`` arrays gathered after every step; ``qpos`` and ``qvel`` always."""

    _contact_forces: ClassVar[bool] = True
    """Whether to run ``mj_rnePostConstraint`` after each step (for ``cfrc_ext``), as
    Gymnasium's ``do_simulation`` does. It changes nothing in the dynamics, so a family that
    reads no contact forces skips it."""

    def __init__(self, env: Any, horizon: int) -> None:
        if type(env) not in self._env_types:
            names = ", ".join(cls.__qualname__ for cls in self._env_types)
            raise TypeError(
                f"{type(self).__qualname__} twins {names}, got {type(env).__qualname__}"
            )
        if horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {horizon}")
        self._env = env
        self.horizon = int(horizon)
        self.model: mujoco.MjModel = env.model
        self._frame_skip = int(env.frame_skip)
        self.dt: float = env.dt
        self._distribution = env._task_distribution
        self.clip_actions: bool = env.clip_actions
        space = env.action_space
        self._action_low = space.low.astype(np.float64)
        self._action_high = space.high.astype(np.float64)
        self._copies: PerCopyData | RolloutStates = (
            RolloutStates(self.model, self._frame_skip)
            if RolloutStates.applies(self.model, self._fields, self._contact_forces)
            else PerCopyData(self.model, self._frame_skip, self._fields, self._contact_forces)
        )
        self._task_values = np.zeros(0)
        self._positions = np.zeros(0)
        self._observations_buffer = np.zeros((0, env.observation_space.shape[0]))
        self._unstable = np.zeros(0, dtype=bool)
        self._start_episodes(0)
        self.mujoco_warnings: list[str] = []
        """MuJoCo's messages since the last :meth:`reset_tasks` (all copies together)."""

    @classmethod
    def from_env(cls, env: gymnasium.Env) -> Self:
        """The batched twin of ``env``: its configuration, ``MjModel`` and time limit.

        Args:
            env: a (possibly wrapped) single env of this family made with ``gymnasium.make``,
                so that its spec carries ``max_episode_steps``.
        """
        horizon = env.spec.max_episode_steps if env.spec is not None else None
        if horizon is None:
            raise ValueError(
                "env has no time limit (spec.max_episode_steps); make it with gymnasium.make "
                f"or construct {cls.__qualname__}(env.unwrapped, horizon) directly"
            )
        return cls(env.unwrapped, horizon)

    # --- state --------------------------------------------------------------------------------

    @property
    def unstable(self) -> np.ndarray:
        """Bool ``[N]``: copies whose episode ended on an unstable step (a new array)."""
        return self._unstable.copy()

    @property
    def copies(self) -> PerCopyData | RolloutStates:
        """The simulations of the copies (see :mod:`envs.mujoco_copies`), for inspection:
        ``copies.datas[i]`` or ``copies.states[i]`` is copy ``i``; changing it changes it."""
        return self._copies

    @property
    def _arrays(self) -> dict[str, np.ndarray]:
        """The gathered :attr:`_fields`, ``[N, *shape]`` each, as of the last reset or step."""
        return self._copies.arrays

    # --- the family's part --------------------------------------------------------------------

    def _observations(self) -> np.ndarray:
        """Float64 ``[N, obs_dim]`` observations from ``self._arrays``, as the env's
        ``_get_obs``."""
        raise NotImplementedError

    def _tracked_positions(self) -> np.ndarray:
        """``[N, k]``: each copy's position the reward differentiates (a new array)."""
        raise NotImplementedError

    def _reward_terms(
        self, before: np.ndarray, after: np.ndarray, actions: np.ndarray
    ) -> dict[str, np.ndarray | float]:
        """The reward terms ``[N]`` (or scalars shared by all copies), in the single env's
        order, whose sum is the reward.

        Args:
            before: :meth:`_tracked_positions` before the step.
            after: :meth:`_tracked_positions` after the step.
            actions: ``[N, act_dim]`` float64 actions the simulator received (clipped if
                ``clip_actions``).
        """
        raise NotImplementedError

    def _forward_reward(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """The velocity and direction tasks' term before its weight: the task distribution's
        reward of each copy's x velocity over the step."""
        x_velocity = (after[:, 0] - before[:, 0]) / self.dt
        return self._distribution.reward(self._task_values, x_velocity)

    def _task_terminated(self) -> np.ndarray | bool:
        """Bool ``[N]``: whether each copy's state after a (stable) step ends its episode."""
        return False

    def _reset_state(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The initial ``(qpos, qvel)`` of one copy, drawn with ``rng`` as the v5 env's
        ``reset_model`` does (HalfCheetah and Ant: uniform position noise, Gaussian velocity
        noise)."""
        env = self._env
        scale = env._reset_noise_scale
        qpos = env.init_qpos + rng.uniform(low=-scale, high=scale, size=self.model.nq)
        qvel = env.init_qvel + scale * rng.standard_normal(self.model.nv)
        return qpos, qvel

    # --- episodes -----------------------------------------------------------------------------

    def reset_tasks(self, tasks: Sequence[Task], seeds: Sequence[int] | np.ndarray) -> np.ndarray:
        """Start N episodes: copy ``i`` gets task ``tasks[i]`` and reset seed ``seeds[i]``.

        Args:
            tasks: N tasks of this family (N may differ from the previous reset).
            seeds: N non-negative reset seeds.

        Returns:
            Float64 ``[N, obs_dim]`` observations.

        Raises:
            ValueError: if there are no tasks, a task is malformed or the counts differ.
        """
        n = len(tasks)
        if n < 1:
            raise ValueError("reset_tasks() needs at least one task")
        if len(seeds) != n:
            raise ValueError(f"need one reset seed per task, got {len(seeds)} for {n}")
        self._task_values = np.array(
            [self._distribution.parse(task) for task in tasks], dtype=np.float64
        )
        self._copies.bind(n)
        self._start_episodes(n)
        self._unstable = np.zeros(n, dtype=bool)
        self.mujoco_warnings = []
        starts = [self._reset_state(np_random(int(seed))[0]) for seed in seeds]
        with capture_mujoco_warnings(self.mujoco_warnings):
            self._copies.reset(starts)
        self._positions = self._tracked_positions()
        self._observations_buffer = self._observations()
        return self._observations_buffer.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Advance every running copy ``frame_skip`` simulator steps and score its task.

        Args:
            actions: ``[N, act_dim]`` actions; rows of copies that are done are ignored.

        Returns:
            ``(observations, rewards, terminated, truncated)``: float64 ``[N, obs_dim]``,
            float64 ``[N]`` (0 for copies done before this step or unstable in it), bool
            ``[N]``, bool ``[N]``.

        Raises:
            RuntimeError: if the horizon was already reached (call :meth:`reset_tasks`).
            ValueError: if ``actions`` has the wrong shape.
        """
        self._check_within_horizon("reset_tasks")
        actions = np.asarray(actions, dtype=np.float64)
        expected = (self.num_envs, *self._action_low.shape)
        if actions.shape != expected:
            raise ValueError(f"actions must have shape {expected}, got {actions.shape}")
        if self.clip_actions:
            actions = np.clip(actions, self._action_low, self._action_high)
        running = ~self._done
        failed = self._copies.step(actions, running, self.mujoco_warnings)
        with np.errstate(all="ignore"):  # unstable copies may hold NaN or huge values
            qpos, qvel = self._arrays["qpos"], self._arrays["qvel"]
            finite_state = np.isfinite(qpos).all(axis=1) & np.isfinite(qvel).all(axis=1)
            observations = self._observations()
            after = self._tracked_positions()
            reward = np.zeros(self.num_envs)
            for term in self._reward_terms(self._positions, after, actions).values():
                reward = reward + term
            finite = np.isfinite(reward) & np.isfinite(observations).all(axis=1)
            stable = running & ~failed & finite_state & finite
            terminated = stable & self._task_terminated()
        unstable = running & ~stable
        rewards = np.where(stable, reward, 0.0)
        np.copyto(self._observations_buffer, observations, where=stable[:, None])
        self._positions = after
        self._unstable |= unstable
        self._end_step(running, terminated | unstable)
        return (
            self._observations_buffer.copy(),
            rewards,
            self._terminated.copy(),
            self._truncated.copy(),
        )
