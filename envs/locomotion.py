"""Shared machinery of the MuJoCo locomotion task families (MAML paper, section 5.3).

Every locomotion family (``envs.cheetah``, ``envs.ant``, ``envs.humanoid``) is a Gymnasium v5
MuJoCo environment with :class:`LocomotionTaskMixin` in front of it in the MRO. The mixin
implements the :class:`~envs.protocol.TaskFamily` protocol on top of a task distribution
(:class:`VelocityTasks`, :class:`DirectionTasks` or :class:`GoalTasks`) and replaces the v5
``step`` by one that

- clips the action to the action box first (``clip_actions=True``, the paper's setting: rllab's
  ``normalize`` wrapper clipped every action before the environment saw it, so the control cost
  never charged for the part of an action the actuators ignore; Gymnasium v5 charges the raw
  action instead, which ``clip_actions=False`` restores),
- steps the simulator and asks the family for its reward terms (:meth:`_reward_terms`), whose
  sum is the reward and which all go into ``info`` (with the task, ``info["task"]``),
- ends the episode cleanly when the simulation goes unstable (see below).

Unstable simulation. A step is *unstable* when MuJoCo counts a warning during it (in
``data.warning``: ``mjWARN_BADQPOS``, ``BADQVEL``, ``BADQACC`` for a NaN, infinite or huge
(> 1e10) state or acceleration, after which MuJoCo silently resets the state to the model's
default pose, which would otherwise show up as a huge bogus velocity; ``BADCTRL`` for a NaN
control; ``CONTACTFULL``/``CNSTRFULL`` for an overflowing arena), when it raises
``mujoco.FatalError``, or when the state, observation or reward is not finite. Such a step never
raises: it returns the previous observation, reward 0, ``terminated=True`` and
``info["unstable"] = True`` (with the reward terms at 0 and MuJoCo's messages in
``info["mujoco_warnings"]``). Every other step has ``info["unstable"] = False``.

Each family module also has a natively batched twin of its envs, built on
:class:`envs.batched_locomotion.BatchedLocomotion` and organised like this mixin, which samplers
use to step many copies with little Python per step; it reproduces the env bit for bit.

MuJoCo's own warning messages (at model compilation and during steps) are captured while these
environments compile or step, instead of going to stdout and a ``MUJOCO_LOG.TXT`` file in the
working directory (MuJoCo's default): compile-time messages are logged once per process at INFO
level on this module's logger, step-time messages go into ``info["mujoco_warnings"]``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import mujoco
import numpy as np

from envs.protocol import Task

_LOGGER = logging.getLogger(__name__)

_logged_compile_messages: set[str] = set()


def constructor_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """A constructor's arguments as keywords, from its ``locals()`` taken on entry.

    For ``gymnasium.utils.EzPickle``, which rebuilds a pickled env by calling its class with
    the same arguments: each family takes ``arguments = constructor_arguments(locals())`` as
    the first statement of ``__init__`` and ends with ``utils.EzPickle.__init__(self,
    **arguments)`` (after the v5 base class, whose own EzPickle call it replaces), instead of
    repeating its whole argument list.
    """
    named = {k: v for k, v in arguments.items() if k not in ("self", "__class__", "kwargs")}
    return {**named, **arguments.get("kwargs", {})}


@contextlib.contextmanager
def capture_mujoco_warnings(messages: list[str]) -> Iterator[list[str]]:
    """Append MuJoCo's warning messages to ``messages`` instead of printing and logging them.

    MuJoCo's warning handler is process-global; this installs a collecting one for the duration
    of the block and puts the previous one back. With several threads stepping MuJoCo at once a
    message may land in another thread's list: the messages are informative only, instability
    is detected from ``data.warning`` counters, which are per simulation.

    Args:
        messages: the list that receives each message.

    Yields:
        ``messages``.
    """
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(messages.append)
    try:
        yield messages
    finally:
        mujoco.set_mju_user_warning(previous)


def log_compile_messages(messages: list[str]) -> None:
    """Log MuJoCo's model-compilation messages, each once per process, at INFO level.

    The v5 ``half_cheetah.xml`` triggers MuJoCo 4's deprecation notice for ``settotalmass``
    every time it is compiled; a user cannot act on it, so it is not a warning here.
    """
    for message in messages:
        if message not in _logged_compile_messages:
            _logged_compile_messages.add(message)
            _LOGGER.info("MuJoCo, compiling a locomotion model: %s", message)


def _check_keys(task: Task, key: str, family: str, example: str) -> None:
    """Raise ValueError unless ``task`` is a dict whose only key is ``key``."""
    if not isinstance(task, dict) or set(task) != {key}:
        keys = sorted(task) if isinstance(task, dict) else type(task).__name__
        raise ValueError(f"a {family} task is {example}, got {keys}")


class VelocityTasks:
    """Target forward velocities ``{"velocity": v}``, ``v ~ U[low, high]``.

    The task term of the reward is ``-|v_x - v|``.

    Args:
        low: smallest velocity drawn.
        high: largest velocity drawn.
    """

    key = "velocity"

    def __init__(self, low: float, high: float) -> None:
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(f"need finite velocity bounds low < high, got {low} and {high}")
        self.low = float(low)
        self.high = float(high)

    def sample(self, rng: np.random.Generator, n: int) -> list[Task]:
        """``n`` tasks drawn with ``rng``."""
        return [{"velocity": v} for v in rng.uniform(self.low, self.high, size=n).tolist()]

    def parse(self, task: Task) -> float:
        """The target velocity of ``task``; any finite value is accepted, in range or not."""
        _check_keys(task, "velocity", "velocity", "{'velocity': v}")
        try:
            velocity = float(task["velocity"])
        except (TypeError, ValueError):
            velocity = float("nan")
        if not np.isfinite(velocity):
            raise ValueError(f"task['velocity'] must be a finite number, got {task['velocity']!r}")
        return velocity

    @staticmethod
    def as_task(velocity: float) -> Task:
        """The task dict of ``velocity``."""
        return {"velocity": velocity}

    @staticmethod
    def reward(velocity: Any, x_velocity: Any) -> Any:
        """``-|x_velocity - velocity|``, for floats or elementwise for arrays of copies."""
        return -abs(x_velocity - velocity)


class DirectionTasks:
    """Running directions ``{"direction": d}``, ``d`` = -1.0 or +1.0 with probability 1/2 each.

    The task term of the reward is ``d * v_x``.
    """

    key = "direction"

    def sample(self, rng: np.random.Generator, n: int) -> list[Task]:
        """``n`` tasks drawn with ``rng``."""
        signs = 2.0 * rng.integers(0, 2, size=n) - 1.0
        return [{"direction": d} for d in signs.tolist()]

    def parse(self, task: Task) -> float:
        """The direction of ``task`` as a float, -1.0 or 1.0."""
        _check_keys(task, "direction", "direction", "{'direction': -1 or 1}")
        direction = task["direction"]
        if isinstance(direction, bool) or direction not in (-1, 1):
            raise ValueError(f"task['direction'] must be -1 or 1, got {direction!r}")
        return float(direction)

    @staticmethod
    def as_task(direction: float) -> Task:
        """The task dict of ``direction``."""
        return {"direction": direction}

    @staticmethod
    def reward(direction: Any, x_velocity: Any) -> Any:
        """``direction * x_velocity``, for floats or elementwise for arrays of copies."""
        return direction * x_velocity


class GoalTasks:
    """Goal positions in the plane ``{"goal": [x, y]}``, drawn from ``U[low, high]^2``.

    The task term of the reward is ``-||xy - goal||_1``.

    Args:
        low: lower bound of each goal coordinate.
        high: upper bound of each goal coordinate.
    """

    key = "goal"

    def __init__(self, low: float, high: float) -> None:
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(f"need finite goal bounds low < high, got {low} and {high}")
        self.low = float(low)
        self.high = float(high)

    def sample(self, rng: np.random.Generator, n: int) -> list[Task]:
        """``n`` tasks drawn with ``rng``."""
        return [{"goal": g} for g in rng.uniform(self.low, self.high, size=(n, 2)).tolist()]

    def parse(self, task: Task) -> np.ndarray:
        """The goal of ``task`` as a float64 array of shape ``(2,)``."""
        _check_keys(task, "goal", "goal", "{'goal': [x, y]}")
        try:
            goal = np.asarray(task["goal"], dtype=np.float64)
        except (TypeError, ValueError):
            goal = np.full(0, np.nan)
        if goal.shape != (2,) or not np.all(np.isfinite(goal)):
            raise ValueError(f"task['goal'] must be one finite (x, y) pair, got {task['goal']!r}")
        return goal

    @staticmethod
    def as_task(goal: np.ndarray) -> Task:
        """The task dict of ``goal``."""
        return {"goal": goal.tolist()}

    @staticmethod
    def reward(goal: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """``-||xy - goal||_1`` over the last axis: a 0-d array for one ``(2,)`` pair, ``[N]``
        for ``[N, 2]`` arrays of copies."""
        return -np.abs(xy - goal).sum(axis=-1)


TaskDistribution = VelocityTasks | DirectionTasks | GoalTasks


class LocomotionTaskMixin:
    """Task protocol, reward bookkeeping and instability handling for a v5 MuJoCo env.

    Put it first in the bases (``class Env(LocomotionTaskMixin, HalfCheetahEnv)``) and call
    :meth:`_init_task_family` after the v5 ``__init__`` (run that inside
    :func:`capture_mujoco_warnings` and pass what it caught to :func:`log_compile_messages`).
    A family then only implements :meth:`_tracked_position`, :meth:`_reward_terms` and, if it
    can terminate, :meth:`_task_terminated`.

    Until a task is set (constructor or :meth:`set_task`), the first :meth:`reset` draws one
    from ``np_random`` and keeps it, so a plain ``gymnasium.make(...)`` env is usable and seeded
    by ``reset(seed=...)``. ``set_task`` takes effect from the next step on; it does not reset.
    """

    # Provided by the Gymnasium MuJoCo base class.
    data: mujoco.MjData
    dt: float
    frame_skip: int
    np_random: np.random.Generator

    _reward_keys: tuple[str, ...] = ()
    """Keys of the reward terms in ``info``; every step reports all of them."""

    def _init_task_family(
        self, distribution: TaskDistribution, clip_actions: bool, task: Task | None
    ) -> None:
        """Set the task distribution, the action clipping and the initial task (or None)."""
        self._task_distribution = distribution
        self.clip_actions = bool(clip_actions)
        self._task_value: Any = None
        self._last_observation: np.ndarray | None = None
        if task is not None:
            self.set_task(task)

    # --- the TaskFamily protocol ---------------------------------------------------------

    def sample_tasks(self, n: int) -> list[Task]:
        """``n`` tasks drawn independently from the task distribution with ``self.np_random``.

        Args:
            n: number of tasks (zero or more).

        Returns:
            JSON-able task dicts with Python floats.
        """
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        return self._task_distribution.sample(self.np_random, n)

    def set_task(self, task: Task) -> None:
        """Switch to ``task`` from the next step on (values outside the sampling range are fine).

        Raises:
            ValueError: if ``task`` does not have exactly this family's key and a valid value.
        """
        self._task_value = self._task_distribution.parse(task)

    @property
    def task(self) -> Task | None:
        """The current task (a fresh dict), or None before any was set or drawn."""
        if self._task_value is None:
            return None
        return self._task_distribution.as_task(self._task_value)

    # --- the family's part -----------------------------------------------------------------

    def _tracked_position(self) -> np.ndarray:
        """A copy of the position the reward differentiates (torso x, torso xy, COM xy, ...)."""
        raise NotImplementedError

    def _reward_terms(
        self, before: np.ndarray, after: np.ndarray, action: np.ndarray
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """The reward terms (keys :attr:`_reward_keys`, summing to the reward) and other info.

        Args:
            before: :meth:`_tracked_position` before the step.
            after: :meth:`_tracked_position` after the step.
            action: the action the simulator received (clipped if ``clip_actions``).
        """
        raise NotImplementedError

    def _task_terminated(self) -> bool:
        """Whether the state after a (stable) step ends the episode; never, by default."""
        return False

    # --- Gymnasium API -------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset as the v5 environment does, drawing a task first if none is set.

        ``info["task"]`` holds the task of the episode.
        """
        observation, info = super().reset(seed=seed, options=options)  # type: ignore[misc]
        if self._task_value is None:
            self.set_task(self.sample_tasks(1)[0])
        self._last_observation = observation
        info["task"] = self.task
        return observation, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Advance ``frame_skip`` simulator steps under ``action`` and score the task.

        Returns:
            ``(observation, reward, terminated, truncated, info)``; ``truncated`` is always
            False here (the time limit is Gymnasium's ``TimeLimit``). ``info`` holds every
            reward term, the task and ``unstable``; see the module docstring for unstable steps.

        Raises:
            RuntimeError: if called before the first :meth:`reset`.
            ValueError: if the action has the wrong shape.
        """
        if self._last_observation is None:
            raise RuntimeError(f"{type(self).__name__}.step() called before reset()")
        space = self.action_space  # type: ignore[attr-defined]
        action = np.asarray(action, dtype=np.float64)
        if action.shape != space.shape:
            raise ValueError(f"action must have shape {space.shape}, got {action.shape}")
        if self.clip_actions:
            action = np.clip(action, space.low, space.high)
        before = self._tracked_position()
        messages = self._simulate(action)
        if messages is None:
            with np.errstate(all="ignore"):
                observation = self._get_obs()  # type: ignore[attr-defined]
                terms, info = self._reward_terms(before, self._tracked_position(), action)
                reward = float(sum(terms.values()))
                # A sum is finite exactly when every entry is (nothing here nears 1e308).
                finite = math.isfinite(reward) and math.isfinite(observation.sum())
            if finite:
                terminated = self._task_terminated()
                self._last_observation = observation
                info.update(terms)
                info["task"] = self.task
                info["unstable"] = False
                return observation, reward, terminated, False, info
            messages = ["non-finite observation or reward"]
        info = dict.fromkeys(self._reward_keys, 0.0)
        info.update(task=self.task, unstable=True, mujoco_warnings=messages)
        return self._last_observation.copy(), 0.0, True, False, info

    def _simulate(self, action: np.ndarray) -> list[str] | None:
        """Run the simulator for one env step; None if it stayed stable, else why not."""
        warnings_before = int(self.data.warning.number.sum())
        messages: list[str] = []
        previous_handler = mujoco.get_mju_user_warning()
        mujoco.set_mju_user_warning(messages.append)  # as capture_mujoco_warnings, inlined
        try:
            self.do_simulation(action, self.frame_skip)  # type: ignore[attr-defined]
        except mujoco.FatalError as error:
            return [*messages, f"mujoco.FatalError: {error}"]
        finally:
            mujoco.set_mju_user_warning(previous_handler)
        counts = self.data.warning.number
        if int(counts.sum()) != warnings_before:
            if not messages:  # MuJoCo prints a warning only the first time it is counted
                messages = [mujoco.mjtWarning(index).name for index in np.flatnonzero(counts)]
            return messages
        # A sum is finite exactly when every entry is (MuJoCo keeps the state below 1e10).
        if not math.isfinite(self.data.qpos.sum() + self.data.qvel.sum()):
            return [*messages, "non-finite qpos or qvel"]
        return None
