"""Episode bookkeeping shared by the natively batched task families.

A batched family steps N copies of an environment in lockstep. Whatever the physics, every
copy's episode ends the same ways: it terminates (the task says so, or the simulation went
unstable) or it is truncated at the horizon, and a copy that is done ignores its later actions.
:class:`BatchedEpisodes` keeps that state once for every family.
"""

from __future__ import annotations

import numpy as np


class BatchedEpisodes:
    """Which of N lockstepped copies are done, and how many steps they have taken.

    Subclasses set ``horizon``, call :meth:`_start_episodes` when they reset, and bracket each
    step with :meth:`_check_within_horizon` and :meth:`_end_step`.
    """

    horizon: int

    def _start_episodes(self, n: int) -> None:
        """Begin N fresh episodes (nothing terminated, truncated or done; no step taken)."""
        self._terminated = np.zeros(n, dtype=bool)
        self._truncated = np.zeros(n, dtype=bool)
        self._done = np.zeros(n, dtype=bool)
        self._elapsed = 0

    @property
    def num_envs(self) -> int:
        """Number of copies N since the last reset."""
        return len(self._done)

    @property
    def elapsed_steps(self) -> int:
        """Steps taken since the last reset."""
        return self._elapsed

    @property
    def active(self) -> np.ndarray:
        """Bool ``[N]``: copies whose next step will be a real transition (not done yet)."""
        return ~self._done

    def _check_within_horizon(self, reset: str) -> None:
        """Refuse a step past the horizon, naming the ``reset`` method to call instead."""
        if self._elapsed >= self.horizon:
            raise RuntimeError(f"horizon of {self.horizon} steps reached; call {reset}() first")

    def _end_step(self, running: np.ndarray, terminated: np.ndarray) -> None:
        """Count a step: copies in ``terminated`` end, every ``running`` one is truncated if
        the horizon is reached now."""
        self._terminated |= terminated
        self._elapsed += 1
        if self._elapsed == self.horizon:
            self._truncated |= running
        self._done |= self._terminated | self._truncated
