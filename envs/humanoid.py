"""HumanoidDir: the humanoid running forward or backward, the direction drawn per task.

Not in the MAML paper itself; the follow-ups (ProMP's ``HumanoidRandDirec``, the PyTorch
ports) define it on Gymnasium's humanoid with its own reward terms, and so does this module:
it extends ``Humanoid-v5`` (``gymnasium.envs.mujoco.humanoid_v5``) and changes only the sign of
the forward term. :class:`BatchedHumanoidDir` steps many copies at once for the samplers and
reproduces the single env bit for bit (see :mod:`envs.batched_locomotion`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.humanoid_v5 import HumanoidEnv, mass_center

from envs.batched_locomotion import BatchedLocomotion, sum_of_squares
from envs.locomotion import (
    DirectionTasks,
    LocomotionTaskMixin,
    capture_mujoco_warnings,
    constructor_arguments,
    log_compile_messages,
)
from envs.protocol import Task


class HumanoidDirEnv(LocomotionTaskMixin, HumanoidEnv):
    """Humanoid-v5 rewarded for running along ``d * x``, ``d`` = ±1 drawn per task.

    - Observation: Humanoid-v5's default, unchanged, nothing appended: ``qpos[2:]``, ``qvel``,
      ``cinert``, ``cvel``, ``qfrc_actuator`` and ``cfrc_ext`` of the bodies (348 float64
      values; x, y excluded).
    - Action: ``Box(-0.4, 0.4, (17,))``; clipped to the box first when ``clip_actions`` (v5
      charges the raw action; the simulator clamps it either way).
    - Reward, Humanoid-v5's terms with the forward one signed by the task:
      ``forward_reward_weight * d * v_x + healthy_reward * [healthy] - ctrl_cost_weight *
      ||a||^2 - min(contact_cost_weight * ||cfrc_ext||^2, 10)``, where ``v_x = (x_after -
      x_before) / dt`` of the mass-weighted centre of mass of all bodies (v5's
      ``mass_center``), ``dt = 0.015`` (timestep 0.003 x ``frame_skip`` 5). The defaults are
      v5's: 1.25, 5.0, 0.1, 5e-7 (ProMP's ``HumanoidRandDirec`` has the same values,
      its forward weight written as ``0.25 / timestep`` = ``1.25 / dt``).
      ``info`` holds ``reward_forward``, ``reward_survive``, ``reward_ctrl``,
      ``reward_contact``, ``x_position``, ``y_position`` (of the root), ``x_velocity``,
      ``y_velocity`` (of the centre of mass), ``task`` and ``unstable``.
    - Termination: when the root height ``qpos[2]`` leaves ``healthy_z_range = (1.0, 2.0)``
      (v5's), and on an unstable simulation (see :mod:`envs.locomotion`);
      ``rlmaml/HumanoidDir-v0`` is truncated after 200 steps.
    - Task: ``{"direction": d}``, ``d`` = -1.0 (backward) or +1.0 (forward), p = 0.5 each.

    As in v5, the survive bonus is paid only on steps that end healthy (ProMP paid it on the
    terminating step too). The y velocity is not scored.

    Args:
        forward_reward_weight: weight of the directed centre-of-mass velocity.
        healthy_reward: bonus for each step that ends healthy.
        ctrl_cost_weight: weight of ``||a||^2``.
        contact_cost_weight: weight of ``||cfrc_ext||^2`` (the cost is capped by
            ``contact_cost_range``, a v5 keyword).
        healthy_z_range: root heights outside which the episode terminates.
        clip_actions: clip actions to the action box before simulating and charging for them;
            False charges the raw action, as Gymnasium v5 does.
        task: the initial task; None lets the first ``reset`` draw one.
        **kwargs: other Humanoid-v5 keywords (``frame_skip``, ``reset_noise_scale``,
            ``contact_cost_range``, ``include_cinert_in_observation``, ``render_mode``, ...).
    """

    _reward_keys = ("reward_forward", "reward_survive", "reward_ctrl", "reward_contact")

    def __init__(
        self,
        forward_reward_weight: float = 1.25,
        healthy_reward: float = 5.0,
        ctrl_cost_weight: float = 0.1,
        contact_cost_weight: float = 5e-7,
        healthy_z_range: tuple[float, float] = (1.0, 2.0),
        clip_actions: bool = True,
        task: Task | None = None,
        **kwargs: Any,
    ) -> None:
        arguments = constructor_arguments(locals())
        messages: list[str] = []
        with capture_mujoco_warnings(messages):
            HumanoidEnv.__init__(
                self,
                forward_reward_weight=forward_reward_weight,
                healthy_reward=healthy_reward,
                ctrl_cost_weight=ctrl_cost_weight,
                contact_cost_weight=contact_cost_weight,
                healthy_z_range=healthy_z_range,
                **kwargs,
            )
        log_compile_messages(messages)
        self._init_task_family(DirectionTasks(), clip_actions, task)
        utils.EzPickle.__init__(self, **arguments)

    def _tracked_position(self) -> np.ndarray:
        return mass_center(self.model, self.data)

    def _reward_terms(
        self, before: np.ndarray, after: np.ndarray, action: np.ndarray
    ) -> tuple[dict[str, float], dict[str, Any]]:
        x_velocity, y_velocity = (after - before) / self.dt
        forward = self._task_distribution.reward(self._task_value, float(x_velocity))
        terms = {
            "reward_forward": self._forward_reward_weight * forward,
            "reward_survive": float(self.healthy_reward),
            "reward_ctrl": -float(self.control_cost(action)),
            "reward_contact": -float(self.contact_cost),
        }
        info = {
            "x_position": float(self.data.qpos[0]),
            "y_position": float(self.data.qpos[1]),
            "x_velocity": float(x_velocity),
            "y_velocity": float(y_velocity),
        }
        return terms, info

    def _task_terminated(self) -> bool:
        return self._terminate_when_unhealthy and not self.is_healthy


class BatchedHumanoidDir(BatchedLocomotion):
    """Natively batched :class:`HumanoidDirEnv`.

    N copies, each with its own direction, stepped together (see :mod:`envs.batched_locomotion`
    for what is batched); built with :meth:`from_env` from the single env, whose configuration
    it takes. Only the humanoid's pieces are here: the v5 observation (positions, velocities,
    body inertias and velocities, actuator and contact forces, each as v5's switches say), the
    mass-weighted centre of mass as the tracked position, the reward terms (forward, survive,
    control, capped contact), termination outside the healthy height range, and v5's uniform
    velocity noise at reset.
    """

    _env_types = (HumanoidDirEnv,)
    _fields = ("qpos", "qvel", "xipos", "cinert", "cvel", "qfrc_actuator", "cfrc_ext")

    def _healthy(self) -> np.ndarray:
        """Bool ``[N]``: v5's ``is_healthy``, the root height strictly inside the range."""
        low, high = self._env._healthy_z_range
        height = self._arrays["qpos"][:, 2]
        return (low < height) & (height < high)

    def _observations(self) -> np.ndarray:
        env, arrays, n = self._env, self._arrays, self.num_envs
        skip = 2 * int(env._exclude_current_positions_from_observation)
        parts = [arrays["qpos"][:, skip:], arrays["qvel"]]
        if env._include_cinert_in_observation is True:
            parts.append(arrays["cinert"][:, 1:].reshape(n, -1))
        if env._include_cvel_in_observation is True:
            parts.append(arrays["cvel"][:, 1:].reshape(n, -1))
        if env._include_qfrc_actuator_in_observation is True:
            parts.append(arrays["qfrc_actuator"][:, 6:])
        if env._include_cfrc_ext_in_observation is True:
            parts.append(arrays["cfrc_ext"][:, 1:].reshape(n, -1))
        return np.concatenate(parts, axis=1)

    def _tracked_positions(self) -> np.ndarray:
        mass = self.model.body_mass
        return (np.einsum("b,nbj->nj", mass, self._arrays["xipos"]) / mass.sum())[:, :2]

    def _reward_terms(
        self, before: np.ndarray, after: np.ndarray, actions: np.ndarray
    ) -> dict[str, np.ndarray | float]:
        env = self._env
        forward = self._forward_reward(before, after)
        low, high = env._contact_cost_range
        contact = np.clip(
            env._contact_cost_weight * sum_of_squares(self._arrays["cfrc_ext"]), low, high
        )
        return {
            "reward_forward": env._forward_reward_weight * forward,
            "reward_survive": self._healthy() * env._healthy_reward,
            "reward_ctrl": -(env._ctrl_cost_weight * sum_of_squares(actions)),
            "reward_contact": -contact,
        }

    def _task_terminated(self) -> np.ndarray | bool:
        return self._env._terminate_when_unhealthy & ~self._healthy()

    def _reset_state(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """v5's humanoid reset: uniform noise on positions and velocities alike."""
        env = self._env
        scale = env._reset_noise_scale
        qpos = env.init_qpos + rng.uniform(low=-scale, high=scale, size=self.model.nq)
        qvel = env.init_qvel + rng.uniform(low=-scale, high=scale, size=self.model.nv)
        return qpos, qvel
