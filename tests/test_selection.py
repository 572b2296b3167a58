"""Keeping the best iteration by a validation score, and choosing what ``evaluate`` loads."""

import math

import pytest
import torch

from rlmaml.cli import _checkpoint_to_evaluate
from rlmaml.runs import RunDir, latest_checkpoint, save_checkpoint
from rlmaml.runs.loop import LoopSettings, Selection, run_training


class Scripted:
    """A trainable whose parameter is its iteration count and whose scores are given."""

    def __init__(self, scores):
        self.scores = scores
        self.done = torch.zeros(())

    def train_iteration(self, iteration):
        self.done += 1
        score = self.scores[iteration]
        return {} if score is None else {"val": score}

    def state(self):
        return {"done": self.done.clone()}, {}

    def load_state(self, tensors, metadata):
        self.done = tensors["done"].clone()


def _train(path, scores, selection, iterations=None, resume=False):
    settings = LoopSettings(
        iterations or len(scores), checkpoint_every=2, progress=False, selection=selection
    )
    run = RunDir(path)
    run_training(Scripted(scores), run, settings, resume)
    return latest_checkpoint(run.best_checkpoint)


@pytest.mark.parametrize(("higher_is_better", "step", "value"), [(True, 5, 5.0), (False, 1, 1.0)])
def test_the_best_scoring_iteration_is_kept(tmp_path, higher_is_better, step, value):
    scores = [1.0, None, 3.0, math.nan, 5.0, 4.0]
    best = _train(tmp_path, scores, Selection("val", higher_is_better))
    assert best.step == step
    assert best.tensors["done"].item() == step
    assert best.metadata["selection"] == {"metric": "val", "value": value}


def test_without_selection_no_best_checkpoint_is_written(tmp_path):
    assert _train(tmp_path, [1.0, 2.0], None) is None
    assert not RunDir(tmp_path).best_checkpoint.exists()


def test_a_resumed_run_only_replaces_the_best_with_a_better_one(tmp_path):
    scores = [1.0, 6.0, 2.0, 5.0, 7.0, 3.0]
    assert _train(tmp_path, scores, Selection("val"), iterations=4).step == 2
    # Resuming from iteration 4: 7.0 beats the kept 6.0, 3.0 does not.
    assert _train(tmp_path, scores, Selection("val"), resume=True).step == 5


def test_a_nan_score_never_counts_as_best():
    assert not Selection("val").improves(math.nan, None)
    assert Selection("val").improves(-1.0, None)


def test_evaluate_prefers_the_best_checkpoint_unless_asked_for_the_last(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        _checkpoint_to_evaluate(run, None)
    save_checkpoint(run.checkpoints, 10, {"x": torch.zeros(1)}, {})
    assert _checkpoint_to_evaluate(run, None)[0] == "last"
    with pytest.raises(FileNotFoundError, match="eval.val_every"):
        _checkpoint_to_evaluate(run, "best")
    save_checkpoint(run.best_checkpoint, 4, {"x": torch.ones(1)}, {})
    which, checkpoint = _checkpoint_to_evaluate(run, None)
    assert (which, checkpoint.step) == ("best", 4)
    which, checkpoint = _checkpoint_to_evaluate(run, "last")
    assert (which, checkpoint.step) == ("last", 10)
