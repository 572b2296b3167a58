"""Configuration of a supervised meta-learning run; the defaults are the paper's settings.

A YAML file maps onto :class:`SupervisedConfig` through :func:`rlmaml.runs.load_config`, which
names the offending key of any unknown, ill-typed or impossible value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlmaml.runs.config import check
from rlmaml.runs.settings import RunSettings


@dataclass
class SinusoidSettings:
    """Sinusoid regression (paper section 5.1): K support and query points per task."""

    k_support: int = 10
    k_query: int = 10
    eval_k_query: int = 100  # points on which a held-out task's MSE is measured

    def __post_init__(self) -> None:
        for name in ("k_support", "k_query", "eval_k_query"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")


@dataclass
class OmniglotSettings:
    """N-way K-shot Omniglot (paper section 5.2) with the paper's 1200-character split."""

    root: str = "data/omniglot"  # folder with images_background/evaluation (.zip or unpacked)
    cache_dir: str | None = None  # where the decoded 28x28 array is cached (default: root)
    ways: int = 5
    shots: int = 1
    query_shots: int = 1  # query examples per class (the paper's code uses as many as shots)
    rotate: bool = True  # new classes by rotating characters by multiples of 90 degrees
    train_classes: int = 1200
    split_seed: int = 0  # which characters are held out; fixed so every run tests on the same
    filters: int = 64
    # transductive: batch statistics everywhere (the paper's code); per_step: MAML++'s per-step
    # parameters and running statistics, used at evaluation; none: no normalisation
    batch_norm: Literal["transductive", "per_step", "none"] = "transductive"
    batch_norm_momentum: float = 0.1  # per_step: weight of a new batch in the running averages

    def __post_init__(self) -> None:
        for name in ("ways", "shots", "query_shots", "train_classes", "filters"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(
            0.0 < self.batch_norm_momentum <= 1.0,
            "batch_norm_momentum",
            f"must be in (0, 1], got {self.batch_norm_momentum}",
        )


@dataclass
class MetaSettings:
    """The meta-learning algorithm and its outer optimiser."""

    algorithm: Literal["maml", "fomaml", "metasgd", "reptile"] = "maml"
    inner_steps: int = 1
    inner_lr: float = 0.01
    meta_batch: int = 25
    meta_lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    iterations: int = 70_000
    vectorize: bool | Literal["auto"] = "auto"  # vmap over tasks, a loop, or time both
    chunk_size: int | None = None  # adapt at most this many tasks at once under vmap

    def __post_init__(self) -> None:
        for name in ("inner_steps", "meta_batch", "iterations"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(self.inner_lr > 0, "inner_lr", f"must be > 0, got {self.inner_lr}")
        check(self.meta_lr > 0, "meta_lr", f"must be > 0, got {self.meta_lr}")
        check(
            self.chunk_size is None or self.chunk_size >= 1,
            "chunk_size",
            f"must be >= 1 or null, got {self.chunk_size}",
        )


@dataclass
class EvalSettings:
    """Held-out evaluation (``rlmaml evaluate``) and validation during training."""

    steps: int = 10  # inner steps at test time; metrics are reported after 0..steps
    tasks: int = 600
    batch: int = 100  # held-out tasks adapted at once
    val_every: int = 1000  # validate on held-out tasks every this many iterations (0: never)
    val_tasks: int = 100

    def __post_init__(self) -> None:
        for name in ("steps", "val_every"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("tasks", "batch", "val_tasks"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")


@dataclass
class SupervisedConfig:
    """A whole supervised run. ``setting`` picks the task family; its section is used."""

    setting: Literal["sinusoid", "omniglot"]
    seed: int = 0
    sinusoid: SinusoidSettings = field(default_factory=SinusoidSettings)
    omniglot: OmniglotSettings = field(default_factory=OmniglotSettings)
    meta: MetaSettings = field(default_factory=MetaSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    run: RunSettings = field(default_factory=RunSettings)
