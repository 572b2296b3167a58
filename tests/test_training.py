"""Tests of meta-training through the Python API: the shared loop and SupervisedExperiment.

Every run here is tiny (a few iterations, small meta-batches) so the file stays fast on two
busy CPU cores; only the learning test trains for a few hundred (cheap) sinusoid iterations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from rlmaml.runs import RunDir, latest_checkpoint, load_config, read_metrics
from rlmaml.runs.evaluation import AdaptationResult
from rlmaml.runs.loop import (
    LoopSettings,
    NonFiniteUpdate,
    TrainingDiverged,
    ensure_finite,
    run_training,
)
from rlmaml.supervised import OmniglotData
from rlmaml.supervised.config import SupervisedConfig
from rlmaml.supervised.experiment import SupervisedExperiment
from rlmaml.supervised.problems import Problem, build_problem

QUICK = Path(__file__).resolve().parents[1] / "experiments" / "sinusoid_quick.yaml"
RESULT_KEYS = {"metric", "steps", "mean", "ci95", "n_tasks", "change", "change_ci95", "per_task"}


pytestmark = pytest.mark.usefixtures("one_thread")


def quick_config(*overrides: str) -> SupervisedConfig:
    """The sinusoid quick setting with test-sized defaults, then ``overrides``."""
    base = (
        "meta.meta_batch=4",
        "meta.vectorize=true",
        "eval.val_every=0",
        "run.progress=false",
        "run.log_every=1",
    )
    return load_config(SupervisedConfig, QUICK, overrides=[*base, *overrides])


def loop_settings(iterations: int, checkpoint_every: int = 1000, **kwargs: Any) -> LoopSettings:
    return LoopSettings(
        iterations=iterations, checkpoint_every=checkpoint_every, progress=False, **kwargs
    )


def snapshot(experiment: SupervisedExperiment) -> dict[str, Tensor]:
    """Copies of the meta-parameters (model weights and any learned step sizes)."""
    return {k: v.detach().clone() for k, v in experiment.learner.state_tensors().items()}


def assert_same_tensors(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different}"


def full_state(experiment: SupervisedExperiment) -> dict[str, Tensor]:
    """Meta-parameters and optimiser tensors (not the RNG, which differs between processes)."""
    tensors, _ = experiment.state()
    return {k: v.detach().clone() for k, v in tensors.items() if k != "rng/torch"}


# ---------------------------------------------------------------------------------------
# Learning


def test_sinusoid_quick_setting_lowers_post_adaptation_loss(tmp_path: Path) -> None:
    config = quick_config("meta.meta_batch=10")
    experiment = SupervisedExperiment(config)
    before = experiment.evaluate(steps=1, n_tasks=100)
    done = run_training(experiment, RunDir(tmp_path), loop_settings(300, log_every=50), False)
    after = experiment.evaluate(steps=1, n_tasks=100)

    assert done == 300
    assert after.metric == "mse"
    # The same 100 held-out tasks both times: clearly lower after one inner step ...
    assert after.mean[1] < 0.85 * before.mean[1], (before, after)
    # ... and after training, one inner step helps.
    assert after.mean[1] < after.mean[0], after
    assert read_metrics(tmp_path)["step"] == [50.0, 100.0, 150.0, 200.0, 250.0, 300.0]


# ---------------------------------------------------------------------------------------
# Resuming


class Interrupted:
    """A trainable that stops before meta-iteration ``at``: by an error or by Ctrl-C."""

    def __init__(self, inner: SupervisedExperiment, at: int, error: type[BaseException]):
        self.inner, self.at, self.error = inner, at, error

    def train_iteration(self, iteration: int) -> dict[str, float]:
        if iteration == self.at:
            raise self.error("stopped by the test")
        return self.inner.train_iteration(iteration)

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return self.inner.state()

    def load_state(self, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> None:
        self.inner.load_state(tensors, metadata)


@pytest.mark.parametrize(
    ("vectorize", "interruption"),
    [(True, "stop"), (True, "crash"), (True, "ctrl-c"), (False, "stop")],
)
def test_resumed_run_equals_uninterrupted_run(
    tmp_path: Path, vectorize: bool, interruption: str
) -> None:
    n = 6
    # Validation every 2 iterations: it must not disturb the training streams either.
    config = quick_config(f"meta.vectorize={str(vectorize).lower()}", "eval.val_every=2")
    config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, val_tasks=4))

    reference = SupervisedExperiment(config)
    full_dir = RunDir(tmp_path / "full")
    assert run_training(reference, full_dir, loop_settings(n, checkpoint_every=2), False) == n

    split_dir = RunDir(tmp_path / "split")
    first = SupervisedExperiment(config)
    if interruption == "stop":  # a run asked for n/2 iterations, continued up to n
        assert run_training(first, split_dir, loop_settings(n // 2, 2), False) == n // 2
        resume_from = n // 2
    elif interruption == "crash":  # dies after logging iterations past its last checkpoint
        with pytest.raises(RuntimeError, match="stopped by the test"):
            run_training(Interrupted(first, 5, RuntimeError), split_dir, loop_settings(n, 2), False)
        assert read_metrics(split_dir.path)["step"] == [1.0, 2.0, 3.0, 4.0, 5.0]
        resume_from = 4
    else:  # Ctrl-C: the loop checkpoints the last completed iteration and re-raises
        with pytest.raises(KeyboardInterrupt):
            run_training(
                Interrupted(first, 3, KeyboardInterrupt), split_dir, loop_settings(n, 2), False
            )
        resume_from = 3
    checkpoint = latest_checkpoint(split_dir.checkpoints)
    assert checkpoint is not None and checkpoint.step == resume_from

    resumed = SupervisedExperiment(config)
    assert run_training(resumed, split_dir, loop_settings(n, checkpoint_every=2), True) == n

    assert_same_tensors(full_state(resumed), full_state(reference))
    full, split = read_metrics(full_dir.path), read_metrics(split_dir.path)
    assert split["step"] == [float(s) for s in range(1, n + 1)]  # no duplicate or lost step
    assert split["query_loss"] == full["query_loss"]
    assert split["val_mse_post"][1::2] == full["val_mse_post"][1::2]


def test_resume_needs_a_checkpoint(tmp_path: Path) -> None:
    experiment = SupervisedExperiment(quick_config())
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        run_training(experiment, RunDir(tmp_path), loop_settings(2), resume=True)


def test_checkpoints_are_periodic_final_and_pruned(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    settings = loop_settings(7, checkpoint_every=2, keep_checkpoints=2)
    run_training(SupervisedExperiment(quick_config()), run, settings, resume=False)
    steps = sorted(int(p.stem.split("_")[1]) for p in run.checkpoints.glob("ckpt_*.json"))
    assert steps == [6, 7]  # every 2 iterations and at the end, newest 2 kept


def test_resume_uses_the_new_meta_learning_rate(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run_training(SupervisedExperiment(quick_config()), run, loop_settings(2), resume=False)
    lowered = quick_config("meta.meta_lr=0.0001")
    experiment = SupervisedExperiment(lowered)
    run_training(experiment, run, loop_settings(3), resume=True)
    assert experiment.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


# ---------------------------------------------------------------------------------------
# Algorithms


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd", "reptile"])
def test_each_algorithm_trains_and_checkpoints(tmp_path: Path, algorithm: str) -> None:
    config = quick_config(f"meta.algorithm={algorithm}", "meta.meta_lr=0.01")
    experiment = SupervisedExperiment(config)
    initial = snapshot(experiment)
    run = RunDir(tmp_path)
    assert run_training(experiment, run, loop_settings(3), resume=False) == 3

    trained = snapshot(experiment)
    params = [k for k in initial if k.startswith("params/")]
    changed = [k for k in params if not torch.equal(initial[k], trained[k])]
    assert changed == params, f"{algorithm}: unchanged {sorted(set(params) - set(changed))}"
    losses = read_metrics(run.path)["query_loss"]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)

    step_sizes = [k for k in initial if k.startswith("inner_lr/")]
    if algorithm == "metasgd":
        assert step_sizes == [k.replace("params/", "inner_lr/") for k in params]
        assert all(torch.all(initial[k] == config.meta.inner_lr) for k in step_sizes)
        assert all(not torch.equal(initial[k], trained[k]) for k in step_sizes)
    else:
        assert step_sizes == []

    # The final checkpoint restores the same meta-parameters into a fresh experiment.
    fresh = SupervisedExperiment(config)
    checkpoint = latest_checkpoint(run.checkpoints)
    assert checkpoint is not None and checkpoint.step == 3
    fresh.load_state(checkpoint.tensors, checkpoint.metadata["trainable"])
    assert_same_tensors(snapshot(fresh), trained)


# ---------------------------------------------------------------------------------------
# Non-finite updates


def test_ensure_finite() -> None:
    weight = torch.ones(3, requires_grad=True)
    weight.grad = torch.zeros(3)
    ensure_finite(torch.tensor([1.0, 2.0]), [weight, torch.ones(2)])  # no .grad: skipped
    with pytest.raises(NonFiniteUpdate, match="non-finite"):
        ensure_finite(torch.tensor([1.0, math.nan]), [weight])
    weight.grad = torch.tensor([0.0, math.inf, 0.0])
    with pytest.raises(NonFiniteUpdate):
        ensure_finite(torch.tensor(1.0), [weight])


class NanSwitch:
    """A sinusoid problem whose task loss is NaN during chosen meta-iterations."""

    def __init__(self, config: SupervisedConfig, bad: set[int] | None = None, from_: int = -1):
        problem = build_problem(config)
        self.base_loss = problem.task_loss
        self.problem: Problem = dataclasses.replace(problem, task_loss=self.loss)
        self.bad, self.from_, self.on = bad or set(), from_, False

    def loss(self, params: Any, data: Any) -> Tensor:
        value = self.base_loss(params, data)
        return value * math.nan if self.on else value

    def set(self, iteration: int) -> None:
        self.on = iteration in self.bad or 0 <= self.from_ <= iteration

    def trainable(self, experiment: SupervisedExperiment) -> Guarded:
        return Guarded(experiment, self)


class Guarded(Interrupted):
    """Checks that a refused meta-iteration leaves weights and optimiser state untouched."""

    def __init__(self, inner: SupervisedExperiment, switch: NanSwitch | None = None):
        super().__init__(inner, at=-1, error=RuntimeError)
        self.switch, self.refused = switch, 0

    def train_iteration(self, iteration: int) -> dict[str, float]:
        if self.switch is not None:
            self.switch.set(iteration)
        before = full_state(self.inner)
        try:
            return self.inner.train_iteration(iteration)
        except NonFiniteUpdate:
            self.refused += 1
            assert_same_tensors(full_state(self.inner), before)  # nothing applied
            raise
        finally:
            if self.switch is not None:
                self.switch.on = False


def test_isolated_non_finite_updates_are_skipped(tmp_path: Path) -> None:
    config = quick_config()
    switch = NanSwitch(config, bad={1, 3})
    trainable = switch.trainable(SupervisedExperiment(config, problem=switch.problem))
    settings = loop_settings(6, max_refused=2)
    assert run_training(trainable, RunDir(tmp_path), settings, resume=False) == 6
    assert trainable.refused == 2
    # Refused iterations log nothing; the others log their step as usual.
    assert read_metrics(tmp_path)["step"] == [1.0, 3.0, 5.0, 6.0]


def test_repeated_non_finite_updates_stop_training(tmp_path: Path) -> None:
    config = quick_config()
    switch = NanSwitch(config, from_=2)  # iterations 0 and 1 are good
    experiment = SupervisedExperiment(config, problem=switch.problem)
    trainable = switch.trainable(experiment)
    run = RunDir(tmp_path)
    settings = loop_settings(20, checkpoint_every=1, max_refused=3)

    with pytest.raises(TrainingDiverged) as info:
        run_training(trainable, run, settings, resume=False)
    message = str(info.value)
    assert str(run.checkpoints) in message and "3 consecutive" in message
    assert isinstance(info.value.__cause__, NonFiniteUpdate)
    assert trainable.refused == 3

    # The last good checkpoint (iteration 2) holds the current, untouched parameters.
    checkpoint = latest_checkpoint(run.checkpoints)
    assert checkpoint is not None and checkpoint.step == 2
    fresh = SupervisedExperiment(config)
    fresh.load_state(checkpoint.tensors, checkpoint.metadata["trainable"])
    assert_same_tensors(snapshot(fresh), snapshot(experiment))
    assert read_metrics(run.path)["step"] == [1.0, 2.0]


def test_huge_inner_learning_rate_is_refused(tmp_path: Path) -> None:
    trainable = Guarded(SupervisedExperiment(quick_config("meta.inner_lr=1e6")))
    with pytest.raises(TrainingDiverged, match="2 consecutive non-finite updates"):
        run_training(trainable, RunDir(tmp_path), loop_settings(10, max_refused=2), False)
    assert trainable.refused >= 2


def test_divergence_checkpoints_the_last_good_state(tmp_path: Path) -> None:
    config = quick_config()
    switch = NanSwitch(config, from_=3)
    experiment = SupervisedExperiment(config, problem=switch.problem)
    run = RunDir(tmp_path)
    settings = loop_settings(20, checkpoint_every=100, max_refused=2)
    with pytest.raises(TrainingDiverged):
        run_training(switch.trainable(experiment), run, settings, resume=False)
    checkpoint = latest_checkpoint(run.checkpoints)
    assert checkpoint is not None and checkpoint.step == 3


# ---------------------------------------------------------------------------------------
# Evaluation


def test_evaluate_adaptation_result() -> None:
    config = quick_config()
    config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, batch=3))
    experiment = SupervisedExperiment(config)
    params, rng = snapshot(experiment), experiment.rng.bit_generator.state

    result = experiment.evaluate(steps=3, n_tasks=7)  # batches of 3, 3 and 1 tasks
    assert isinstance(result, AdaptationResult)
    assert set(result.as_dict()) == RESULT_KEYS
    assert result.metric == "mse"
    assert result.steps == [0, 1, 2, 3]
    assert result.n_tasks == 7
    assert len(result.mean) == len(result.ci95) == 4
    assert all(math.isfinite(m) and m >= 0 for m in result.mean)
    assert all(math.isfinite(c) and c >= 0 for c in result.ci95)

    # Held-out tasks are fixed per run seed; evaluating touches neither weights nor the
    # training task stream.
    assert experiment.evaluate(steps=3, n_tasks=7) == result
    assert experiment.evaluate(steps=1, n_tasks=7).mean == pytest.approx(result.mean[:2])
    assert_same_tensors(snapshot(experiment), params)
    assert experiment.rng.bit_generator.state == rng

    single = experiment.evaluate(steps=0, n_tasks=1)
    assert single.steps == [0] and single.n_tasks == 1 and single.ci95 == [0.0]


# ---------------------------------------------------------------------------------------
# Omniglot


def test_omniglot_5way_1shot_trains_and_evaluates(
    tmp_path: Path, omniglot_dir: Path, omniglot_cache_dir: Path, omniglot_data: OmniglotData
) -> None:
    del omniglot_data  # requested so the decoded cache exists before the experiment loads it
    config = load_config(
        SupervisedConfig,
        data={"setting": "omniglot"},
        overrides=[
            f"omniglot.root={omniglot_dir}",
            f"omniglot.cache_dir={omniglot_cache_dir}",
            "omniglot.ways=5",
            "omniglot.shots=1",
            "meta.meta_batch=2",
            "meta.inner_lr=0.4",
            "meta.vectorize=true",
            "eval.val_every=0",
            "run.progress=false",
        ],
    )
    experiment = SupervisedExperiment(config)
    assert experiment.problem.name == "omniglot-5w1s"
    initial = snapshot(experiment)
    run = RunDir(tmp_path)
    assert run_training(experiment, run, loop_settings(3), resume=False) == 3
    assert not all(torch.equal(initial[k], v) for k, v in snapshot(experiment).items())

    result = experiment.evaluate(steps=1, n_tasks=4)
    assert set(result.as_dict()) == RESULT_KEYS
    assert result.metric == "accuracy"
    assert result.steps == [0, 1] and result.n_tasks == 4
    assert all(0.0 <= m <= 100.0 for m in result.mean)
    assert all(c >= 0.0 for c in result.ci95)
