"""Tests of the run-folder infrastructure: configs, checkpoints, RNG state, metrics, plots."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

from rlmaml.runs import (
    ConfigError,
    MetricsLogger,
    RunDir,
    check,
    checkpoint_steps,
    config_to_dict,
    flatten_state,
    latest_checkpoint,
    load_checkpoint,
    load_config,
    load_optimizer_state,
    optimizer_state_to_tensors,
    plot_adaptation_curve,
    plot_learning_curves,
    read_metrics,
    restore_rng,
    restore_torch_rng,
    rng_state,
    save_checkpoint,
    save_config,
    torch_rng_state,
    unflatten_state,
)

# ---------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class DataSection:
    ways: int = 5
    shots: int = 1
    root: str | None = None
    sizes: tuple[int, ...] = (28, 28)

    def __post_init__(self) -> None:
        check(self.ways >= 1, "ways", f"must be >= 1, got {self.ways}")


@dataclass(frozen=True)
class TrainSection:
    lr: float = 1e-3
    steps: int = 100
    optimizer: Literal["adam", "sgd"] = "adam"
    hidden: list[int] = field(default_factory=lambda: [40, 40])
    verbose: bool = False

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    seed: int = 0
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_load_config_from_yaml_builds_nested_dataclasses(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "name: demo\ndata:\n  ways: 20\n  sizes: [32, 32]\ntrain:\n  lr: 1\n  hidden: [8]\n",
    )
    cfg = load_config(ExperimentConfig, path)
    assert cfg.data == DataSection(ways=20, sizes=(32, 32))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # int accepted for float
    assert cfg.train.hidden == [8]
    assert cfg.seed == 0 and cfg.train.optimizer == "adam"


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path: Path) -> None:
    cfg = load_config(ExperimentConfig, _write(tmp_path, "name: x\ntrain:\n  lr: 1e-4\n"))
    assert cfg.train.lr == 1e-4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nsed: 1\n", r"^sed: unknown key \(did you mean seed\?\)"),
        ("name: x\ntrain:\n  lrr: 0.1\n", r"^train\.lrr: unknown key \(did you mean train\.lr"),
        ("name: x\ntrain:\n  zzz: 1\n", r"^train\.zzz: unknown key \(valid keys: lr, steps"),
    ],
)
def test_unknown_key_names_dotted_key_and_suggests(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(ExperimentConfig, _write(tmp_path, text))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"name": "x", "train": {"steps": "many"}}, r"^train\.steps: expected int, got str"),
        ({"name": "x", "train": {"steps": 1.5}}, r"^train\.steps: expected int, got float"),
        ({"name": "x", "train": {"steps": True}}, r"^train\.steps: expected int, got bool"),
        ({"name": "x", "train": {"lr": "fast"}}, r"^train\.lr: expected float, got str"),
        ({"name": "x", "train": {"verbose": 1}}, r"^train\.verbose: expected bool, got int"),
        ({"name": "x", "train": {"hidden": [1, "a"]}}, r"^train\.hidden\[1\]: expected int"),
        ({"name": "x", "data": {"root": 3}}, r"^data\.root: expected str \| None, got int"),
        ({"name": "x", "data": 5}, r"^data: expected a mapping, got int"),
        ({"name": 7}, r"^name: expected str, got int"),
    ],
)
def test_wrong_type_names_the_key(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(ExperimentConfig, data=data)


def test_literal_choice_is_enforced() -> None:
    with pytest.raises(ConfigError, match=r"^train\.optimizer: must be one of \['adam', 'sgd'\]"):
        load_config(ExperimentConfig, data={"name": "x"}, overrides=["train.optimizer=rmsprop"])


def test_missing_required_field() -> None:
    with pytest.raises(ConfigError, match=r"^name: missing required field"):
        load_config(ExperimentConfig)


def test_post_init_value_error_becomes_config_error_naming_dotted_key() -> None:
    with pytest.raises(ConfigError, match=r"^data\.ways: must be >= 1, got 0$") as info:
        load_config(ExperimentConfig, data={"name": "x", "data": {"ways": 0}})
    assert isinstance(info.value, ValueError)
    with pytest.raises(ConfigError, match=r"^train\.lr: must be > 0, got -0\.1$"):
        load_config(ExperimentConfig, data={"name": "x"}, overrides=["train.lr=-0.1"])


def test_overrides_parse_yaml_values_and_win_over_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: demo\ntrain:\n  lr: 0.5\n  steps: 3\n")
    cfg = load_config(
        ExperimentConfig,
        path,
        overrides=[
            "train.lr=0.1",
            "train.hidden=[1, 2]",
            "train.verbose=true",
            "data.root=null",
            "data.sizes=[1,2,3]",
            "seed = 7",
        ],
    )
    assert cfg.train.lr == 0.1 and cfg.train.steps == 3
    assert cfg.train.hidden == [1, 2] and cfg.train.verbose is True
    assert cfg.data.root is None and cfg.data.sizes == (1, 2, 3) and cfg.seed == 7


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lr", r"override must look like key\.sub=value"),
        ("train..lr=1", r"empty key"),
        ("name.sub=1", r"^name\.sub: name is str 'x', not a section"),
        ("train.lrr=1", r"^train\.lrr: unknown key"),
    ],
)
def test_bad_overrides(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(ExperimentConfig, data={"name": "x"}, overrides=[override])


def test_config_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        ExperimentConfig,
        data={"name": "demo", "seed": 3, "data": {"sizes": [1, 2], "root": "/data"}},
        overrides=["train.lr=2.5e-07", "train.optimizer=sgd"],
    )
    plain = config_to_dict(cfg)
    assert plain["data"]["sizes"] == [1, 2]  # plain YAML types
    path = save_config(cfg, tmp_path / "sub" / "config.yaml")
    assert load_config(ExperimentConfig, path) == cfg


# ---------------------------------------------------------------------------------------
# Checkpoints


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = flatten_state(
        {
            "params": {"w": base.t(), "tied": base, "b": torch.zeros(3, dtype=torch.float64)},
            "buffers": {"count": torch.tensor(5), "mask": torch.tensor([True, False])},
        }
    )
    metadata = {"iteration": 10, "note": "hello", "nested": {"loss": 0.25}}
    path = save_checkpoint(tmp_path, 10, tensors, metadata)
    assert path == tmp_path / "ckpt_00000010.json"
    assert (tmp_path / "ckpt_00000010.safetensors").is_file()

    for ckpt in (latest_checkpoint(tmp_path), load_checkpoint(10, tmp_path), load_checkpoint(path)):
        assert ckpt is not None and ckpt.step == 10 and ckpt.metadata == metadata
        assert ckpt.tensors.keys() == tensors.keys()
        for name, tensor in tensors.items():
            assert torch.equal(ckpt.tensors[name], tensor)
            assert ckpt.tensors[name].dtype == tensor.dtype
    restored = unflatten_state(latest_checkpoint(tmp_path).tensors)
    assert set(restored) == {"params", "buffers"}
    assert torch.equal(restored["params"]["w"], base.t())


def test_keep_last_n_checkpoints(tmp_path: Path) -> None:
    for step in range(1, 7):
        save_checkpoint(tmp_path, step, {"x": torch.full((2,), float(step))}, {}, keep=2)
    assert checkpoint_steps(tmp_path) == [5, 6]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt_00000005.json",
        "ckpt_00000005.safetensors",
        "ckpt_00000006.json",
        "ckpt_00000006.safetensors",
    ]
    assert torch.equal(latest_checkpoint(tmp_path).tensors["x"], torch.full((2,), 6.0))


def test_incomplete_checkpoints_are_ignored(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "missing") is None
    save_checkpoint(tmp_path, 1, {"x": torch.ones(1)}, {"ok": True})
    # A crash while writing step 2: tensors written, JSON commit marker never written.
    save_checkpoint(tmp_path / "scratch", 2, {"x": torch.ones(1)}, {})
    (tmp_path / "scratch" / "ckpt_00000002.safetensors").rename(
        tmp_path / "ckpt_00000002.safetensors"
    )
    # A crash while writing step 3's JSON: only a temporary file and a truncated JSON.
    (tmp_path / ".ckpt_00000003.json.abc.tmp").write_text('{"step": 3')
    (tmp_path / "ckpt_00000004.safetensors").write_bytes(b"")
    (tmp_path / "ckpt_00000004.json").write_text('{"step": 4, "meta')

    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.step == 1 and ckpt.metadata == {"ok": True}
    assert checkpoint_steps(tmp_path) == [1]
    with pytest.raises(FileNotFoundError):
        load_checkpoint(2, tmp_path)

    # The next successful save removes the older orphan tensors file.
    save_checkpoint(tmp_path, 5, {"x": torch.ones(1)}, {})
    assert not (tmp_path / "ckpt_00000002.safetensors").exists()
    assert checkpoint_steps(tmp_path) == [1, 5]


def test_metadata_must_be_json_and_nothing_is_written_otherwise(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 1, {"x": torch.ones(1)}, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def _train(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: torch.Generator, steps: int
) -> None:
    for _ in range(steps):
        x = torch.randn(8, 3, generator=data)
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _model_and_adam() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    optimizer = torch.optim.Adam(
        [
            {"params": model[0].parameters(), "lr": 0.01},
            {"params": model[2].parameters(), "lr": 0.05, "betas": (0.8, 0.99), "amsgrad": True},
        ],
        weight_decay=1e-4,
    )
    return model, optimizer


def test_adam_resume_matches_uninterrupted_training(tmp_path: Path) -> None:
    model, optimizer = _model_and_adam()
    _train(model, optimizer, torch.Generator().manual_seed(1), 6)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    data = torch.Generator().manual_seed(1)
    model, optimizer = _model_and_adam()
    _train(model, optimizer, data, 3)
    optim_tensors, optim_meta = optimizer_state_to_tensors(optimizer)
    tensors = flatten_state({"params": model.state_dict(), "optim": optim_tensors})
    save_checkpoint(tmp_path, 3, tensors, {"optim": optim_meta})
    saved_state = optimizer.state_dict()

    fresh_model, fresh_optimizer = _model_and_adam()
    ckpt = latest_checkpoint(tmp_path)
    state = unflatten_state(ckpt.tensors)
    fresh_model.load_state_dict(state["params"])
    load_optimizer_state(fresh_optimizer, state["optim"], ckpt.metadata["optim"])
    restored_state = fresh_optimizer.state_dict()
    assert restored_state["param_groups"] == saved_state["param_groups"]  # betas stay tuples
    for index, entry in saved_state["state"].items():
        for key, value in entry.items():
            assert torch.equal(restored_state["state"][index][key], value)

    _train(fresh_model, fresh_optimizer, data, 3)  # the data stream continues where it was
    for name, value in fresh_model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_numpy_rng_state_round_trip_through_json() -> None:
    for generator in (np.random.default_rng(123), np.random.Generator(np.random.MT19937(5))):
        generator.normal(size=7)
        state = json.loads(json.dumps(rng_state(generator)))
        expected = generator.normal(size=5)
        restored = np.random.Generator(type(generator.bit_generator)())
        restore_rng(restored, state)
        np.testing.assert_array_equal(restored.normal(size=5), expected)
    with pytest.raises(ValueError, match="PCG64"):
        restore_rng(np.random.Generator(np.random.Philox()), rng_state(np.random.default_rng()))


def test_torch_rng_state_round_trip_through_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(7)
    torch.rand(3)
    save_checkpoint(tmp_path, 0, {"rng/torch": torch_rng_state()}, {})
    expected = torch.rand(4)
    torch.manual_seed(99)
    restore_torch_rng(latest_checkpoint(tmp_path).tensors["rng/torch"])
    assert torch.equal(torch.rand(4), expected)


# ---------------------------------------------------------------------------------------
# Metrics, plots, run folder


def test_metrics_csv_header_growth_truncation_and_tensorboard(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, loss=1.0)
        logger.log(2, loss=0.5, accuracy=torch.tensor(0.25))
        logger.log(3, loss=0.25)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,loss,accuracy"
    assert len(lines) == 4
    metrics = read_metrics(tmp_path)
    assert metrics["step"] == [1.0, 2.0, 3.0]
    assert metrics["loss"] == [1.0, 0.5, 0.25]
    assert math.isnan(metrics["accuracy"][0]) and metrics["accuracy"][1] == 0.25
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))

    # Resuming from a checkpoint at step 2: the row at step 3 is dropped, then logged again.
    with MetricsLogger(tmp_path, tensorboard=False, resume_step=2) as logger:
        assert read_metrics(tmp_path)["step"] == [1.0, 2.0]
        logger.log(3, loss=0.2)
        logger.log(4, loss=0.1)
        logger.truncate_after(3)
        logger.log(4, loss=0.15)
    metrics = read_metrics(tmp_path)
    assert metrics["step"] == [1.0, 2.0, 3.0, 4.0]
    assert metrics["loss"] == [1.0, 0.5, 0.2, 0.15]


def test_metrics_rows_survive_without_close_and_partial_line_is_dropped(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(1, loss=1.0)
    assert read_metrics(tmp_path)["loss"] == [1.0]  # flushed, not only buffered
    logger.close()
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("2,0.")  # a row cut short by a crash
    MetricsLogger(tmp_path, tensorboard=False).close()
    assert read_metrics(tmp_path)["step"] == [1.0]
    with pytest.raises(ValueError, match="closed"):
        logger.log(3, loss=0.0)


def test_plots_write_png_files(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in range(10):
            logger.log(step, **{"train/loss": 1 / (step + 1), "eval_return": float(step)})
    out = plot_learning_curves(tmp_path)
    assert out == tmp_path / "learning_curve.png"
    assert out.read_bytes().startswith(b"\x89PNG")
    subset = plot_learning_curves(tmp_path, columns=["eval_return"], out=tmp_path / "a.png")
    assert subset.is_file()
    with pytest.raises(ValueError, match="nope"):
        plot_learning_curves(tmp_path, columns=["nope"])

    curve = plot_adaptation_curve(
        [0, 1, 2, 3],
        [-100.0, -60.0, -50.0, -45.0],
        [5.0, 4.0, 4.0, 3.0],
        tmp_path / "eval" / "adaptation.png",
        reference={"paper": ([0, 1, 2, 3], [-110.0, -65.0, -52.0, -48.0])},
        ylabel="Return",
        title="Cheetah velocity",
    )
    assert curve.read_bytes().startswith(b"\x89PNG")


def test_run_dir_layout(tmp_path: Path) -> None:
    run = RunDir.new(base=tmp_path)
    other = RunDir.new(base=tmp_path)
    assert run.path != other.path and run.path.parent == tmp_path
    assert run.checkpoints.is_dir() and run.eval.is_dir()
    assert run.metrics == run.path / "metrics.csv" and run.tb == run.path / "tb"
    assert run.config == run.path / "config.yaml"
    assert not run.exists_with_checkpoint()
    save_checkpoint(run.checkpoints, 1, {"x": torch.zeros(1)}, {})
    assert RunDir.new("x", base=tmp_path).path == tmp_path / "x"
    assert RunDir(run.path).exists_with_checkpoint()


def test_the_paired_change_from_step_0_removes_the_spread_between_tasks() -> None:
    from rlmaml.runs.evaluation import summarise

    # Tasks of very different difficulty (offsets 0, 100, 200), each gaining 2 then 3 +- 0.5.
    per_task = torch.tensor([[0.0, 2.5, 3.0], [100.0, 101.5, 103.5], [200.0, 202.0, 202.5]])
    result = summarise("average return", per_task)
    assert result.mean == pytest.approx([100.0, 102.0, 103.0])
    assert result.change == pytest.approx([0.0, 2.0, 3.0])
    differences = per_task - per_task[:, :1]
    expected_ci = 1.96 * differences.double().std(0) / math.sqrt(3)
    assert result.change_ci95 == pytest.approx(expected_ci.tolist())
    assert result.change_ci95[0] == 0.0
    # The means' intervals carry the spread of the offsets (about 113); the change's do not.
    assert min(result.ci95) > 100 > 1 > max(result.change_ci95)
    assert result.per_task == per_task.tolist()
    assert json.loads(json.dumps(result.as_dict()))["change"] == result.change


def test_tasks_are_reported_row_for_row_and_must_match_the_rows() -> None:
    from rlmaml.runs.evaluation import summarise

    per_task = torch.tensor([[-50.0, 30.0], [-48.0, 20.0]])
    tasks = [{"direction": -1.0}, {"direction": 1.0}]
    result = summarise("average return", per_task, tasks)
    assert json.loads(json.dumps(result.as_dict()))["tasks"] == tasks
    assert "tasks" not in summarise("mse", per_task).as_dict()
    with pytest.raises(ValueError, match="1 tasks for 2 rows"):
        summarise("average return", per_task, tasks[:1])
