"""The raw MuJoCo stepping reference of ``rlmaml bench sampler``: both ways of stepping (one
``mujoco.rollout`` C loop, a Python loop of ``mj_step``) run whole episodes and report them."""

from __future__ import annotations

import queue
import threading

import pytest

pytest.importorskip("mujoco")

from rlmaml.bench.sampler import _raw_worker, raw_rate  # noqa: E402


@pytest.mark.parametrize("in_c", [True, False])
def test_raw_stepping_runs_whole_episodes_and_reports_their_steps(in_c: bool) -> None:
    results: queue.Queue = queue.Queue()
    kwargs = {"frame_skip": 2, "max_episode_steps": 30}
    _raw_worker("rlmaml/HalfCheetahVel-v0", kwargs, 70, 0, in_c, threading.Barrier(1), results)
    steps, seconds = results.get_nowait()
    assert steps == 90  # rounded up to three 30-step episodes
    assert seconds > 0


def test_raw_rate_runs_one_process_per_core_and_combines_their_steps() -> None:
    rate = raw_rate("rlmaml/HalfCheetahVel-v0", {}, processes=2, steps=400)
    assert rate > 0
