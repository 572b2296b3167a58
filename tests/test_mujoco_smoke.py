"""A tiny HalfCheetahVel meta-training run end to end (MuJoCo env, in-process sampler)."""

import math

import pytest
import torch

from rlmaml.rl.config import RLConfig
from rlmaml.rl.experiment import RLExperiment
from rlmaml.runs import RunDir, load_config, read_metrics
from rlmaml.runs.loop import LoopSettings, run_training

pytest.importorskip("mujoco")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_halfcheetah_vel_meta_training_smoke(tmp_path):
    config = load_config(
        RLConfig,
        data={"setting": "rl"},
        overrides=[
            "env.id=rlmaml/HalfCheetahVel-v0",
            "meta.meta_batch=2",
            "meta.episodes=2",
            "meta.cg_iters=2",
            "policy.hidden=[16, 16]",
            "run.progress=false",
        ],
    )
    experiment = RLExperiment(config)
    try:
        before = {k: v.detach().clone() for k, v in experiment.params.items()}
        done = run_training(experiment, RunDir(tmp_path), LoopSettings(2, progress=False), False)
        after = {k: v.detach().clone() for k, v in experiment.params.items()}
    finally:
        experiment.close()
    assert done == 2
    assert all(torch.isfinite(t).all() for t in after.values())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    metrics = read_metrics(tmp_path)
    assert len(metrics["step"]) == 2
    for column, values in metrics.items():
        assert all(math.isfinite(float(v)) for v in values), column
