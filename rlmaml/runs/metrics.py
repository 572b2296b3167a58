"""Scalar metrics of a run: a CSV file for scripts and plots, TensorBoard for live viewing.

``metrics.csv`` has a ``step`` column and one column per metric name; a row holds the
metrics of one :meth:`MetricsLogger.log` call and leaves other columns empty. Each row is
flushed as soon as it is written so that a killed run loses nothing already logged, and a
resumed run first drops the rows logged after its checkpoint so steps are not repeated.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from types import TracebackType
from typing import IO, Any

METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tb"
_STEP = "step"


class MetricsLogger:
    """Append scalar metrics to ``run_dir/metrics.csv`` and TensorBoard (``run_dir/tb``).

    Opening a logger on a run that already has a ``metrics.csv`` continues that file. Pass
    ``resume_step`` when resuming from a checkpoint: rows with a larger step are dropped
    and TensorBoard hides its events from those steps, because the resumed run logs them
    again.

    Args:
        run_dir: The run folder; created if needed.
        tensorboard: Also write TensorBoard scalars.
        resume_step: Step of the checkpoint the run resumes from, or None for a fresh run.
    """

    def __init__(
        self, run_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self._columns, rows = _read_rows(self.path)
        if resume_step is not None:
            rows = [r for r in rows if float(r[_STEP]) <= resume_step]
        self._file: IO[str] | None = None
        self._replace(rows)
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # Slow import; only when used.

            purge_step = None if resume_step is None else resume_step + 1
            self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=purge_step)

    def log(self, step: int, **scalars: float) -> None:
        """Record ``scalars`` (anything ``float()`` accepts, e.g. 0-dim tensors) at ``step``.

        A metric name not seen before adds a column, which rewrites the file with the wider
        header.
        """
        if self._file is None:
            raise ValueError("MetricsLogger is closed")
        values = {name: float(value) for name, value in scalars.items()}
        new = [name for name in values if name not in self._columns]
        if new:
            _, rows = _read_rows(self.path)
            self._columns += new
            self._replace(rows)
        row = {_STEP: str(step), **{name: repr(value) for name, value in values.items()}}
        self._csv.writerow(row)
        self._file.flush()
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)

    def truncate_after(self, step: int) -> None:
        """Drop CSV rows with a step greater than ``step``.

        TensorBoard events cannot be removed this way; use ``resume_step`` in the
        constructor, which also hides them.
        """
        _, rows = _read_rows(self.path)
        self._replace([r for r in rows if float(r[_STEP]) <= step])

    def close(self) -> None:
        """Close the CSV file and the TensorBoard writer; logging afterwards is an error."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _replace(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite the file with the current header and ``rows``, then reopen it for appending.

        The new content goes to a temporary file renamed over the old one, so a crash
        during the rewrite leaves either the old or the new file, never a mix.
        """
        if self._file is not None:
            self._file.close()
        tmp = self.path.with_name(f".{METRICS_FILE}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._file, fieldnames=self._columns, restval="")


def read_metrics(run_dir: str | Path) -> dict[str, list[float]]:
    """Read ``run_dir/metrics.csv`` into columns of floats, NaN where a row has no value.

    Raises:
        FileNotFoundError: If the run has no metrics file.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in {run_dir}")
    columns, rows = _read_rows(path)
    return {c: [float(r[c]) if r.get(c) else math.nan for r in rows] for c in columns}


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Header and rows of a metrics file (``["step"]`` and no rows if it does not exist).

    A last line without a newline is a row cut short by a crash and is dropped.
    """
    if not path.is_file():
        return [_STEP], []
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    columns = list(reader.fieldnames or [_STEP])
    return columns, list(reader)
