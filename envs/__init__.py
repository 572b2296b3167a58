"""Gymnasium task families for meta-RL, registered under the ``rlmaml/`` namespace.

Importing this package registers every family, so ``gymnasium.make("rlmaml/Navigation2D-v0")``
works after ``import envs``. Entry points are ``"module:Class"`` strings, so importing the
package loads no simulator; each family's module is imported when it is first made.

To add a family, append a :class:`TaskFamilySpec` to ``_FAMILIES``: it is then registered,
listed in :data:`TASK_FAMILY_IDS` (which the tests iterate over) and, if it names a batched
implementation, returned by :func:`batched_env_for`.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import gymnasium

from envs.protocol import BatchedTaskFamily, Task, TaskFamily, require_task_family


class TaskFamilySpec(NamedTuple):
    """How one task family is registered.

    Attributes:
        id: the Gymnasium id, ``"rlmaml/<Name>-v<N>"``.
        entry_point: ``"module:Class"`` of the Gymnasium environment.
        max_episode_steps: the horizon H, enforced by Gymnasium's ``TimeLimit`` (truncation).
        batched_entry_point: ``"module:Class"`` of a natively batched implementation (an
            :class:`~envs.protocol.BatchedTaskFamily`), or None.
    """

    id: str
    entry_point: str
    max_episode_steps: int
    batched_entry_point: str | None = None


_FAMILIES: tuple[TaskFamilySpec, ...] = (
    TaskFamilySpec(
        "rlmaml/Navigation2D-v0",
        "envs.navigation:Navigation2DEnv",
        100,
        "envs.navigation:BatchedNavigation2D",
    ),
    TaskFamilySpec(
        "rlmaml/HalfCheetahVel-v0",
        "envs.cheetah:HalfCheetahVelEnv",
        200,
        "envs.cheetah:BatchedHalfCheetah",
    ),
    TaskFamilySpec(
        "rlmaml/HalfCheetahDir-v0",
        "envs.cheetah:HalfCheetahDirEnv",
        200,
        "envs.cheetah:BatchedHalfCheetah",
    ),
    TaskFamilySpec("rlmaml/AntVel-v0", "envs.ant:AntVelEnv", 200, "envs.ant:BatchedAnt"),
    TaskFamilySpec("rlmaml/AntDir-v0", "envs.ant:AntDirEnv", 200, "envs.ant:BatchedAnt"),
    TaskFamilySpec("rlmaml/AntGoal-v0", "envs.ant:AntGoalEnv", 200, "envs.ant:BatchedAntGoal"),
    TaskFamilySpec(
        "rlmaml/HumanoidDir-v0",
        "envs.humanoid:HumanoidDirEnv",
        200,
        "envs.humanoid:BatchedHumanoidDir",
    ),
)

TASK_FAMILY_IDS: tuple[str, ...] = tuple(family.id for family in _FAMILIES)
"""Every registered ``rlmaml/`` id."""


def register_task_families() -> None:
    """Register every family with Gymnasium; ids already registered are left alone.

    Runs on ``import envs``; calling it again (or reloading the package) neither re-registers
    nor triggers Gymnasium's "overriding environment" warning.
    """
    for family in _FAMILIES:
        if family.id not in gymnasium.registry:
            gymnasium.register(
                family.id,
                entry_point=family.entry_point,
                max_episode_steps=family.max_episode_steps,
            )


def batched_env_for(env_id: str) -> type[BatchedTaskFamily] | None:
    """The natively batched implementation of ``env_id``, or None if it has none.

    Samplers use this to step all copies of a family together (one NumPy call a step for
    Navigation2D; for the MuJoCo families, one ``mujoco.rollout`` call or one simulator call per
    copy, and NumPy for the rest) when they can, and fall back to a pool of Gymnasium envs
    otherwise.

    Args:
        env_id: a registered Gymnasium id (``rlmaml/`` or any other).

    Raises:
        ValueError: if ``env_id`` is not registered with Gymnasium (likely a typo).
    """
    if env_id not in gymnasium.registry:
        raise ValueError(
            f"{env_id!r} is not a registered Gymnasium id; rlmaml ids are {list(TASK_FAMILY_IDS)}"
        )
    for family in _FAMILIES:
        if family.id == env_id and family.batched_entry_point is not None:
            module_name, class_name = family.batched_entry_point.split(":")
            return getattr(importlib.import_module(module_name), class_name)
    return None


register_task_families()

__all__ = [
    "TASK_FAMILY_IDS",
    "BatchedTaskFamily",
    "Task",
    "TaskFamily",
    "TaskFamilySpec",
    "batched_env_for",
    "register_task_families",
    "require_task_family",
]
