"""The task-family protocol every ``rlmaml/`` environment follows.

A task family is an ordinary Gymnasium environment that can also draw tasks from its task
distribution and switch to one of them. Meta-training only ever needs these three members, so
any environment that has them (ours, or one a user brings) plugs into the samplers unchanged.

Tasks are small JSON-able dicts (``{"goal": [x, y]}``, ``{"velocity": 1.3}``): they are logged
in run folders and sent to worker processes as they are, with no pickled NumPy arrays.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

Task = dict[str, Any]
"""One task: a JSON-able dict of the task's parameters (lists and floats, no arrays)."""

_MEMBERS: tuple[tuple[str, bool], ...] = (
    ("sample_tasks", True),
    ("set_task", True),
    ("task", False),
)
"""Protocol members as (name, must be callable), in the order error messages list them."""


@runtime_checkable
class TaskFamily(Protocol):
    """An environment that samples tasks from its distribution and can be switched to one.

    ``sample_tasks`` must draw from the environment's own ``self.np_random``, so that
    ``env.reset(seed=s)`` followed by ``env.sample_tasks(n)`` gives the same tasks every time:
    the one seed of a run then reaches the task distribution too.
    """

    def sample_tasks(self, n: int) -> list[Task]:
        """``n`` tasks drawn independently from the task distribution with ``self.np_random``."""
        ...

    def set_task(self, task: Task) -> None:
        """Switch to ``task``; it holds for every later step until the next ``set_task``."""
        ...

    @property
    def task(self) -> Task | None:
        """The current task (a copy), or None before any task was set or drawn."""
        ...


class BatchedTaskFamily(Protocol):
    """A natively batched twin of a task family: N copies, each with its own task, stepped at once.

    Samplers use one (found with :func:`envs.batched_env_for`) instead of N Gymnasium envs
    stepped one by one. Copies run in lockstep from :meth:`reset_tasks` for at most
    :attr:`horizon` steps; a copy that is done (terminated, or truncated at the horizon) stays
    done, keeps its last observation and gets reward 0. For the same tasks, reset seeds and
    actions, every copy reproduces the Gymnasium env made with ``gymnasium.make`` (reset with
    ``reset(seed=...)`` after ``set_task``) up to its end, so trajectories do not depend on which
    implementation a sampler used.
    """

    horizon: int
    """Steps after which every running copy is truncated (the env's ``TimeLimit``)."""

    @classmethod
    def from_env(cls, env: Any) -> Self:
        """The batched twin of ``env`` (made with ``gymnasium.make``): its configuration and
        time limit."""
        ...

    @property
    def active(self) -> np.ndarray:
        """Bool ``[N]``: copies whose next step will be a real transition (not done yet)."""
        ...

    def reset_tasks(self, tasks: Sequence[Task], seeds: Sequence[int] | np.ndarray) -> np.ndarray:
        """Start N episodes, copy ``i`` with task ``tasks[i]`` and reset seed ``seeds[i]``.

        Returns:
            ``[N, obs_dim]`` observations.
        """
        ...

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step every running copy; returns ``(observations, rewards, terminated, truncated)``,
        each with a leading copy axis."""
        ...


def _describe(env: Any) -> str:
    """The env's registered id and class (or just the class) for error messages."""
    cls = type(env)
    name = f"{cls.__module__}.{cls.__qualname__}"
    spec = getattr(env, "spec", None)
    env_id = getattr(spec, "id", None)
    return f"{env_id} ({name})" if env_id else name


def require_task_family(env: Any) -> TaskFamily:
    """The innermost environment of ``env``, checked to follow :class:`TaskFamily`.

    Gymnasium wrappers (``TimeLimit``, ``OrderEnforcing``, ...) do not forward custom methods,
    so task methods are called on ``env.unwrapped``; this function returns that environment.
    Members are looked up statically, so checking never runs a property's code.

    Args:
        env: a Gymnasium environment, wrapped or not.

    Returns:
        ``env.unwrapped`` (``env`` itself if it has no ``unwrapped``).

    Raises:
        TypeError: if members of the protocol are missing (or not callable); the message names
            each of them and the environment's id and class.
    """
    inner = getattr(env, "unwrapped", env)
    missing = []
    for name, must_call in _MEMBERS:
        try:
            member = inspect.getattr_static(inner, name)
        except AttributeError:
            missing.append(f"{name}()" if must_call else name)
            continue
        if isinstance(member, classmethod | staticmethod):
            member = member.__func__
        if must_call and not callable(member):
            missing.append(f"{name}() (present but not callable)")
    if missing:
        raise TypeError(
            f"{_describe(inner)} is not a task family: missing {', '.join(missing)}. "
            "A task family needs sample_tasks(n) drawing from self.np_random, set_task(task) "
            "and a readable task property (see envs.protocol.TaskFamily)."
        )
    return inner
