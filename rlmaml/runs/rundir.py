"""The layout of a run folder, so every part of the toolkit finds files in the same place.

::

    <run>/config.yaml      the resolved config the run was started with
    <run>/checkpoints/     ckpt_XXXXXXXX.{safetensors,json}
    <run>/checkpoints/best the best iteration by the validation score, if the run keeps one
    <run>/metrics.csv      scalar metrics, one row per log call
    <run>/tb/              TensorBoard events
    <run>/eval/            evaluation results and figures
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rlmaml.runs.checkpoint import checkpoint_steps
from rlmaml.runs.metrics import METRICS_FILE, TENSORBOARD_DIR


class RunDir:
    """A run folder, created with its ``checkpoints/`` and ``eval/`` subfolders.

    Args:
        path: The folder; an existing run is reused as is (that is how runs resume).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.eval.mkdir(exist_ok=True)

    @classmethod
    def new(cls, name: str | None = None, base: str | Path = "runs") -> RunDir:
        """Open ``base/name``, or a fresh timestamped folder under ``base`` if no name is given.

        Timestamped names (``20250131-142501``) sort chronologically; a suffix keeps them
        distinct when two runs start within the same second.
        """
        base = Path(base)
        if name is not None:
            return cls(base / name)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        suffix = 0
        while True:
            path = base / (f"{stamp}-{suffix}" if suffix else stamp)
            try:
                path.mkdir(parents=True)  # Fails if taken, even by a concurrent process.
            except FileExistsError:
                suffix += 1
                continue
            return cls(path)

    @property
    def config(self) -> Path:
        """The run's ``config.yaml``."""
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        """Folder of checkpoints."""
        return self.path / "checkpoints"

    @property
    def best_checkpoint(self) -> Path:
        """Folder of the one checkpoint of the best-scoring iteration (validation score)."""
        return self.checkpoints / "best"

    @property
    def metrics(self) -> Path:
        """The run's ``metrics.csv``."""
        return self.path / METRICS_FILE

    @property
    def tb(self) -> Path:
        """Folder of TensorBoard event files."""
        return self.path / TENSORBOARD_DIR

    @property
    def eval(self) -> Path:
        """Folder of evaluation outputs."""
        return self.path / "eval"

    def exists_with_checkpoint(self) -> bool:
        """Whether the run has a complete checkpoint to resume from."""
        return bool(checkpoint_steps(self.checkpoints))

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"
