"""The one training loop shared by every setting (supervised and RL).

A setting supplies a :class:`Trainable`: one meta-iteration at a time, plus its state as
tensors and JSON metadata. The loop owns everything around it: the progress bar, metrics,
periodic and final checkpoints, resuming, and the refusal of non-finite updates.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rlmaml.runs.checkpoint import latest_checkpoint, save_checkpoint
from rlmaml.runs.metrics import MetricsLogger
from rlmaml.runs.rundir import RunDir


class NonFiniteUpdate(RuntimeError):
    """A meta-iteration produced a non-finite loss or gradient; its update was not applied."""


class TrainingDiverged(RuntimeError):
    """Too many consecutive meta-iterations were refused as non-finite."""


class Trainable(Protocol):
    """What a setting gives the loop."""

    def train_iteration(self, iteration: int) -> dict[str, float]:
        """Run meta-iteration ``iteration``; return scalar metrics; raise NonFiniteUpdate."""

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Everything needed to resume exactly: (tensors, JSON-able metadata)."""

    def load_state(self, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned."""


@dataclass(frozen=True)
class Selection:
    """Which metric picks the best iteration (a validation score, never a test one).

    Every time an iteration reports ``metric`` with a better value than any before, its state
    is kept as the run's *best* checkpoint (``checkpoints/best/``), beside the periodic ones.
    """

    metric: str
    higher_is_better: bool = True

    def improves(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` (``None``: nothing kept yet). NaN never does."""
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value > best if self.higher_is_better else value < best


@dataclass(frozen=True)
class LoopSettings:
    """How long to train and how often to log and checkpoint."""

    iterations: int
    log_every: int = 1
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    max_refused: int = 10
    time_limit_s: float | None = None  # stop (with a checkpoint) once training took this long
    progress: bool = True
    progress_keys: tuple[str, ...] = ()
    selection: Selection | None = None


def ensure_finite(loss: Tensor, tensors: Iterable[Tensor]) -> None:
    """Raise :class:`NonFiniteUpdate` if ``loss`` or any ``.grad`` of ``tensors`` is not finite.

    One fused check, one device synchronisation; call it between ``backward`` and ``step``.
    """
    values = [loss.detach().reshape(-1)] + [
        t.grad.reshape(-1) for t in tensors if t.grad is not None
    ]
    if not bool(torch.isfinite(torch.cat(values)).all()):
        raise NonFiniteUpdate(f"non-finite loss or gradient (loss = {loss.detach().mean().item()})")


def run_training(trainable: Trainable, run: RunDir, settings: LoopSettings, resume: bool) -> int:
    """Train ``trainable`` up to ``settings.iterations``; returns the last completed iteration.

    With ``resume`` the newest complete checkpoint in the run folder is loaded first and the
    metrics written after it are dropped, so a resumed run reads as one that never stopped.
    A checkpoint is written every ``checkpoint_every`` iterations, at the end, and when the run
    is interrupted (Ctrl-C), always of the last good state. With ``settings.selection`` the
    state of the best-scoring iteration is also kept, in ``run.best_checkpoint``.
    """
    start, wall_offset = 0, 0.0
    best = best_score(run) if resume else None
    if resume:
        checkpoint = latest_checkpoint(run.checkpoints)
        if checkpoint is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint in {run.checkpoints}")
        trainable.load_state(checkpoint.tensors, checkpoint.metadata["trainable"])
        start = checkpoint.step
        wall_offset = float(checkpoint.metadata.get("wall_time", 0.0))

    def checkpoint_now(step: int, wall: float) -> None:
        tensors, metadata = trainable.state()
        save_checkpoint(
            run.checkpoints,
            step,
            tensors,
            {"trainable": metadata, "wall_time": wall},
            keep=settings.keep_checkpoints,
        )

    began = time.perf_counter() - wall_offset
    completed, refused = start, 0
    with (
        MetricsLogger(run.path, resume_step=start if resume else None) as metrics,
        _DeferredInterrupt() as interrupt,
    ):
        bar = tqdm(
            range(start, settings.iterations),
            initial=start,
            total=settings.iterations,
            disable=not settings.progress,
            dynamic_ncols=True,
            desc=run.path.name,
        )
        try:
            for iteration in bar:
                try:
                    values = trainable.train_iteration(iteration)
                except NonFiniteUpdate as error:
                    refused += 1
                    bar.write(f"iteration {iteration}: update refused: {error}")
                    if refused >= settings.max_refused:
                        checkpoint_now(completed, time.perf_counter() - began)
                        raise TrainingDiverged(
                            f"{refused} consecutive non-finite updates; stopping. The last good "
                            f"checkpoint is in {run.checkpoints} (resume with --resume after "
                            "lowering the learning rates)."
                        ) from error
                    continue
                refused = 0
                completed = iteration + 1
                wall = time.perf_counter() - began
                if completed % settings.log_every == 0 or completed == settings.iterations:
                    metrics.log(completed, wall_time=wall, **values)
                    shown = {k: values[k] for k in settings.progress_keys if k in values}
                    bar.set_postfix({k: _short(v) for k, v in shown.items()}, refresh=False)
                if completed % settings.checkpoint_every == 0:
                    checkpoint_now(completed, wall)
                selection = settings.selection
                if selection is not None and selection.metric in values:
                    score = float(values[selection.metric])
                    if selection.improves(score, best):
                        best = score
                        _save_best(run, trainable, completed, wall, selection.metric, score)
                if settings.time_limit_s is not None and wall >= settings.time_limit_s:
                    bar.write(f"time limit of {settings.time_limit_s:.0f} s reached")
                    break
                if interrupt.requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            checkpoint_now(completed, time.perf_counter() - began)
            bar.write(
                f"interrupted: checkpoint of iteration {completed} saved in {run.checkpoints}"
            )
            raise
        finally:
            bar.close()
    if completed % settings.checkpoint_every != 0 or completed == start:
        checkpoint_now(completed, time.perf_counter() - began)
    return completed


def best_score(run: RunDir) -> float | None:
    """The score of the run's best checkpoint, or ``None`` if it has none."""
    checkpoint = latest_checkpoint(run.best_checkpoint)
    return None if checkpoint is None else float(checkpoint.metadata["selection"]["value"])


def _save_best(
    run: RunDir, trainable: Trainable, step: int, wall: float, metric: str, value: float
) -> None:
    tensors, metadata = trainable.state()
    save_checkpoint(
        run.best_checkpoint,
        step,
        tensors,
        {"trainable": metadata, "wall_time": wall, "selection": {"metric": metric, "value": value}},
        keep=1,
    )


class _DeferredInterrupt:
    """The first Ctrl-C lets the current iteration finish (so the checkpoint is consistent);
    a second one interrupts at once. Only installed in the main thread."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: stopping after this iteration (Ctrl-C again to abort)", flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _short(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)
