"""2-D point navigation to a goal (MAML paper, section 5.3), single and natively batched.

A point starts at the origin and moves by its (clipped) action each step; a task is a goal
position. Following the paper's public code (``maml_rl/maml_examples/point_env_randgoal.py``)
and its PyTorch port (``pytorch-maml-rl``), the reward is the negative *Euclidean* distance from
the goal to the position reached *after* the step (the paper's text says "squared distance";
every public implementation uses the plain distance), and the episode terminates once the point
is within ``goal_tolerance`` of the goal along both axes.

:class:`Navigation2DEnv` is the Gymnasium environment (registered as ``rlmaml/Navigation2D-v0``
with a 100-step time limit). :class:`BatchedNavigation2D` steps thousands of copies, each with
its own goal, in a few NumPy calls for the in-process sampler. Both use the same update and
reward functions below, so they give bit-identical trajectories for the same actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from envs.batched import BatchedEpisodes
from envs.protocol import Task


def _displacement(action: Any, max_action: float, action_scale: float) -> np.ndarray:
    """``action_scale * action`` as float32, clipped to ``[-max_action, max_action]``."""
    scaled = np.asarray(action, dtype=np.float32) * np.float32(action_scale)
    return np.clip(scaled, -max_action, max_action)


def _reward_and_reached(
    position: np.ndarray, goal: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Reward (minus the Euclidean distance) and goal-reached flag, over leading axes.

    Args:
        position: float32 positions, shape ``[..., 2]``.
        goal: float64 goals, broadcastable to ``position``.
        tolerance: the goal counts as reached when both ``|dx|`` and ``|dy|`` are below it.

    Returns:
        ``(reward, reached)``: float64 and bool arrays of shape ``position.shape[:-1]``.
    """
    offset = position.astype(np.float64) - goal
    dx, dy = offset[..., 0], offset[..., 1]
    reward = -np.sqrt(dx * dx + dy * dy)
    reached = (np.abs(dx) < tolerance) & (np.abs(dy) < tolerance)
    return reward, reached


def _check_goals(goals: Any) -> np.ndarray:
    """``goals`` as a float64 array of shape ``[..., 2]`` with finite entries."""
    array = np.asarray(goals, dtype=np.float64)
    if array.ndim == 0 or array.shape[-1] != 2 or not np.all(np.isfinite(array)):
        raise ValueError(f"goals must be finite (x, y) pairs, got {goals!r}")
    return array


class Navigation2DEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Move a point in the plane to a goal drawn per task.

    - Observation: the point's position ``(x, y)``, float32, ``Box(-inf, inf, (2,))``. The
      episode starts at the origin.
    - Action: a displacement (velocity over one step) ``(dx, dy)``, ``Box(-max_action,
      max_action, (2,))``. Actions outside the box are clipped, not rejected, so a Gaussian
      policy can be used without a squashing function.
    - Reward: ``-||p' - g||_2`` with ``p'`` the position after the step and ``g`` the goal.
    - Termination: when ``|p'_x - g_x| < goal_tolerance`` and ``|p'_y - g_y| < goal_tolerance``.
    - Truncation: by Gymnasium's ``TimeLimit`` (100 steps for ``rlmaml/Navigation2D-v0``).
    - Task: ``{"goal": [x, y]}``, goals drawn from ``U[goal_low, goal_high]^2``.

    Until a task is set (constructor or :meth:`set_task`), the first :meth:`reset` draws one
    from ``np_random`` and keeps it, so a plain ``gymnasium.make(...)`` env is usable and
    seeded by ``reset(seed=...)``. ``set_task`` does not move the point: call ``reset`` to start
    an episode for the new goal.

    The paper's code wraps the env in rllab's ``normalize``, which maps policy actions from
    ``[-1, 1]`` to the displacement box; ``action_scale=0.1`` does the same here (the action
    space becomes ``Box(-1, 1)`` and a policy's unit noise a displacement of 0.1), which matters
    for the paper's inner step size.

    Args:
        goal_low: lower bound of each goal coordinate when sampling tasks.
        goal_high: upper bound of each goal coordinate when sampling tasks.
        max_action: bound on each displacement coordinate.
        goal_tolerance: per-axis distance below which the goal counts as reached.
        task: the initial task; None lets the first ``reset`` draw one.
        action_scale: the displacement is ``clip(action_scale * action, -max_action,
            max_action)``; the action space is ``Box(-max_action / action_scale, ...)``.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        goal_low: float = -0.5,
        goal_high: float = 0.5,
        max_action: float = 0.1,
        goal_tolerance: float = 0.01,
        task: Task | None = None,
        action_scale: float = 1.0,
    ) -> None:
        if not goal_low < goal_high:
            raise ValueError(f"need goal_low < goal_high, got {goal_low} and {goal_high}")
        if max_action <= 0 or goal_tolerance <= 0 or action_scale <= 0:
            raise ValueError(
                "max_action, goal_tolerance and action_scale must be positive, got "
                f"{max_action}, {goal_tolerance} and {action_scale}"
            )
        self.goal_low = float(goal_low)
        self.goal_high = float(goal_high)
        self.max_action = float(max_action)
        self.goal_tolerance = float(goal_tolerance)
        self.action_scale = float(action_scale)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        bound = self.max_action / self.action_scale
        self.action_space = spaces.Box(-bound, bound, (2,), np.float32)
        self._position = np.zeros(2, dtype=np.float32)
        self._goal: np.ndarray | None = None
        if task is not None:
            self.set_task(task)

    def sample_tasks(self, n: int) -> list[Task]:
        """``n`` goals drawn uniformly from ``[goal_low, goal_high]^2`` with ``self.np_random``.

        Args:
            n: number of tasks (zero or more).

        Returns:
            ``[{"goal": [x, y]}, ...]`` with Python floats, ready for JSON.
        """
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        goals = self.np_random.uniform(self.goal_low, self.goal_high, size=(n, 2))
        return [{"goal": goal.tolist()} for goal in goals]

    def set_task(self, task: Task) -> None:
        """Aim at ``task["goal"]`` from the next step on.

        Raises:
            ValueError: if ``task`` is not ``{"goal": [x, y]}`` with finite ``x`` and ``y``.
        """
        if set(task) != {"goal"}:
            raise ValueError(f"a Navigation2D task is {{'goal': [x, y]}}, got keys {sorted(task)}")
        goal = _check_goals(task["goal"])
        if goal.shape != (2,):
            raise ValueError(f"task['goal'] must be one (x, y) pair, got {task['goal']!r}")
        self._goal = goal

    @property
    def task(self) -> Task | None:
        """The current task (a fresh dict), or None before any was set or drawn."""
        return None if self._goal is None else {"goal": self._goal.tolist()}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Put the point back at the origin (drawing a task first if none is set)."""
        super().reset(seed=seed)
        if self._goal is None:
            self.set_task(self.sample_tasks(1)[0])
        self._position = np.zeros(2, dtype=np.float32)
        return self._position.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move by the scaled, clipped ``action``; reward and termination use the new position."""
        if self._goal is None:
            raise RuntimeError("Navigation2DEnv.step() called before reset()")
        move = _displacement(action, self.max_action, self.action_scale)
        self._position = self._position + move
        reward, reached = _reward_and_reached(self._position, self._goal, self.goal_tolerance)
        return self._position.copy(), float(reward), bool(reached), False, {}


class BatchedNavigation2D(BatchedEpisodes):
    """Many copies of :class:`Navigation2DEnv`, each with its own goal, stepped at once.

    Every array has a leading copy axis of length ``N``; one :meth:`step` is a handful of NumPy
    calls whatever ``N`` is. Copies run in lockstep from :meth:`reset` for at most ``horizon``
    steps. A copy that is done (goal reached, or horizon hit) stays done: its position no longer
    changes, its rewards are 0 and its ``terminated``/``truncated`` flags stay as they were on
    its last real step. A sampler masks with :attr:`active` read before each step (equivalently,
    ``~(terminated | truncated)`` from the previous step): a copy's step is a real transition
    exactly when the copy was active before it.

    For the same goals and actions, observations, rewards and termination flags equal those of
    ``gymnasium.make("rlmaml/Navigation2D-v0")`` up to each copy's end, bit for bit; and
    ``truncated`` is True for exactly the copies still running at the horizon, as ``TimeLimit``
    sets it. Samplers use it through :meth:`reset_tasks` (the
    :class:`~envs.protocol.BatchedTaskFamily` protocol).

    Args:
        max_action: bound on each displacement coordinate.
        goal_tolerance: per-axis distance below which the goal counts as reached.
        horizon: number of steps after which every running copy is truncated.
        action_scale: displacement ``clip(action_scale * action, -max_action, max_action)``.
    """

    def __init__(
        self,
        max_action: float = 0.1,
        goal_tolerance: float = 0.01,
        horizon: int = 100,
        action_scale: float = 1.0,
    ) -> None:
        if max_action <= 0 or goal_tolerance <= 0 or horizon < 1 or action_scale <= 0:
            raise ValueError(
                "max_action, goal_tolerance and action_scale must be positive and horizon at "
                f"least 1, got {max_action}, {goal_tolerance}, {action_scale} and {horizon}"
            )
        self.max_action = float(max_action)
        self.action_scale = float(action_scale)
        self.goal_tolerance = float(goal_tolerance)
        self.horizon = int(horizon)
        self._goals = np.zeros((0, 2))
        self._positions = np.zeros((0, 2), dtype=np.float32)
        self._start_episodes(0)

    @classmethod
    def from_env(cls, env: gymnasium.Env) -> BatchedNavigation2D:
        """The batched twin of ``env``: same action bound, tolerance and time limit.

        Args:
            env: a (possibly wrapped) :class:`Navigation2DEnv` made with ``gymnasium.make``,
                so that its spec carries ``max_episode_steps``.
        """
        inner = env.unwrapped
        if not isinstance(inner, Navigation2DEnv):
            raise TypeError(f"expected a Navigation2DEnv, got {type(inner).__qualname__}")
        horizon = env.spec.max_episode_steps if env.spec is not None else None
        if horizon is None:
            raise ValueError(
                "env has no time limit (spec.max_episode_steps); make it with gymnasium.make "
                "or construct BatchedNavigation2D(horizon=...) directly"
            )
        return cls(inner.max_action, inner.goal_tolerance, horizon, inner.action_scale)

    @staticmethod
    def goals_from_tasks(tasks: Sequence[Task]) -> np.ndarray:
        """The ``[N, 2]`` goal array for :meth:`reset` from N Navigation2D tasks."""
        return _check_goals([task["goal"] for task in tasks]).reshape(len(tasks), 2)

    def reset(self, goals: np.ndarray) -> np.ndarray:
        """Start N episodes at the origin, copy ``i`` aiming at ``goals[i]``.

        Args:
            goals: ``[N, 2]`` goal positions (N may differ from the previous reset).

        Returns:
            float32 ``[N, 2]`` observations (all zeros).
        """
        goals = _check_goals(goals)
        if goals.ndim != 2:
            raise ValueError(f"goals must have shape [N, 2], got {goals.shape}")
        n = len(goals)
        self._goals = goals.copy()
        self._positions = np.zeros((n, 2), dtype=np.float32)
        self._start_episodes(n)
        return self._positions.copy()

    def reset_tasks(self, tasks: Sequence[Task], seeds: Sequence[int] | np.ndarray) -> np.ndarray:
        """:meth:`reset` with copy ``i`` aiming at ``tasks[i]["goal"]``, as samplers call it.

        Args:
            tasks: N Navigation2D tasks, one per copy.
            seeds: N reset seeds, one per copy. Unused: every episode starts at the origin and
                the dynamics are deterministic, so the single env's ``reset(seed=...)`` draws
                nothing either.
        """
        if len(seeds) != len(tasks):
            raise ValueError(f"need one reset seed per task, got {len(seeds)} for {len(tasks)}")
        return self.reset(self.goals_from_tasks(tasks))

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Move every running copy by its clipped action.

        Args:
            actions: ``[N, 2]`` actions; rows of copies that are done are ignored.

        Returns:
            ``(observations, rewards, terminated, truncated)``: float32 ``[N, 2]``, float64
            ``[N]`` (0 for copies done before this step), bool ``[N]``, bool ``[N]``.

        Raises:
            RuntimeError: if the horizon was already reached (call :meth:`reset`).
        """
        self._check_within_horizon("reset")
        actions = _displacement(actions, self.max_action, self.action_scale)
        if actions.shape != self._positions.shape:
            raise ValueError(
                f"actions must have shape {self._positions.shape}, got {actions.shape}"
            )
        running = ~self._done
        np.add(self._positions, actions, out=self._positions, where=running[:, None])
        rewards, reached = _reward_and_reached(self._positions, self._goals, self.goal_tolerance)
        rewards[self._done] = 0.0
        self._end_step(running, reached & running)
        return self._positions.copy(), rewards, self._terminated.copy(), self._truncated.copy()
