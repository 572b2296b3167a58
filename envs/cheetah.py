"""HalfCheetah task families: run at a target velocity, or forward/backward (MAML, section 5.3).

Both extend Gymnasium's ``HalfCheetah-v5`` (``gymnasium.envs.mujoco.half_cheetah_v5``) and
change only the reward, the control-cost weight and the solver's warm start. Common to both:

- Observation: the v5 default, unchanged, nothing appended: ``qpos[1:]`` (8) and ``qvel`` (9),
  17 float64 values; the x position is excluded (v5's
  ``exclude_current_positions_from_observation=True``, which can be passed through).
- ``v_x = (x_after - x_before) / dt`` with ``x = data.qpos[0]`` (the root slider, equal to the
  torso's x) and ``dt = 0.05`` (timestep 0.01 x ``frame_skip`` 5).
- Control cost ``ctrl_cost_weight * ||a||^2`` with ``ctrl_cost_weight = 0.05`` (the paper's
  ``0.5 * 1e-1``; v5's default is 0.1), on the action clipped to ``[-1, 1]^6``.
- Never terminates, except on an unstable simulation (see :mod:`envs.locomotion`); the
  200-step horizon is Gymnasium's ``TimeLimit``.
- MuJoCo's constraint solver starts every step cold (``solver_warmstart=False``; v5 warm-starts
  it from the previous step's accelerations). On this model the Newton solver converges in
  about one iteration either way and one step's velocities differ by at most 1e-13 between
  the two (measured over 2,000 random-action steps), so the dynamics are the same; a cold
  start makes each step a function of the state vector alone, which lets the batched twin
  step all copies with one ``mujoco.rollout`` call (:mod:`envs.mujoco_copies`), about twice
  as fast per step as one ``mj_step`` per copy. ``solver_warmstart=True`` restores v5's
  solver (the twin then steps copy by copy).

:class:`BatchedHalfCheetah` steps many copies of either family at once for the samplers and
reproduces them bit for bit (see :mod:`envs.batched_locomotion`).

Differences from the paper's code (``maml_rl``, rllab ``half_cheetah.xml``) and how to close
them with v5 keywords (``experiments/halfcheetah_*.yaml`` do both):

- Model and time step: v5's ``half_cheetah.xml`` with ``dt = 0.05`` (5 frames of 0.01 s);
  rllab's model is the same cheetah but was stepped once per action (``dt = 0.01``), so a
  200-step episode covered 2 s there and covers 10 s here. ``frame_skip=1`` gives the paper's
  dynamics.
- Observation: the paper appended the torso's subtree centre of mass (3 values, including the
  absolute x position) to ``qpos[1:]`` and ``qvel``; the v5 default leaves the x position out.
  ``exclude_current_positions_from_observation=False`` puts the torso's x back (first value).
  It matters for learning, not for the task: the quick settings adapt several times more with
  it (measured in the README), likely because the linear feature baseline predicts the return
  to go better from the distance covered so far.
- Velocity: finite difference of the torso position over the step (as v5 and REFERENCE) rather
  than the instantaneous velocity of the torso's subtree centre of mass at the end of the step
  (rllab's ``get_body_comvel``); the finite difference is the average velocity over the step.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

from envs.batched_locomotion import BatchedLocomotion, sum_of_squares
from envs.locomotion import (
    DirectionTasks,
    LocomotionTaskMixin,
    TaskDistribution,
    VelocityTasks,
    capture_mujoco_warnings,
    constructor_arguments,
    log_compile_messages,
)
from envs.protocol import Task


class _HalfCheetahTaskEnv(LocomotionTaskMixin, HalfCheetahEnv):
    """HalfCheetah-v5 whose forward reward is the task term of ``distribution``."""

    _reward_keys = ("reward_forward", "reward_ctrl")

    def __init__(
        self,
        distribution: TaskDistribution,
        forward_reward_weight: float,
        ctrl_cost_weight: float,
        clip_actions: bool,
        solver_warmstart: bool,
        task: Task | None,
        **kwargs: Any,
    ) -> None:
        messages: list[str] = []
        with capture_mujoco_warnings(messages):
            HalfCheetahEnv.__init__(
                self,
                forward_reward_weight=forward_reward_weight,
                ctrl_cost_weight=ctrl_cost_weight,
                **kwargs,
            )
        log_compile_messages(messages)
        if not solver_warmstart:
            self.model.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_WARMSTART
        self._init_task_family(distribution, clip_actions, task)

    def _tracked_position(self) -> np.ndarray:
        return self.data.qpos[:1].copy()

    def _reward_terms(
        self, before: np.ndarray, after: np.ndarray, action: np.ndarray
    ) -> tuple[dict[str, float], dict[str, Any]]:
        x_velocity = float(after[0] - before[0]) / self.dt
        forward = self._task_distribution.reward(self._task_value, x_velocity)
        terms = {
            "reward_forward": self._forward_reward_weight * forward,
            "reward_ctrl": -float(self.control_cost(action)),
        }
        return terms, {"x_position": float(after[0]), "x_velocity": x_velocity}


class HalfCheetahVelEnv(_HalfCheetahTaskEnv):
    """HalfCheetah running at a target forward velocity drawn per task.

    - Observation: HalfCheetah-v5's default, 17 values (``qpos[1:]``, ``qvel``); nothing
      appended. See :mod:`envs.cheetah` for how it and the model differ from the paper's.
    - Action: ``Box(-1, 1, (6,))`` torques; clipped to the box first when ``clip_actions``.
    - Reward: ``-forward_reward_weight * |v_x - v*| - ctrl_cost_weight * ||a||^2``, with
      ``v_x = (x_after - x_before) / dt`` of the torso (``dt = 0.05``). ``info`` holds
      ``reward_forward``, ``reward_ctrl``, ``x_position``, ``x_velocity``, ``task`` and
      ``unstable``.
    - Termination: none (except an unstable simulation); ``rlmaml/HalfCheetahVel-v0`` is
      truncated after 200 steps.
    - Task: ``{"velocity": v*}``, ``v* ~ U[velocity_low, velocity_high]``.

    Args:
        velocity_low: smallest target velocity drawn.
        velocity_high: largest target velocity drawn.
        forward_reward_weight: weight of the velocity-tracking term.
        ctrl_cost_weight: weight of the control cost (the paper's 0.05).
        clip_actions: clip actions to the action box before simulating and charging for them
            (the paper's setting); False charges the raw action, as Gymnasium v5 does.
        solver_warmstart: start MuJoCo's constraint solver from the previous step's solution, as
            v5 does; False (the default) starts it cold, see :mod:`envs.cheetah`.
        task: the initial task; None lets the first ``reset`` draw one.
        **kwargs: other HalfCheetah-v5 keywords (``frame_skip``, ``reset_noise_scale``,
            ``exclude_current_positions_from_observation``, ``render_mode``, ...).
    """

    def __init__(
        self,
        velocity_low: float = 0.0,
        velocity_high: float = 2.0,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.05,
        clip_actions: bool = True,
        solver_warmstart: bool = False,
        task: Task | None = None,
        **kwargs: Any,
    ) -> None:
        arguments = constructor_arguments(locals())
        super().__init__(
            VelocityTasks(velocity_low, velocity_high),
            forward_reward_weight,
            ctrl_cost_weight,
            clip_actions,
            solver_warmstart,
            task,
            **kwargs,
        )
        utils.EzPickle.__init__(self, **arguments)


class HalfCheetahDirEnv(_HalfCheetahTaskEnv):
    """HalfCheetah running forward or backward, the direction drawn per task.

    - Observation: HalfCheetah-v5's default, 17 values (``qpos[1:]``, ``qvel``); nothing
      appended. See :mod:`envs.cheetah` for how it and the model differ from the paper's.
    - Action: ``Box(-1, 1, (6,))`` torques; clipped to the box first when ``clip_actions``.
    - Reward: ``forward_reward_weight * d * v_x - ctrl_cost_weight * ||a||^2``, with
      ``v_x = (x_after - x_before) / dt`` of the torso (``dt = 0.05``). ``info`` holds
      ``reward_forward``, ``reward_ctrl``, ``x_position``, ``x_velocity``, ``task`` and
      ``unstable``.
    - Termination: none (except an unstable simulation); ``rlmaml/HalfCheetahDir-v0`` is
      truncated after 200 steps.
    - Task: ``{"direction": d}``, ``d`` = -1.0 (backward) or +1.0 (forward), p = 0.5 each.

    Args:
        forward_reward_weight: weight of the directed-velocity term.
        ctrl_cost_weight: weight of the control cost (the paper's 0.05).
        clip_actions: clip actions to the action box before simulating and charging for them
            (the paper's setting); False charges the raw action, as Gymnasium v5 does.
        solver_warmstart: start MuJoCo's constraint solver from the previous step's solution, as
            v5 does; False (the default) starts it cold, see :mod:`envs.cheetah`.
        task: the initial task; None lets the first ``reset`` draw one.
        **kwargs: other HalfCheetah-v5 keywords (``frame_skip``, ``reset_noise_scale``, ...).
    """

    def __init__(
        self,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.05,
        clip_actions: bool = True,
        solver_warmstart: bool = False,
        task: Task | None = None,
        **kwargs: Any,
    ) -> None:
        arguments = constructor_arguments(locals())
        super().__init__(
            DirectionTasks(),
            forward_reward_weight,
            ctrl_cost_weight,
            clip_actions,
            solver_warmstart,
            task,
            **kwargs,
        )
        utils.EzPickle.__init__(self, **arguments)


class BatchedHalfCheetah(BatchedLocomotion):
    """Natively batched :class:`HalfCheetahVelEnv` and :class:`HalfCheetahDirEnv`.

    N copies, each with its own task, stepped together (see :mod:`envs.batched_locomotion` for
    what is batched); built with :meth:`from_env` from the family's single env, whose task
    distribution (velocity or direction) and configuration it takes. Only the cheetah's pieces
    are here: the v5 observation, the root's x as the tracked position, the forward and control
    terms. The cheetah never terminates on its own and reads no contact forces.
    """

    _env_types = (HalfCheetahVelEnv, HalfCheetahDirEnv)
    _contact_forces = False

    def _observations(self) -> np.ndarray:
        skip = int(self._env._exclude_current_positions_from_observation)
        return np.concatenate((self._arrays["qpos"][:, skip:], self._arrays["qvel"]), axis=1)

    def _tracked_positions(self) -> np.ndarray:
        return self._arrays["qpos"][:, :1].copy()

    def _reward_terms(
        self, before: np.ndarray, after: np.ndarray, actions: np.ndarray
    ) -> dict[str, np.ndarray | float]:
        env = self._env
        forward = self._forward_reward(before, after)
        return {
            "reward_forward": env._forward_reward_weight * forward,
            "reward_ctrl": -(env._ctrl_cost_weight * sum_of_squares(actions)),
        }
