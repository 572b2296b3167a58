"""Smoke tests of the ``rlmaml`` command, run as a subprocess like a user would.

One short sinusoid run is trained once per module and shared; each command costs about a
second and a half, most of it importing torch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlmaml.cli import _config_class
from rlmaml.runs import checkpoint_steps, load_config, read_metrics

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "experiments" / "sinusoid_quick.yaml"
# Small enough for a few seconds on a busy machine; validation and checkpoints still happen.
TINY = (
    "meta.iterations=20",
    "meta.meta_batch=5",
    "meta.vectorize=true",
    "eval.val_every=10",
    "eval.val_tasks=5",
    "run.log_every=5",
    "run.checkpoint_every=10",
    "run.progress=false",
)


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "rlmaml.cli", *map(str, args)]


def environment() -> dict[str, str]:
    """This environment with the repository importable and one torch thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def rlmaml(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m rlmaml.cli ARGS`` with one torch thread; capture its output."""
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        env=environment(),
        cwd=cwd or REPO,
        timeout=300,
    )


def overrides(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def assert_clean_failure(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Non-zero exit and a one-line ``rlmaml ...: error:`` message holding every needle."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "error:" in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-iteration sinusoid run folder made by ``rlmaml train``."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = rlmaml("train", QUICK, "--run-dir", run_dir, *overrides(*TINY))
    assert result.returncode == 0, result.stderr
    assert "trained 20 meta-iterations" in result.stdout
    return run_dir


def test_train_leaves_a_complete_run_folder(trained_run: Path) -> None:
    assert (trained_run / "config.yaml").is_file()
    assert "iterations: 20" in (trained_run / "config.yaml").read_text()
    assert checkpoint_steps(trained_run / "checkpoints") == [10, 20]
    assert (trained_run / "learning_curve.png").stat().st_size > 0
    assert list((trained_run / "tb").glob("events.out.tfevents.*"))
    metrics = read_metrics(trained_run)
    assert metrics["step"] == [5.0, 10.0, 15.0, 20.0]
    assert "query_loss" in metrics and "val_mse_post" in metrics


def test_evaluate_prints_one_json_object(trained_run: Path) -> None:
    result = rlmaml("evaluate", trained_run, "--steps", "2", "--tasks", "10", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert {"metric", "steps", "mean", "ci95", "n_tasks"} <= payload.keys()
    assert payload["metric"] == "mse"
    assert payload["steps"] == [0, 1, 2]
    assert payload["n_tasks"] == 10
    assert len(payload["mean"]) == len(payload["ci95"]) == 3
    assert all(c >= 0 for c in payload["ci95"])
    assert payload["iteration"] == 20
    assert (trained_run / "eval" / "adaptation.png").stat().st_size > 0
    assert json.loads((trained_run / "eval" / "adaptation.json").read_text()) == payload


def test_resume_continues_to_the_new_iteration_count(trained_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    result = rlmaml("train", "--resume", "--run-dir", run_dir, "--set", "meta.iterations=30")
    assert result.returncode == 0, result.stderr
    assert "trained 30 meta-iterations" in result.stdout
    assert checkpoint_steps(run_dir / "checkpoints") == [10, 20, 30]
    assert read_metrics(run_dir)["step"] == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    assert "iterations: 30" in (run_dir / "config.yaml").read_text()


def test_new_run_in_an_existing_run_folder_is_refused(trained_run: Path) -> None:
    config_before = (trained_run / "config.yaml").read_text()
    result = rlmaml("train", QUICK, "--run-dir", trained_run, *overrides(*TINY))
    assert_clean_failure(result, "already holds a run", "--resume")
    assert (trained_run / "config.yaml").read_text() == config_before


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("meta.inner_lrr=0.1", ("meta.inner_lrr", "unknown key", "meta.inner_lr")),
        ("meta.meta_batch=abc", ("meta.meta_batch", "expected int")),
        ("omniglot.ways=0", ("omniglot.ways", "must be >= 1")),
        ("meta.inner_lr=-1", ("meta.inner_lr", "must be > 0")),
        ("meta.algorithm=maml2", ("meta.algorithm", "must be one of")),
        ("setting=mnist", ("setting", "sinusoid", "omniglot")),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, override: str, needles: tuple[str, ...]
) -> None:
    run_dir = tmp_path / "run"
    result = rlmaml("train", QUICK, "--run-dir", run_dir, "--set", override)
    assert_clean_failure(result, *needles)
    assert not run_dir.exists()  # nothing is created for a config that does not load


def test_missing_config_file(tmp_path: Path) -> None:
    result = rlmaml("train", tmp_path / "nope.yaml", cwd=tmp_path)
    assert_clean_failure(result, "nope.yaml", "does not exist")
    assert not (tmp_path / "runs").exists()


def test_missing_omniglot_directory_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no_omniglot"
    result = rlmaml(
        "train",
        QUICK,
        "--run-dir",
        tmp_path / "run",
        *overrides("setting=omniglot", f"omniglot.root={missing}", *TINY),
    )
    assert_clean_failure(result, "images_background.zip", "images_evaluation.zip", str(missing))


def test_evaluate_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    result = rlmaml("evaluate", tmp_path / "typo", "--json")
    assert_clean_failure(result, "config.yaml", "does not exist")
    assert result.stdout == ""


def test_evaluate_of_a_missing_folder_creates_nothing(tmp_path: Path) -> None:
    result = rlmaml("evaluate", tmp_path / "typo")
    assert result.returncode != 0
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    "config", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda path: path.name
)
def test_every_shipped_config_is_valid(config: Path) -> None:
    data = yaml.safe_load(config.read_text())
    load_config(_config_class(data, config), data=data)


@pytest.mark.parametrize(
    ("text", "needle"), [("{frame_skip: 1}", "not JSON"), ("[1]", "expected a JSON object")]
)
def test_bench_sampler_env_kwargs_must_be_a_json_object(text: str, needle: str) -> None:
    result = rlmaml("bench", "sampler", "--env-kwargs", text)
    assert_clean_failure(result, "--env-kwargs", needle)


def test_evaluate_applies_config_overrides(trained_run: Path) -> None:
    """``--set`` changes the evaluation: a vanishing inner step size leaves the loss as it was."""
    common = ("evaluate", trained_run, "--steps", "1", "--tasks", "10", "--json")
    adapted = json.loads(rlmaml(*common).stdout)
    frozen = json.loads(rlmaml(*common, "--set", "meta.inner_lr=1e-9").stdout)
    assert frozen["overrides"] == ["meta.inner_lr=1e-9"]
    assert frozen["mean"][0] == adapted["mean"][0]
    assert abs(adapted["mean"][1] - adapted["mean"][0]) > 1e-3 * adapted["mean"][0]
    assert abs(frozen["mean"][1] - frozen["mean"][0]) < 1e-5 * frozen["mean"][0]


def test_evaluate_with_a_name_leaves_the_main_evaluation_alone(trained_run: Path) -> None:
    common = ("evaluate", trained_run, "--steps", "1", "--tasks", "10")
    assert rlmaml(*common).returncode == 0
    main = (trained_run / "eval" / "adaptation.json").read_text()
    named = rlmaml(*common, "--set", "meta.inner_lr=1e-9", "--name", "frozen")
    assert named.returncode == 0, named.stderr
    assert "frozen.json" in named.stdout
    frozen = json.loads((trained_run / "eval" / "frozen.json").read_text())
    assert frozen["overrides"] == ["meta.inner_lr=1e-9"]
    assert (trained_run / "eval" / "frozen.png").is_file()
    assert (trained_run / "eval" / "adaptation.json").read_text() == main


@pytest.mark.parametrize("name", ["../elsewhere", "a/b", ""])
def test_evaluate_rejects_a_name_that_is_not_a_file_name(trained_run: Path, name: str) -> None:
    result = rlmaml("evaluate", trained_run, "--name", name)
    assert_clean_failure(result, "--name", "not a plain file name")


def test_ctrl_c_stops_training_with_a_checkpoint_and_no_traceback(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        command(
            "train",
            QUICK,
            "--run-dir",
            run_dir,
            *overrides("run.checkpoint_every=100000", "meta.iterations=1000000"),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
        cwd=REPO,
    )
    try:
        # Wait for logged iterations: the training loop, which checkpoints on Ctrl-C, is running.
        metrics = run_dir / "metrics.csv"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
            metrics.exists() and len(metrics.read_text().splitlines()) > 1
        ):
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert "interrupted" in stderr
    assert checkpoint_steps(run_dir / "checkpoints")  # saved on the way out
