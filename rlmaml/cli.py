"""The ``rlmaml`` command: ``train``, ``evaluate`` and ``bench``.

Run ``rlmaml <command> --help`` for the options of each.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from rlmaml.rl.config import RLConfig
from rlmaml.runs import (
    Checkpoint,
    ConfigError,
    RunDir,
    latest_checkpoint,
    load_config,
    read_metrics,
    save_config,
)
from rlmaml.runs.evaluation import AdaptationResult
from rlmaml.runs.loop import TrainingDiverged, run_training
from rlmaml.runs.plots import plot_adaptation_curve, plot_learning_curves
from rlmaml.supervised.config import SupervisedConfig
from rlmaml.supervised.experiment import SupervisedExperiment

# The config's ``setting`` key picks its config class; the class picks the experiment.
SETTINGS: dict[str, type] = {
    "sinusoid": SupervisedConfig,
    "omniglot": SupervisedConfig,
    "rl": RLConfig,
}


def _experiment(config: SupervisedConfig | RLConfig):
    if isinstance(config, RLConfig):
        from rlmaml.rl.experiment import RLExperiment

        return RLExperiment(config)
    return SupervisedExperiment(config)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlmaml`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError, TrainingDiverged) as error:
        print(f"rlmaml {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # The training loop has already saved a checkpoint and said where; no traceback.
        print(f"rlmaml {args.command}: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlmaml", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="meta-train from a YAML config")
    train.add_argument(
        "config", type=Path, nargs="?", help="YAML config (not needed with --resume)"
    )
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set meta.inner_lr=0.1 (repeatable)",
    )
    train.add_argument("--run-dir", type=Path, help="run folder (default: runs/<config>-<time>)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its last checkpoint",
    )
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="adaptation on held-out tasks")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument(
        "--steps", type=int, help="inner steps (default: the config's eval.steps)"
    )
    evaluate.add_argument("--tasks", type=int, help="held-out tasks (default: eval.tasks)")
    evaluate.add_argument("--episodes", type=int, help="RL: trajectories per step (eval.episodes)")
    evaluate.add_argument(
        "--checkpoint",
        choices=["best", "last"],
        help="which state to evaluate: the best iteration by the validation score (the default "
        "when the run kept one) or the last checkpoint",
    )
    evaluate.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of the run's config for this evaluation, e.g. "
        "--set sampler.batch_unit=steps (repeatable)",
    )
    evaluate.add_argument(
        "--name",
        type=_output_name,
        default="adaptation",
        help="write RUN_DIR/eval/NAME.json and NAME.png (default: adaptation), so that an "
        "evaluation with other settings does not replace the main one",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=_evaluate)

    bench = commands.add_parser("bench", help="speed benchmarks against other libraries")
    bench.add_argument("what", choices=["supervised", "rl", "sampler"])
    bench.add_argument("--env", default="rlmaml/HalfCheetahVel-v0", help="sampler: env id")
    bench.add_argument(
        "--env-kwargs",
        type=_json_object,
        default={},
        metavar="JSON",
        help="sampler: keywords for the env, e.g. '{\"frame_skip\": 1}' (default: none)",
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--repeats", type=int, default=10, help="timed repetitions per case")
    bench.add_argument(
        "--config",
        help="rl: the run config whose iteration is timed (default: "
        "experiments/navigation2d.yaml); sampler: the config of the meta-iteration timed "
        "after the rates (default: the family's paper config in experiments/, if any)",
    )
    bench.add_argument(
        "--fisher-subsample",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 4, 10],
        metavar="N,N,...",
        help="rl: Fisher-product subsamples to time (default 1,4,10)",
    )
    bench.set_defaults(handler=_bench)
    return parser


def _json_object(text: str) -> dict:
    """A JSON object given on the command line (argparse reports the error if it is not)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _output_name(text: str) -> str:
    """A file-name stem for evaluation outputs: letters, digits, ``-``, ``_`` and ``.``."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plain file name (letters, digits, '-', '_', '.')"
        )
    return text


def _require_run_folder(path: Path) -> None:
    """Fail before anything is created if ``path`` is not a run folder."""
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path / 'config.yaml'} does not exist: is {path} a run folder?")


def _config_class(data: object, where: Path) -> type:
    setting = data.get("setting") if isinstance(data, dict) else None
    if setting not in SETTINGS:
        raise ConfigError(f"setting: must be one of {sorted(SETTINGS)} in {where}, got {setting!r}")
    return SETTINGS[setting]


def _load(path: Path, overrides: Sequence[str]) -> SupervisedConfig:
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    return load_config(_config_class(data, path), data=data, overrides=overrides)


def _train(args: argparse.Namespace) -> int:
    if args.resume:
        if args.run_dir is None:
            raise ConfigError("--resume needs --run-dir naming the run to continue")
        _require_run_folder(args.run_dir)
        run = RunDir(args.run_dir)
        config = _load(run.config, args.overrides)
    else:
        if args.config is None:
            raise ConfigError("train needs a CONFIG file (or --resume with --run-dir)")
        config = _load(args.config, args.overrides)
        run = (
            RunDir(args.run_dir)
            if args.run_dir
            else RunDir(Path("runs") / f"{args.config.stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        )
        if run.exists_with_checkpoint():
            raise ConfigError(f"{run.path} already holds a run; use --resume or another --run-dir")
    save_config(config, run.config)
    experiment = _experiment(config)
    settings = config.run.loop(
        config.meta.iterations, experiment.progress_keys, experiment.selection
    )
    try:
        done = run_training(experiment, run, settings, resume=args.resume)
    finally:
        experiment.close()
    curves = _plot_run(run, experiment.progress_keys)
    print(f"trained {done} meta-iterations; run folder {run.path}; plots {', '.join(curves)}")
    return 0


def _plot_run(run: RunDir, headline: Sequence[str]) -> list[str]:
    """Learning curves against iterations, and the headline metrics against wall time."""
    metrics = read_metrics(run.path)
    columns = [c for c in metrics if c not in ("step", "wall_time") and not c.endswith("_s")]
    paths = [plot_learning_curves(run.path, columns=columns)]
    timed = [c for c in headline if c in metrics]
    if timed:
        paths.append(
            plot_learning_curves(
                run.path, columns=timed, x="wall_time", out=run.path / "curve_vs_time.png"
            )
        )
    return [str(p) for p in paths]


def _evaluate(args: argparse.Namespace) -> int:
    _require_run_folder(args.run_dir)
    run = RunDir(args.run_dir)
    which, checkpoint = _checkpoint_to_evaluate(run, args.checkpoint)
    overrides = [
        f"eval.{key}={value}"
        for key, value in (
            ("steps", args.steps),
            ("tasks", args.tasks),
            ("episodes", args.episodes),
        )
        if value is not None
    ]
    config = _load(run.config, [*overrides, *args.overrides])
    experiment = _experiment(config)
    try:
        experiment.load_state(checkpoint.tensors, checkpoint.metadata["trainable"])
        result = experiment.evaluate(config.eval.steps, config.eval.tasks)
    finally:
        experiment.close()
    tasks = config.eval.tasks
    payload = {
        **result.as_dict(),
        "iteration": checkpoint.step,
        "checkpoint": which,
        "problem": experiment.name,
        "overrides": list(args.overrides),
    }
    output = run.eval / f"{args.name}.json"
    output.write_text(json.dumps(payload, indent=1))
    figure = plot_adaptation_curve(
        result.steps,
        result.mean,
        result.ci95,
        output.with_suffix(".png"),
        reference=experiment.reference,
        ylabel=result.metric,
        title=f"{experiment.name}: {tasks} held-out tasks",
    )
    if args.json:
        print(json.dumps(payload))
    else:
        print(f"{which} checkpoint: iteration {checkpoint.step}")
        print(_table(result, experiment.reference))
        print(f"written: {output}, {figure}")
    return 0


def _checkpoint_to_evaluate(run: RunDir, which: str | None) -> tuple[str, Checkpoint]:
    """The best checkpoint when asked for or, by default, when the run kept one; else the last."""
    if which in (None, "best"):
        best = latest_checkpoint(run.best_checkpoint)
        if best is not None:
            return "best", best
        if which == "best":
            raise FileNotFoundError(
                f"no best checkpoint in {run.best_checkpoint}: the run did not validate "
                "(set eval.val_every) or has not validated yet"
            )
    last = latest_checkpoint(run.checkpoints)
    if last is None:
        raise FileNotFoundError(f"no complete checkpoint in {run.checkpoints}")
    return "last", last


def _table(result: AdaptationResult, reference: dict[str, tuple[list[int], list[float]]]) -> str:
    paper = {
        step: value
        for steps, values in reference.values()
        for step, value in zip(steps, values, strict=True)
    }
    header = f"{'steps':>5}  {result.metric + ' (95% CI)':>24}  {'paper':>7}"
    lines = [f"{header}  {'change from 0 steps, paired (95% CI)':>36}"]
    for step, mean, ci, change, change_ci in zip(
        result.steps, result.mean, result.ci95, result.change, result.change_ci95, strict=True
    ):
        ref = f"{paper[step]:7.2f}" if step in paper else f"{'':>7}"
        paired = f"{change:+14.4f} ± {change_ci:<7.4f}" if step else ""
        lines.append(f"{step:>5}  {mean:14.4f} ± {ci:<7.4f}  {ref}  {paired:>36}")
    lines.append(f"({result.n_tasks} held-out tasks)")
    return "\n".join(lines)


def _bench(args: argparse.Namespace) -> int:
    if args.what == "rl":
        from rlmaml.bench.rl import main as bench_rl

        return bench_rl(args.repeats, args.json, args.config, args.fisher_subsample)
    if args.what == "sampler":
        from rlmaml.bench.sampler import main as bench_sampler

        return bench_sampler(args.env, args.repeats, args.json, args.config, args.env_kwargs)
    from rlmaml.bench.supervised import main as bench_supervised

    return bench_supervised(repeats=args.repeats, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
