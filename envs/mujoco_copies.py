"""How the natively batched locomotion families step their N MuJoCo simulations.

:class:`~envs.batched_locomotion.BatchedLocomotion` keeps the episode logic; one of the two
classes here owns the simulations and advances them, each reproducing Gymnasium's
``do_simulation`` (``mj_step(model, data, frame_skip)``) bit for bit:

- :class:`PerCopyData`: one ``MjData`` per copy and one ``mj_step`` per copy and env step,
  followed by ``mj_rnePostConstraint`` where the family reads contact forces. Works for every
  model and every ``MjData`` field a family reads, but the Python loop over copies and the
  cache misses of hundreds of live ``MjData`` cost more than the simulation of a small model
  (HalfCheetah: about 10 microseconds per step with 800 copies, 5.5 for one ``MjData``).
- :class:`RolloutStates`: the copies are rows of one state array, advanced together by one
  ``mujoco.rollout`` call per env step (a C loop over the rows on one reused ``MjData``: about
  4.5 microseconds per HalfCheetah step). It applies only where a step is a function of the
  state vector alone and the family reads nothing but ``qpos`` and ``qvel`` afterwards: the
  model's solver warm start must be disabled (``rollout`` starts every row cold, so with a warm
  start its steps would differ from ``mj_step``'s) and no contact forces or other derived
  quantities may be needed. MuJoCo's warnings are not counted per row by ``rollout``, so a
  step during which MuJoCo emitted any message, raised, or produced a non-finite state is
  replayed copy by copy with ``mj_step`` on a scratch ``MjData``, which tells which copies
  warned exactly as the single env's counters do.

Both expose the same interface: :meth:`bind` for N copies, :meth:`reset` to a given state,
:meth:`step`, and :attr:`arrays` with the gathered ``[N, ...]`` fields.
"""

from __future__ import annotations

from collections.abc import Sequence

import mujoco
import numpy as np
from mujoco import rollout

from envs.locomotion import capture_mujoco_warnings

FULL_PHYSICS = mujoco.mjtState.mjSTATE_FULLPHYSICS.value
"""The state ``mujoco.rollout`` reads and writes: time, ``qpos``, ``qvel``, ``act``, ..."""


def put_at_reset_state(
    model: mujoco.MjModel, data: mujoco.MjData, qpos: np.ndarray, qvel: np.ndarray
) -> None:
    """Reset ``data`` and put it at ``(qpos, qvel)``, as a v5 env's ``reset`` does
    (``mj_resetData``, then ``set_state``, which runs ``mj_forward``)."""
    mujoco.mj_resetData(model, data)
    data.qpos[:] = qpos
    data.qvel[:] = qvel
    mujoco.mj_forward(model, data)


def step_copy(
    model: mujoco.MjModel,
    data: mujoco.MjData,
    frame_skip: int,
    contact_forces: bool,
    copy: int,
    messages: list[str],
) -> bool:
    """Gymnasium's ``do_simulation`` for one copy (``data.ctrl`` already set): ``mj_step``, then
    ``mj_rnePostConstraint`` if ``contact_forces``. Returns whether MuJoCo raised
    ``FatalError``, which is noted in ``messages`` under the copy's index."""
    try:
        mujoco.mj_step(model, data, frame_skip)
        if contact_forces:
            mujoco.mj_rnePostConstraint(model, data)
    except mujoco.FatalError as error:
        messages.append(f"copy {copy}: mujoco.FatalError: {error}")
        return True
    return False


def warm_start_disabled(model: mujoco.MjModel) -> bool:
    """Whether ``model``'s constraint solver starts every step cold (no ``qacc_warmstart``)."""
    return bool(model.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_WARMSTART)


class PerCopyData:
    """N copies as N ``MjData``, each stepped by its own ``mj_step`` call.

    Args:
        model: the shared model.
        frame_skip: simulator steps per env step.
        fields: the ``MjData`` arrays to gather into :attr:`arrays` after each reset and step.
        contact_forces: run ``mj_rnePostConstraint`` after each step (for ``cfrc_ext``).
    """

    def __init__(
        self, model: mujoco.MjModel, frame_skip: int, fields: Sequence[str], contact_forces: bool
    ) -> None:
        self.model = model
        self._frame_skip = frame_skip
        self._fields = tuple(fields)
        self._contact_forces = contact_forces
        self.datas: list[mujoco.MjData] = []
        self.arrays: dict[str, np.ndarray] = {}
        """``[N, *shape]`` copies of :attr:`_fields`, as of the last reset or step."""
        self._num = 0
        self._flat: dict[str, np.ndarray] = {}
        self._views: dict[str, list[np.ndarray]] = {}
        self._ctrls: list[np.ndarray] = []
        self._warning_views: list[np.ndarray] = []
        self._warnings_at_reset = np.zeros(0, dtype=np.int64)

    def bind(self, n: int) -> None:
        """Have ``n`` ``MjData`` (reusing earlier ones) and the views and buffers to gather."""
        while len(self.datas) < n:
            self.datas.append(mujoco.MjData(self.model))
        self._num = n
        datas = self.datas[:n]
        self._ctrls = [data.ctrl for data in datas]
        self._warning_views = [data.warning.number for data in datas]
        self._views = {name: [getattr(d, name).reshape(-1) for d in datas] for name in self._fields}
        self._flat = {
            name: np.empty(sum(v.size for v in self._views[name])) for name in self._fields
        }
        self.arrays = {
            name: self._flat[name].reshape(n, *getattr(datas[0], name).shape)
            for name in self._fields
        }

    def reset(self, states: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        """Put copy ``i`` at ``states[i] = (qpos, qvel)`` as the single env's ``set_state``
        does after ``mj_resetData``, and gather."""
        for data, (qpos, qvel) in zip(self.datas[: self._num], states, strict=True):
            put_at_reset_state(self.model, data, qpos, qvel)
        self._gather()
        self._warnings_at_reset = self._warning_counts()

    def step(self, actions: np.ndarray, running: np.ndarray, messages: list[str]) -> np.ndarray:
        """Step the running copies under ``actions``; bool ``[N]``: which copies failed (a MuJoCo
        warning counted since the reset, or a ``mujoco.FatalError``). MuJoCo's messages during
        the step are appended to ``messages``."""
        fatal = np.zeros(self._num, dtype=bool)
        model, frame_skip, contact_forces = self.model, self._frame_skip, self._contact_forces
        datas, ctrls = self.datas, self._ctrls
        with capture_mujoco_warnings(messages):
            for i in np.flatnonzero(running).tolist():
                ctrls[i][:] = actions[i]
                fatal[i] = step_copy(model, datas[i], frame_skip, contact_forces, i, messages)
        self._gather()
        return fatal | (self._warning_counts() != self._warnings_at_reset)

    def _gather(self) -> None:
        """Copy the gathered fields of every copy's ``MjData`` into :attr:`arrays`."""
        for name, views in self._views.items():
            np.concatenate(views, out=self._flat[name])

    def _warning_counts(self) -> np.ndarray:
        """``[N]``: the MuJoCo warnings each copy has counted (``mj_resetData`` zeroes them)."""
        counts = np.concatenate(self._warning_views)
        return counts.reshape(self._num, -1).sum(axis=1, dtype=np.int64)


class RolloutStates:
    """N copies as the rows of one ``[N, nstate]`` state array, stepped by ``mujoco.rollout``.

    :attr:`arrays` holds ``qpos`` and ``qvel`` as views into the state array. See the module
    docstring for when this applies; :meth:`applies` checks it.

    Args:
        model: the shared model; its solver warm start must be disabled.
        frame_skip: simulator steps per env step.
    """

    def __init__(self, model: mujoco.MjModel, frame_skip: int) -> None:
        if not warm_start_disabled(model):
            raise ValueError("RolloutStates needs a model whose solver warm start is disabled")
        self.model = model
        self._frame_skip = frame_skip
        self._scratch = mujoco.MjData(model)
        self._rollout = rollout.Rollout(nthread=0)  # runs on the calling thread
        self._state_size = mujoco.mj_stateSize(model, FULL_PHYSICS)
        # The state is laid out in the order of the mjtState bits: time, qpos, qvel, ...
        self._qpos = slice(1, 1 + model.nq)
        self._qvel = slice(1 + model.nq, 1 + model.nq + model.nv)
        self.states = np.zeros((0, self._state_size))
        """``[N, nstate]`` full physics state of each copy (a row is one copy)."""
        self.arrays: dict[str, np.ndarray] = {}
        """``qpos`` ``[N, nq]`` and ``qvel`` ``[N, nv]``: views into :attr:`states`."""

    @staticmethod
    def applies(model: mujoco.MjModel, fields: Sequence[str], contact_forces: bool) -> bool:
        """Whether a family reading ``fields`` (and contact forces or not) can use this."""
        return warm_start_disabled(model) and not contact_forces and set(fields) <= {"qpos", "qvel"}

    def bind(self, n: int) -> None:
        """Have ``n`` rows."""
        self.states = np.zeros((n, self._state_size))
        self.arrays = {"qpos": self.states[:, self._qpos], "qvel": self.states[:, self._qvel]}

    def reset(self, states: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        """Put copy ``i`` at ``states[i] = (qpos, qvel)`` as the single env's ``set_state``
        does after ``mj_resetData``."""
        model, data = self.model, self._scratch
        for row, (qpos, qvel) in zip(self.states, states, strict=True):
            put_at_reset_state(model, data, qpos, qvel)
            mujoco.mj_getState(model, data, row, FULL_PHYSICS)

    def step(self, actions: np.ndarray, running: np.ndarray, messages: list[str]) -> np.ndarray:
        """Step the running copies under ``actions``; bool ``[N]``: which copies failed (a MuJoCo
        warning during the step, or a ``mujoco.FatalError``). MuJoCo's messages during the step
        are appended to ``messages``."""
        with capture_mujoco_warnings(messages):  # a new message means some row warned
            return self._step(actions, np.flatnonzero(running), messages)

    def _step(self, actions: np.ndarray, rows: np.ndarray, messages: list[str]) -> np.ndarray:
        """:meth:`step` for the running ``rows``, with MuJoCo's messages going to ``messages``."""
        if len(rows) == 0:
            return np.zeros(len(self.states), dtype=bool)
        start = self.states[rows]  # a contiguous copy
        controls = np.ascontiguousarray(
            np.repeat(actions[rows, None, :], self._frame_skip, axis=1), dtype=np.float64
        )
        end = np.empty((len(rows), self._frame_skip, self._state_size))
        heard = len(messages)
        try:
            self._rollout.rollout(
                [self.model] * len(rows),
                [self._scratch],
                start,
                controls,
                state=end,
                nstep=self._frame_skip,
                skip_checks=True,
            )
            clean = len(messages) == heard and bool(np.isfinite(end[:, -1]).all())
        except mujoco.FatalError:
            clean = False
        if clean:
            self.states[rows] = end[:, -1]
            return np.zeros(len(self.states), dtype=bool)
        del messages[heard:]  # the replay reports them again, per copy
        return self._replay(rows, start, actions, messages)

    def _replay(
        self, rows: np.ndarray, start: np.ndarray, actions: np.ndarray, messages: list[str]
    ) -> np.ndarray:
        """Redo one step of ``rows`` from ``start`` copy by copy with ``mj_step``, as the single
        env would, noting which copies warned or raised."""
        failed = np.zeros(len(self.states), dtype=bool)
        model, data = self.model, self._scratch
        for i, state in zip(rows.tolist(), start, strict=True):
            mujoco.mj_setState(model, data, state, FULL_PHYSICS)
            data.warning.number[:] = 0
            data.ctrl[:] = actions[i]
            fatal = step_copy(model, data, self._frame_skip, False, i, messages)
            failed[i] = fatal or bool(data.warning.number.any())
            mujoco.mj_getState(model, data, self.states[i], FULL_PHYSICS)
        data.warning.number[:] = 0  # a later rollout call starts from a clean scratch
        return failed
