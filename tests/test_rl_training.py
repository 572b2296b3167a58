"""Meta-RL runs end to end on Navigation2D, with tiny budgets."""

import math

import pytest
import torch

from rlmaml.core import expand_params
from rlmaml.rl.config import RLConfig
from rlmaml.rl.experiment import RLExperiment
from rlmaml.runs import ConfigError, RunDir, latest_checkpoint, load_config, read_metrics
from rlmaml.runs.loop import LoopSettings, NonFiniteUpdate, run_training

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(*overrides):
    return load_config(
        RLConfig,
        data={"setting": "rl"},
        overrides=[
            "meta.meta_batch=6",
            "meta.episodes=6",
            "meta.cg_iters=4",
            "policy.hidden=[32, 32]",
            "eval.tasks=12",
            "eval.episodes=6",
            "run.progress=false",
            *overrides,
        ],
    )


def _train(config, path, iterations):
    experiment = RLExperiment(config)
    try:
        run_training(experiment, RunDir(path), LoopSettings(iterations, progress=False), False)
        return {k: v.detach().clone() for k, v in experiment.params.items()}, experiment
    finally:
        experiment.close()


def test_a_seeded_run_is_reproducible(tmp_path):
    first, _ = _train(_config(), tmp_path / "a", 2)
    second, _ = _train(_config(), tmp_path / "b", 2)
    for name in first:
        assert torch.equal(first[name], second[name]), name
    third, _ = _train(_config("seed=1"), tmp_path / "c", 2)
    assert any(not torch.equal(first[n], third[n]) for n in first)


def test_meta_training_makes_one_step_adaptation_pay_off(tmp_path):
    """After a few TRPO meta-iterations, one inner step clearly raises the held-out return."""
    config = _config("meta.meta_batch=10", "meta.episodes=10", "eval.episodes=10")
    _, experiment = _train(config, tmp_path / "trpo", 10)
    result = experiment.evaluate(steps=1, n_tasks=12)
    assert result.steps == [0, 1]
    assert result.mean[1] > result.mean[0] + 5.0, result


def test_the_first_inner_steps_kl_is_logged_and_quadratic_in_a_small_step_size():
    kls = {}
    for lr in (0.01, 0.02):
        experiment = RLExperiment(_config(f"meta.inner_lr={lr}"))
        try:
            kls[lr] = experiment.train_iteration(0)["inner_kl"]
        finally:
            experiment.close()
    # Same seed, same support batch: only the step differs, and KL ~ alpha^2 g^T F g / 2.
    assert kls[0.01] > 0
    assert kls[0.02] / kls[0.01] == pytest.approx(4.0, rel=0.1)


@pytest.mark.parametrize("optimizer", ["ppo", "adam"])
def test_other_outer_optimizers_update_the_policy(tmp_path, optimizer):
    before, _ = _train(_config(f"meta.optimizer={optimizer}"), tmp_path / "zero", 0)
    after, _ = _train(_config(f"meta.optimizer={optimizer}"), tmp_path / optimizer, 2)
    assert all(torch.isfinite(t).all() for t in after.values())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_first_order_runs_and_differs_from_second_order(tmp_path):
    second, _ = _train(_config(), tmp_path / "so", 1)
    first, _ = _train(_config("meta.first_order=true"), tmp_path / "fo", 1)
    assert any(not torch.equal(first[n], second[n]) for n in first)


def test_a_nan_policy_update_is_refused(tmp_path):
    experiment = RLExperiment(_config())
    try:
        with torch.no_grad():
            experiment.params["log_std"].fill_(float("nan"))
        with pytest.raises(NonFiniteUpdate):
            experiment.train_iteration(0)
    finally:
        experiment.close()


@pytest.mark.parametrize(
    ("env_id", "message"),
    [("rlmaml/Nowhere-v0", "Nowhere"), ("CartPole-v1", "sample_tasks")],
)
def test_a_bad_env_fails_at_start_naming_it(env_id, message):
    with pytest.raises(ConfigError, match=f"env.id.*{message}"):
        RLExperiment(_config(f"env.id={env_id}"))


def test_evaluation_follows_the_paper_protocol(tmp_path):
    _, experiment = _train(_config(), tmp_path / "e", 1)
    result = experiment.evaluate(steps=3, n_tasks=5)
    assert result.steps == [0, 1, 2, 3]
    assert result.n_tasks == 5
    # The held-out tasks are reported beside their returns, row for row.
    assert len(result.tasks) == len(result.per_task) == 5
    assert all(set(task) == {"goal"} and len(task["goal"]) == 2 for task in result.tasks)
    assert result.as_dict()["tasks"] == result.tasks
    assert len({tuple(task["goal"]) for task in result.tasks}) == 5
    assert all(c >= 0 for c in result.ci95)
    again = experiment.evaluate(steps=3, n_tasks=5)
    assert again.mean == result.mean


def test_the_process_backend_trains_like_the_in_process_one(tmp_path):
    vectorized, _ = _train(_config(), tmp_path / "v", 1)
    process, _ = _train(_config("sampler.backend=process", "sampler.workers=2"), tmp_path / "p", 1)
    for name in vectorized:
        torch.testing.assert_close(vectorized[name], process[name])


@pytest.mark.parametrize("optimizer", ["trpo", "ppo"])
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, optimizer):
    config = _config(f"meta.optimizer={optimizer}")
    straight, _ = _train(config, tmp_path / "straight", 4)
    run = RunDir(tmp_path / "resumed")
    for iterations, resume in ((2, False), (4, True)):
        experiment = RLExperiment(config)
        try:
            run_training(experiment, run, LoopSettings(iterations, progress=False), resume)
        finally:
            experiment.close()
    for name, value in straight.items():
        assert torch.equal(value, experiment.params[name]), name


def test_validation_keeps_the_best_iteration_without_changing_training(tmp_path):
    plain, _ = _train(_config(), tmp_path / "plain", 4)
    config = _config("eval.val_every=2", "eval.val_tasks=4", "eval.steps=2")
    experiment = RLExperiment(config)
    run = RunDir(tmp_path / "validated")
    settings = LoopSettings(4, progress=False, selection=experiment.selection)
    try:
        run_training(experiment, run, settings, False)
    finally:
        experiment.close()
    for name, value in plain.items():
        assert torch.equal(value, experiment.params[name]), name
    best = latest_checkpoint(run.best_checkpoint)
    metrics = read_metrics(run.path)
    scores = {
        int(step): score
        for step, score in zip(metrics["step"], metrics["val_adapted_return"], strict=True)
        if not math.isnan(score)
    }
    assert sorted(scores) == [2, 4]
    assert best.step == max(scores, key=scores.get)
    assert best.metadata["selection"]["value"] == pytest.approx(scores[best.step])


def test_a_step_budget_trains_alike_on_both_backends_with_more_episodes(tmp_path):
    """With episodes ending early (a generous goal tolerance), a batch counted in time steps
    holds more episodes than asked for, and both backends train to the same parameters."""
    steps = ("sampler.batch_unit=steps", "env.kwargs={goal_tolerance: 0.15}")
    experiment = RLExperiment(_config(*steps))
    try:
        tasks = experiment.task_env.sample_tasks(4)
        traj = experiment.sample(expand_params(experiment.params, 4), tasks, 6, seed=0)
    finally:
        experiment.close()
    assert traj.num_episodes > 6
    assert bool((traj.lengths.sum(dim=1) >= 6 * 100).all())
    vectorized, _ = _train(_config(*steps), tmp_path / "v", 1)
    process, _ = _train(
        _config(*steps, "sampler.backend=process", "sampler.workers=2"), tmp_path / "p", 1
    )
    for name in vectorized:
        torch.testing.assert_close(vectorized[name], process[name])
