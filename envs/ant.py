"""Ant task families: target velocity, forward/backward, 2-D goal position (MAML, section 5.3).

All three extend Gymnasium's ``Ant-v5`` (``gymnasium.envs.mujoco.ant_v5``) and change only the
reward terms and their weights. Common to all three:

- Observation: the v5 default, nothing appended: ``qpos[2:]`` (13), ``qvel`` (14) and the
  clipped external contact forces ``clip(cfrc_ext[1:], -1, 1)`` (78), 105 float64 values; the
  torso's x, y position is excluded, except in :class:`AntGoalEnv`, which keeps it (107 values):
  a policy cannot reach a goal position it cannot see.
- ``v_x = (x_after - x_before) / dt`` of the torso (``data.body("torso").xpos``, as v5) with
  ``dt = 0.05`` (RK4 timestep 0.01 x ``frame_skip`` 5).
- Costs, as the paper's code: control ``ctrl_cost_weight * ||a||^2`` with weight 0.005 (the
  paper's ``0.5 * 1e-2 * ||a / 150||^2`` on its ``ctrlrange=150`` actuators; v5 puts the 150
  into the gear, so the action is already in ``[-1, 1]``; v5's default weight is 0.5) and
  contact ``contact_cost_weight * ||clip(cfrc_ext, -1, 1)||^2`` with weight 5e-4 (the paper's
  ``0.5 * 1e-3``, also v5's). Plus the paper's constant ``+0.05`` (``reward_constant``) every
  step, and ``healthy_reward`` (v5's ``reward_survive``) on every step that ends healthy.
- Termination: when the torso height ``qpos[2]`` leaves ``healthy_z_range = [0.2, 1.0]`` or the
  state is not finite (v5's ``is_healthy``, the paper's ``notdone``), and on an unstable
  simulation (see :mod:`envs.locomotion`); the 200-step horizon is Gymnasium's ``TimeLimit``.

:class:`BatchedAnt` (AntVel, AntDir) and :class:`BatchedAntGoal` step many copies at once for
the samplers and reproduce the single envs bit for bit (see :mod:`envs.batched_locomotion`).

Differences from the paper's code (``maml_rl``, rllab ``ant.xml``), why, and which v5 keywords
bring the two closer (``experiments/ant_*.yaml`` pass ``frame_skip=2`` and
``exclude_current_positions_from_observation=False``):

- Model and time step: v5's ``ant.xml`` (RK4, timestep 0.01, ``frame_skip`` 5, ``dt = 0.05``,
  gear 150 with controls in ``[-1, 1]``, initial torso height 0.75); rllab's ant used RK4 with
  timestep 0.02, one simulator step per action (``dt = 0.02``), gear 1 with controls in
  ``[-150, 150]`` (the paper's policy acted in ``[-1, 1]``, rescaled by rllab's ``normalize``)
  and an initial height of 0.55. The costs above are rescaled so that they are the same
  functions of the normalised action. ``frame_skip=2`` gives the paper's ``dt = 0.02``: a
  200-step episode then covers 4 s, as in the paper, instead of v5's 10 s.
- Contact forces: v5 computes ``cfrc_ext`` with ``mj_rnePostConstraint`` after every step, so
  the contact cost and the 78 contact-force observations are real (with ``mujoco-py`` >= 2.0 the
  old ``Ant-v2/v3`` read zeros; ``Ant-v4`` left both out unless ``use_contact_forces=True``; v5
  removed that switch, always charges the contact cost and observes the forces by default,
  ``include_cfrc_ext_in_observation=True``). The paper's observation also contained the world
  body's (always zero) forces, the torso's rotation matrix (9) and its subtree centre of mass (3),
  and the full ``qpos``; here it is v5's default (plus x, y for AntGoal). v5 keywords such as
  ``include_cfrc_ext_in_observation`` and ``exclude_current_positions_from_observation`` pass
  through; ``exclude_current_positions_from_observation=False`` observes the full ``qpos``, as
  the paper did (on the cheetah, observing the x position made the adaptation step several
  times more effective, see :mod:`envs.cheetah`).
- Survive bonus: the paper's ``+1.0`` in AntVel was part of its forward reward and paid on every
  step, the terminating one included; here it is v5's ``healthy_reward`` (default 1.0 for
  AntVel), paid only on steps that end healthy, so a fall costs one more unit. The paper's
  AntDir and AntGoal have no such bonus, so their ``healthy_reward`` defaults to 0 (REFERENCE's
  table reads "+ survive" for AntDir; the paper's code, and its AntDir return of 8.7 over 200
  steps before adaptation, say otherwise; pass ``healthy_reward=1.0`` for the other reading).
- Velocity: finite difference of the torso position (v5, REFERENCE) rather than rllab's
  instantaneous torso subtree COM velocity; AntGoal scores the torso position rather than the
  ant's centre of mass (rllab's ``get_body_com("torso")`` was the torso subtree, i.e. the
  whole ant).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.ant_v5 import AntEnv

from envs.batched_locomotion import BatchedLocomotion, sum_of_squares
from envs.locomotion import (
    DirectionTasks,
    GoalTasks,
    LocomotionTaskMixin,
    TaskDistribution,
    VelocityTasks,
    capture_mujoco_warnings,
    constructor_arguments,
    log_compile_messages,
)
from envs.protocol import Task


class _AntTaskEnv(LocomotionTaskMixin, AntEnv):
    """Ant-v5 with the paper's cost weights and a task term from ``distribution``."""

    _reward_keys = (
        "reward_forward",
        "reward_survive",
        "reward_constant",
        "reward_ctrl",
        "reward_contact",
    )

    def __init__(
        self,
        distribution: TaskDistribution,
        task_reward_weight: float,
        healthy_reward: float,
        constant_reward: float,
        ctrl_cost_weight: float,
        contact_cost_weight: float,
        healthy_z_range: tuple[float, float],
        clip_actions: bool,
        task: Task | None,
        **kwargs: Any,
    ) -> None:
        messages: list[str] = []
        with capture_mujoco_warnings(messages):
            AntEnv.__init__(
                self,
                forward_reward_weight=task_reward_weight,
                ctrl_cost_weight=ctrl_cost_weight,
                contact_cost_weight=contact_cost_weight,
                healthy_reward=healthy_reward,
                healthy_z_range=healthy_z_range,
                **kwargs,
            )
        log_compile_messages(messages)
        self._constant_reward = float(constant_reward)
        self._torso_id = self.model.body(self._main_body).id
        self._init_task_family(distribution, clip_actions, task)

    def _tracked_position(self) -> np.ndarray:
        return self.data.xpos[self._torso_id, :2].copy()

    def _task_term(self, before: np.ndarray, after: np.ndarray) -> dict[str, float]:
        """The task's reward term(s), ``reward_forward`` for velocity and direction tasks."""
        x_velocity = float(after[0] - before[0]) / self.dt
        forward = self._task_distribution.reward(self._task_value, x_velocity)
        return {"reward_forward": self._forward_reward_weight * forward}

    def _reward_terms(
        self, before: np.ndarray, after: np.ndarray, action: np.ndarray
    ) -> tuple[dict[str, float], dict[str, Any]]:
        terms = self._task_term(before, after)
        terms["reward_survive"] = float(self.healthy_reward)
        terms["reward_constant"] = self._constant_reward
        terms["reward_ctrl"] = -float(self.control_cost(action))
        terms["reward_contact"] = -float(self.contact_cost)
        x_velocity, y_velocity = (after - before) / self.dt
        info = {
            "x_position": float(after[0]),
            "y_position": float(after[1]),
            "distance_from_origin": float(np.linalg.norm(after)),
            "x_velocity": float(x_velocity),
            "y_velocity": float(y_velocity),
        }
        return terms, info

    def _task_terminated(self) -> bool:
        return self._terminate_when_unhealthy and not self.is_healthy


class AntVelEnv(_AntTaskEnv):
    """Ant running along x at a target velocity drawn per task.

    - Observation: Ant-v5's default, 105 values (``qpos[2:]``, ``qvel``, clipped contact
      forces); nothing appended. See :mod:`envs.ant` for the differences from the paper.
    - Action: ``Box(-1, 1, (8,))``; clipped to the box first when ``clip_actions``.
    - Reward: ``-forward_reward_weight * |v_x - v*| + healthy_reward * [healthy] +
      constant_reward - ctrl_cost_weight * ||a||^2 - contact_cost_weight *
      ||clip(cfrc_ext, -1, 1)||^2``, ``v_x = (x_after - x_before) / dt`` of the torso. ``info``
      holds ``reward_forward``, ``reward_survive``, ``reward_constant``, ``reward_ctrl``,
      ``reward_contact``, positions and velocities, ``task`` and ``unstable``.
    - Termination: torso height outside ``healthy_z_range``; ``rlmaml/AntVel-v0`` is truncated
      after 200 steps.
    - Task: ``{"velocity": v*}``, ``v* ~ U[velocity_low, velocity_high]``.

    Args:
        velocity_low: smallest target velocity drawn.
        velocity_high: largest target velocity drawn.
        forward_reward_weight: weight of the velocity-tracking term.
        healthy_reward: bonus for each step that ends healthy (the paper's +1.0).
        constant_reward: added to every step's reward (the paper's 0.05).
        ctrl_cost_weight: weight of ``||a||^2`` (the paper's 0.005 for actions in ``[-1, 1]``).
        contact_cost_weight: weight of ``||clip(cfrc_ext, -1, 1)||^2`` (the paper's 5e-4).
        healthy_z_range: torso heights outside which the episode terminates.
        clip_actions: clip actions to the action box before simulating and charging for them
            (the paper's setting); False charges the raw action, as Gymnasium v5 does.
        task: the initial task; None lets the first ``reset`` draw one.
        **kwargs: other Ant-v5 keywords (``frame_skip``, ``reset_noise_scale``,
            ``include_cfrc_ext_in_observation``, ``terminate_when_unhealthy``,
            ``render_mode``, ...).
    """

    def __init__(
        self,
        velocity_low: float = 0.0,
        velocity_high: float = 3.0,
        forward_reward_weight: float = 1.0,
        healthy_reward: float = 1.0,
        constant_reward: float = 0.05,
        ctrl_cost_weight: float = 0.005,
        contact_cost_weight: float = 5e-4,
        healthy_z_range: tuple[float, float] = (0.2, 1.0),
        clip_actions: bool = True,
        task: Task | None = None,
        **kwargs: Any,
    ) -> None:
        arguments = constructor_arguments(locals())
        super().__init__(
            VelocityTasks(velocity_low, velocity_high),
            forward_reward_weight,
            healthy_reward,
            constant_reward,
            ctrl_cost_weight,
            contact_cost_weight,
            healthy_z_range,
            clip_actions,
            task,
            **kwargs,
        )
        utils.EzPickle.__init__(self, **arguments)


class AntDirEnv(_AntTaskEnv):
    """Ant running forward or backward along x, the direction drawn per task.

    - Observation: Ant-v5's default, 105 values (``qpos[2:]``, ``qvel``, clipped contact
      forces); nothing appended. See :mod:`envs.ant` for the differences from the paper.
    - Action: ``Box(-1, 1, (8,))``; clipped to the box first when ``clip_actions``.
    - Reward: ``forward_reward_weight * d * v_x + healthy_reward * [healthy] + constant_reward
      - ctrl_cost_weight * ||a||^2 - contact_cost_weight * ||clip(cfrc_ext, -1, 1)||^2``,
      ``v_x = (x_after - x_before) / dt`` of the torso. ``healthy_reward`` is 0 by default, as
      in the paper's code. ``info`` holds every term (as :class:`AntVelEnv`), ``task`` and
      ``unstable``.
    - Termination: torso height outside ``healthy_z_range``; ``rlmaml/AntDir-v0`` is truncated
      after 200 steps.
    - Task: ``{"direction": d}``, ``d`` = -1.0 (backward) or +1.0 (forward), p = 0.5 each.

    Args:
        forward_reward_weight: weight of the directed-velocity term.
        healthy_reward: bonus for each step that ends healthy (0 in the paper's AntDir).
        constant_reward: added to every step's reward (the paper's 0.05).
        ctrl_cost_weight: weight of ``||a||^2`` (the paper's 0.005 for actions in ``[-1, 1]``).
        contact_cost_weight: weight of ``||clip(cfrc_ext, -1, 1)||^2`` (the paper's 5e-4).
        healthy_z_range: torso heights outside which the episode terminates.
        clip_actions: clip actions to the action box before simulating and charging for them
            (the paper's setting); False charges the raw action, as Gymnasium v5 does.
        task: the initial task; None lets the first ``reset`` draw one.
        **kwargs: other Ant-v5 keywords (``frame_skip``, ``reset_noise_scale``,
            ``include_cfrc_ext_in_observation``, ``terminate_when_unhealthy``,
            ``render_mode``, ...).
    """

    def __init__(
        self,
        forward_reward_weight: float = 1.0,
        healthy_reward: float = 0.0,
        constant_reward: float = 0.05,
        ctrl_cost_weight: float = 0.005,
        contact_cost_weight: float = 5e-4,
        healthy_z_range: tuple[float, float] = (0.2, 1.0),
        clip_actions: bool = True,
        task: Task | None = None,
        **kwargs: Any,
    ) -> None:
        arguments = constructor_arguments(locals())
        super().__init__(
            DirectionTasks(),
            forward_reward_weight,
            healthy_reward,
            constant_reward,
            ctrl_cost_weight,
            contact_cost_weight,
            healthy_z_range,
            clip_actions,
            task,
            **kwargs,
        )
        utils.EzPickle.__init__(self, **arguments)


class AntGoalEnv(_AntTaskEnv):
    """Ant walking to a goal position in the plane drawn per task.

    - Observation: Ant-v5's observation *with* the torso's x, y position kept
      (``exclude_current_positions_from_observation=False``): ``qpos`` (15), ``qvel`` (14),
      clipped contact forces (78), 107 values. See :mod:`envs.ant` for the other differences.
    - Action: ``Box(-1, 1, (8,))``; clipped to the box first when ``clip_actions``.
    - Reward: ``-goal_reward_weight * ||xy - g||_1 + goal_reward_offset + healthy_reward *
      [healthy] + constant_reward - ctrl_cost_weight * ||a||^2 - contact_cost_weight *
      ||clip(cfrc_ext, -1, 1)||^2`` with ``xy`` the torso position after the step.
      ``healthy_reward`` is 0 by default, as in the paper's code. ``info`` holds
      ``reward_goal``, ``reward_offset``, ``reward_survive``, ``reward_constant``,
      ``reward_ctrl``, ``reward_contact``, positions, ``goal_distance`` (Euclidean),
      ``task`` and ``unstable``.
    - Termination: torso height outside ``healthy_z_range``; ``rlmaml/AntGoal-v0`` is truncated
      after 200 steps.
    - Task: ``{"goal": [x, y]}``, goals drawn from ``U[goal_low, goal_high]^2``.

    Args:
        goal_low: lower bound of each goal coordinate.
        goal_high: upper bound of each goal coordinate.
        goal_reward_weight: weight of the L1 distance to the goal.
        goal_reward_offset: added to every step's reward (the paper's 4.0, "make it happy, not
            suicidal": it keeps the reward of a live ant positive near the goal).
        healthy_reward: bonus for each step that ends healthy (0 in the paper's AntGoal).
        constant_reward: added to every step's reward (the paper's 0.05).
        ctrl_cost_weight: weight of ``||a||^2`` (the paper's 0.005 for actions in ``[-1, 1]``).
        contact_cost_weight: weight of ``||clip(cfrc_ext, -1, 1)||^2`` (the paper's 5e-4).
        healthy_z_range: torso heights outside which the episode terminates.
        clip_actions: clip actions to the action box before simulating and charging for them
            (the paper's setting); False charges the raw action, as Gymnasium v5 does.
        task: the initial task; None lets the first ``reset`` draw one.
        **kwargs: other Ant-v5 keywords (``frame_skip``, ``reset_noise_scale``,
            ``include_cfrc_ext_in_observation``, ``terminate_when_unhealthy``,
            ``render_mode``, ...).
    """

    _reward_keys = (
        "reward_goal",
        "reward_offset",
        "reward_survive",
        "reward_constant",
        "reward_ctrl",
        "reward_contact",
    )

    def __init__(
        self,
        goal_low: float = -3.0,
        goal_high: float = 3.0,
        goal_reward_weight: float = 1.0,
        goal_reward_offset: float = 4.0,
        healthy_reward: float = 0.0,
        constant_reward: float = 0.05,
        ctrl_cost_weight: float = 0.005,
        contact_cost_weight: float = 5e-4,
        healthy_z_range: tuple[float, float] = (0.2, 1.0),
        clip_actions: bool = True,
        task: Task | None = None,
        **kwargs: Any,
    ) -> None:
        arguments = constructor_arguments(locals())
        kwargs.setdefault("exclude_current_positions_from_observation", False)
        super().__init__(
            GoalTasks(goal_low, goal_high),
            goal_reward_weight,
            healthy_reward,
            constant_reward,
            ctrl_cost_weight,
            contact_cost_weight,
            healthy_z_range,
            clip_actions,
            task,
            **kwargs,
        )
        self._goal_reward_offset = float(goal_reward_offset)
        utils.EzPickle.__init__(self, **arguments)

    def _task_term(self, before: np.ndarray, after: np.ndarray) -> dict[str, float]:
        goal = float(self._task_distribution.reward(self._task_value, after))
        return {
            "reward_goal": self._forward_reward_weight * goal,
            "reward_offset": self._goal_reward_offset,
        }

    def _reward_terms(
        self, before: np.ndarray, after: np.ndarray, action: np.ndarray
    ) -> tuple[dict[str, float], dict[str, Any]]:
        terms, info = super()._reward_terms(before, after, action)
        info["goal_distance"] = float(np.linalg.norm(after - self._task_value))
        return terms, info


class BatchedAnt(BatchedLocomotion):
    """Natively batched :class:`AntVelEnv` and :class:`AntDirEnv`.

    N copies, each with its own task, stepped together (see :mod:`envs.batched_locomotion` for
    what is batched); built with :meth:`from_env` from the family's single env, whose task
    distribution and configuration it takes. Only the ant's pieces are here: the v5 observation
    (with the clipped contact forces), the torso's xy as the tracked position, the reward terms
    (task, survive, constant, control, contact) and termination outside the healthy height
    range. :class:`BatchedAntGoal` changes the task term only.
    """

    _env_types: tuple[type, ...] = (AntVelEnv, AntDirEnv)
    _fields = ("qpos", "qvel", "xpos", "cfrc_ext")

    def __init__(self, env: Any, horizon: int) -> None:
        super().__init__(env, horizon)
        self._torso_id = env._torso_id

    def _clipped_contact_forces(self) -> np.ndarray:
        """``[N, nbody, 6]``: ``cfrc_ext`` clipped to the contact force range (v5's
        ``contact_forces``)."""
        low, high = self._env._contact_force_range
        return np.clip(self._arrays["cfrc_ext"], low, high)

    def _healthy(self) -> np.ndarray:
        """Bool ``[N]``: v5's ``is_healthy``, a finite state with the torso height in range."""
        qpos, qvel = self._arrays["qpos"], self._arrays["qvel"]
        low, high = self._env._healthy_z_range
        finite = np.isfinite(qpos).all(axis=1) & np.isfinite(qvel).all(axis=1)
        return finite & (low <= qpos[:, 2]) & (qpos[:, 2] <= high)

    def _observations(self) -> np.ndarray:
        env = self._env
        skip = 2 * int(env._exclude_current_positions_from_observation)
        parts = [self._arrays["qpos"][:, skip:], self._arrays["qvel"]]
        if env._include_cfrc_ext_in_observation:
            parts.append(self._clipped_contact_forces()[:, 1:].reshape(self.num_envs, -1))
        return np.concatenate(parts, axis=1)

    def _tracked_positions(self) -> np.ndarray:
        return self._arrays["xpos"][:, self._torso_id, :2].copy()

    def _task_terms(self, before: np.ndarray, after: np.ndarray) -> dict[str, np.ndarray | float]:
        """The task's reward term(s), ``reward_forward`` for velocity and direction tasks."""
        forward = self._forward_reward(before, after)
        return {"reward_forward": self._env._forward_reward_weight * forward}

    def _reward_terms(
        self, before: np.ndarray, after: np.ndarray, actions: np.ndarray
    ) -> dict[str, np.ndarray | float]:
        env = self._env
        terms = self._task_terms(before, after)
        terms["reward_survive"] = self._healthy() * env._healthy_reward
        terms["reward_constant"] = env._constant_reward
        terms["reward_ctrl"] = -(env._ctrl_cost_weight * sum_of_squares(actions))
        contact = sum_of_squares(self._clipped_contact_forces())
        terms["reward_contact"] = -(env._contact_cost_weight * contact)
        return terms

    def _task_terminated(self) -> np.ndarray | bool:
        return self._env._terminate_when_unhealthy & ~self._healthy()


class BatchedAntGoal(BatchedAnt):
    """Natively batched :class:`AntGoalEnv`: :class:`BatchedAnt` with the goal's task terms."""

    _env_types = (AntGoalEnv,)

    def _task_terms(self, before: np.ndarray, after: np.ndarray) -> dict[str, np.ndarray | float]:
        goal = self._distribution.reward(self._task_values, after)
        return {
            "reward_goal": self._env._forward_reward_weight * goal,
            "reward_offset": self._env._goal_reward_offset,
        }
