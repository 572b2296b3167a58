"""Configuration of a meta-RL run; defaults are the MAML paper's (REFERENCE.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rlmaml.runs.config import check
from rlmaml.runs.settings import RunSettings


@dataclass
class EnvSettings:
    """The task family: a registered Gymnasium id following the task-family protocol."""

    id: str = "rlmaml/Navigation2D-v0"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SamplerSettings:
    """Which sampling backend collects trajectories (they give identical trajectories)."""

    backend: Literal["vectorized", "process"] = "vectorized"
    workers: int | None = None  # process backend: worker processes (default: all cores)
    timeout_s: float = 60.0  # process backend: a worker silent this long is reported
    # How meta.episodes and eval.episodes count a batch: "episodes" runs exactly that many
    # per task; "steps" runs whole episodes until they hold episodes x horizon time steps per
    # task, as the paper's code did (more, shorter episodes when they end early; see
    # rlmaml/rl/step_budget.py).
    batch_unit: Literal["episodes", "steps"] = "episodes"

    def __post_init__(self) -> None:
        check(
            self.workers is None or self.workers >= 1,
            "workers",
            f"must be >= 1, got {self.workers}",
        )
        check(self.timeout_s > 0, "timeout_s", f"must be > 0, got {self.timeout_s}")


@dataclass
class PolicySettings:
    """Gaussian MLP policy with a state-independent learned log-std."""

    hidden: list[int] = field(default_factory=lambda: [100, 100])
    init_std: float = 1.0
    init: Literal["xavier", "torch"] = "xavier"  # the paper code's, or nn.Linear's default

    def __post_init__(self) -> None:
        check(all(h >= 1 for h in self.hidden), "hidden", f"sizes must be >= 1, got {self.hidden}")
        check(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")


@dataclass
class RLMetaSettings:
    """Inner loop, outer optimiser and the amount of data per meta-iteration."""

    meta_batch: int = 20  # tasks per meta-iteration
    episodes: int = 20  # trajectories per task and phase ("fast batch")
    inner_steps: int = 1
    inner_lr: float = 0.1
    first_order: bool = False
    optimizer: Literal["trpo", "ppo", "adam"] = "trpo"
    iterations: int = 500
    gamma: float = 0.99
    gae_lambda: float = 1.0
    normalize_advantages: bool = True
    # TRPO
    max_kl: float = 0.01
    damping: float = 1e-5
    cg_iters: int = 10
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15
    fisher_subsample: int = 1  # Fisher-vector products on every n-th row (episode) per task
    # PPO-clip (ProMP) and Adam
    outer_lr: float = 1e-3
    ppo_clip: float = 0.3
    ppo_epochs: int = 5
    inner_kl_coef: float = 5e-4
    vectorize: bool = True  # adapt tasks with vmap (True) or a loop

    def __post_init__(self) -> None:
        for name in (
            "meta_batch",
            "episodes",
            "inner_steps",
            "iterations",
            "cg_iters",
            "max_backtracks",
            "fisher_subsample",
            "ppo_epochs",
        ):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("inner_lr", "max_kl", "outer_lr", "ppo_clip"):
            check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        for name in ("gamma", "gae_lambda", "backtrack_ratio"):
            value = getattr(self, name)
            check(0 < value <= 1, name, f"must be in (0, 1], got {value}")
        check(self.damping >= 0, "damping", f"must be >= 0, got {self.damping}")


@dataclass
class RLEvalSettings:
    """Adaptation on held-out tasks: the paper's protocol (alpha, then alpha/2 per step).

    With ``val_every`` the same protocol runs during training on ``val_tasks`` validation
    tasks (a task stream of their own, never the test tasks); the iteration with the best
    average return over steps 1..``steps`` is kept as the run's best checkpoint, which
    ``rlmaml evaluate`` then uses ("the best iteration is kept", as in the paper's code).
    """

    steps: int = 3
    tasks: int = 40
    episodes: int = 40
    val_every: int = 0  # validate every this many meta-iterations (0: never)
    val_tasks: int = 40

    def __post_init__(self) -> None:
        for name in ("steps", "val_every"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("tasks", "episodes", "val_tasks"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")


@dataclass
class RLConfig:
    """A whole meta-RL run."""

    setting: Literal["rl"]
    seed: int = 0
    env: EnvSettings = field(default_factory=EnvSettings)
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    meta: RLMetaSettings = field(default_factory=RLMetaSettings)
    eval: RLEvalSettings = field(default_factory=RLEvalSettings)
    run: RunSettings = field(default_factory=lambda: RunSettings(log_every=1, checkpoint_every=10))
