"""Run settings shared by every setting's config: device, logging, checkpoints, budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rlmaml.runs.config import check
from rlmaml.runs.loop import LoopSettings, Selection


@dataclass
class RunSettings:
    """Where it runs and how often it logs and checkpoints."""

    device: str = "cpu"
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    progress: bool = True
    time_limit_minutes: float | None = None  # stop early, with a checkpoint, after this long
    threads: int | None = None  # torch CPU threads (default: torch's choice, all cores)

    def __post_init__(self) -> None:
        for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(
            self.time_limit_minutes is None or self.time_limit_minutes > 0,
            "time_limit_minutes",
            f"must be > 0 or null, got {self.time_limit_minutes}",
        )
        check(
            self.threads is None or self.threads >= 1,
            "threads",
            f"must be >= 1, got {self.threads}",
        )

    def loop(
        self,
        iterations: int,
        progress_keys: Sequence[str] = (),
        selection: Selection | None = None,
    ) -> LoopSettings:
        """The training loop's settings for a run of ``iterations`` meta-iterations."""
        return LoopSettings(
            iterations=iterations,
            log_every=self.log_every,
            checkpoint_every=self.checkpoint_every,
            keep_checkpoints=self.keep_checkpoints,
            progress=self.progress,
            progress_keys=tuple(progress_keys),
            selection=selection,
            time_limit_s=None
            if self.time_limit_minutes is None
            else 60.0 * self.time_limit_minutes,
        )
