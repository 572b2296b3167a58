"""PNG figures of a run: learning curves from ``metrics.csv`` and adaptation curves.

Figures are drawn on a :class:`~matplotlib.figure.Figure` with an explicit Agg canvas
rather than through ``pyplot``, so plotting needs no display, changes no global backend in
the caller's process and leaves no figures open.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rlmaml.runs.metrics import read_metrics

LEARNING_CURVE_FILE = "learning_curve.png"
_MAX_COLUMNS = 3


def plot_learning_curves(
    run_dir: str | Path,
    columns: Sequence[str] | None = None,
    x: str = "step",
    out: str | Path | None = None,
) -> Path:
    """Plot metrics of a run against ``x``, one subplot per metric.

    Rows where a metric is missing (it was logged at other steps) are skipped for that
    metric, so sparse evaluation metrics still draw as lines.

    Args:
        run_dir: Run folder holding ``metrics.csv``.
        columns: Metrics to plot; all except ``x`` by default.
        x: Column for the horizontal axis.
        out: Output file; ``run_dir/learning_curve.png`` by default.

    Returns:
        Path of the PNG written.

    Raises:
        ValueError: If a requested column is not in the file or nothing is left to plot.
    """
    metrics = read_metrics(run_dir)
    names = [c for c in metrics if c != x] if columns is None else list(columns)
    missing = [c for c in [x, *names] if c not in metrics]
    if missing:
        raise ValueError(f"columns {missing} not in metrics; available: {list(metrics)}")
    if not names:
        raise ValueError(f"no metrics to plot in {run_dir}")
    ncols = min(_MAX_COLUMNS, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    xs = np.asarray(metrics[x])
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ys = np.asarray(metrics[name])
        keep = ~np.isnan(ys) & ~np.isnan(xs)
        ax.plot(xs[keep], ys[keep], marker="." if keep.sum() < 30 else None)
        ax.set_title(_readable(name))
        ax.set_xlabel(_readable(x))
        ax.grid(alpha=0.3)
    out = Path(run_dir) / LEARNING_CURVE_FILE if out is None else Path(out)
    return _save(fig, out)


def plot_adaptation_curve(
    steps: Sequence[float],
    means: Sequence[float],
    ci95: Sequence[float],
    out: str | Path,
    reference: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    ylabel: str = "Average return",
    title: str = "Adaptation",
    label: str = "this run",
) -> Path:
    """Plot performance against number of adaptation steps, with 95% confidence intervals.

    Args:
        steps: Number of gradient steps taken at test time, e.g. ``[0, 1, 2, 3]``.
        means: Mean performance after each number of steps.
        ci95: Half-width of the 95% confidence interval of each mean.
        out: Output PNG file.
        reference: Curves to compare with, such as a paper's published numbers, as
            ``{name: (steps, values)}``; drawn dashed.
        ylabel: Vertical axis label.
        title: Figure title.
        label: Legend entry of the measured curve.

    Returns:
        Path of the PNG written.
    """
    if not len(steps) == len(means) == len(ci95):
        raise ValueError(
            f"steps, means and ci95 must have equal lengths, got "
            f"{len(steps)}, {len(means)}, {len(ci95)}"
        )
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.errorbar(steps, means, yerr=ci95, marker="o", capsize=4, label=label)
    for name, (ref_steps, ref_values) in (reference or {}).items():
        ax.plot(ref_steps, ref_values, linestyle="--", marker="s", alpha=0.8, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Number of gradient steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, Path(out))


def _readable(name: str) -> str:
    """Turn a metric name like ``"train/meta_loss"`` into a title like ``"Train / meta loss"``."""
    if name == "wall_time":
        return "Wall time (s)"
    text = name.replace("_", " ").replace("/", " / ")
    return text[:1].upper() + text[1:]


def _save(fig: Figure, out: Path) -> Path:
    """Write ``fig`` as a PNG, creating the parent folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
