"""`mamlpp train` and `mamlpp test`: one training run into its own run directory (or several
seeds trained together, each into its own), and rescoring a run's ensemble."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mamlpp.errors import MamlppError
from mamlpp.runs.resolve import resolve_config, resolve_device, run_name, start_run_directory
from mamlpp.runs.stops import Deadline, RunStopped, time_limit_option
from mamlpp.runs.tracking import RunDirectory, resolve_wandb_mode
from mamlpp.runs.trainer import RunOptions, test_existing_run, train_run

_DATA_ROOT = click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder holding omniglot/ and miniimagenet/ (default: $MAMLPP_DATA, else ./data).",
)


def _device(what: str) -> Any:
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help=f"Where to {what}: auto picks a CUDA GPU when one is visible.",
    )


def format_result(result: dict[str, float]) -> str:
    return (
        f"ensemble test accuracy: {100 * result['accuracy']:.2f}% "
        f"± {100 * result['ci95']:.2f}% (95% CI, {int(result['num_tasks'])} tasks, "
        f"checkpoints of epochs {result['checkpoint_epochs']})"
    )


@click.command()
@click.option("--preset", required=True, help="A paper configuration; `mamlpp presets` lists them.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change one config field, e.g. --set inner.steps=3 (repeatable).",
)
@click.option(
    "--seed",
    "seeds",
    type=int,
    required=True,
    multiple=True,
    help="Drives weight init and task sampling. Repeat it to train several seeds together, "
    "each into its own run directory (one folded step: faster per task on a GPU).",
)
@click.option(
    "--scale",
    type=click.Choice(["smoke", "paper"]),
    default="paper",
    show_default=True,
    help="paper: the paper's schedule; smoke: minutes on a 2-core CPU.",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Parent folder of the run directories.",
)
@_DATA_ROOT
@click.option(
    "--wandb",
    "wandb_mode",
    type=click.Choice(["offline", "online", "off"]),
    default=None,
    help="W&B mirror (default: $WANDB_MODE, else offline; no account needed offline).",
)
@_device("train")
@click.option(
    "--no-progress",
    is_flag=True,
    help="No progress bar (epoch summaries stay). There is none either when stderr is not a "
    "terminal (a log file, a sweep's .sweep-logs, a SLURM job).",
)
@time_limit_option(
    "Stop cleanly before an epoch (or the test) that would end after this many minutes "
    "of this command (exit status 75); the same command resumes. Prints how long the rest "
    "and the whole run take at the measured pace."
)
def train(
    preset: str,
    overrides: tuple[str, ...],
    seeds: tuple[int, ...],
    scale: str,
    runs_dir: Path,
    data_root: Path | None,
    wandb_mode: str | None,
    device: str,
    no_progress: bool,
    time_limit: float | None,
) -> None:
    """Train one configuration and test the ensemble of its best checkpoints.

    The run directory is RUNS_DIR/<preset>__<overrides>__seed<S>__<scale>; running the same
    command again resumes an interrupted run (or prints a finished run's result).

    Several --seed options train those seeds together in one process (`mamlpp.runs.multiseed`),
    each into the run directory its own command would use.

    \b
    Example:
      mamlpp train --preset omniglot_5way_1shot_mamlpp --scale smoke --seed 0
      mamlpp train --preset omniglot_20way_1shot_maml --seed 1 --set inner.steps=3
      mamlpp train --preset omniglot_20way_1shot_maml --seed 0 --seed 1 --seed 2
      mamlpp train --preset omniglot_5way_1shot_mamlpp --seed 0 --time-limit 9
    """
    deadline = Deadline(60 * time_limit) if time_limit is not None else None
    if len(seeds) > 1:
        _train_seeds(
            preset, overrides, seeds, scale, runs_dir, data_root, wandb_mode, device, no_progress,
            deadline,
        )  # fmt: skip
        return
    (seed,) = seeds
    config = resolve_config(preset, overrides, seed, scale)
    name = run_name(preset, overrides, seed, scale)
    run_dir = RunDirectory(runs_dir / name)
    options = _train_options(data_root, device, wandb_mode, no_progress, deadline)
    info = {
        "name": name,
        "preset": preset,
        "overrides": dict(_pairs(overrides)),
        "seed": seed,
        "scale": scale,
        "device": options.device,
    }
    from mamlpp.data import check_data

    if not run_dir.test_path.exists():  # a finished run only prints its result
        check_data(config, data_root)  # before anything is written: no stub run directory
    run = start_run_directory(run_dir, config, info)
    click.echo(f"run directory: {run_dir.path}")
    try:
        result = train_run(config, run_dir, run, options)
    except RunStopped as e:
        click.echo(e.message(), err=True)
        sys.exit(e.exit_code)
    finally:
        run_dir.unlock()
    click.echo(format_result(result))
    click.echo(f"run directory: {run_dir.path}")


def _train_options(
    data_root: Path | None, device: str, wandb_mode: str | None, no_progress: bool,
    deadline: Deadline | None,
) -> RunOptions:  # fmt: skip
    """`mamlpp train`'s run options: epoch lines on the console, SIGTERM/SIGINT and the time
    limit stop cleanly. The progress bar only on a terminal: redrawn with carriage returns
    several times a second, it would bury the epoch lines of a log file."""
    return RunOptions(
        data_root=data_root,
        device=resolve_device(device),
        wandb=resolve_wandb_mode(wandb_mode),
        progress=not no_progress and _is_terminal(sys.stderr),
        log=click.echo,
        stop_on_signals=True,
        deadline=deadline,
    )


def _is_terminal(stream: Any) -> bool:
    """Whether `stream` (where tqdm draws the bar) is a terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _train_seeds(
    preset: str, overrides: tuple[str, ...], seeds: tuple[int, ...], scale: str, runs_dir: Path,
    data_root: Path | None, wandb_mode: str | None, device: str, no_progress: bool,
    deadline: Deadline | None,
) -> None:  # fmt: skip
    """`train` for several seeds at once: one run directory per seed, trained together."""
    from mamlpp.data import check_data
    from mamlpp.runs.multiseed import train_runs

    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise MamlppError(f"--seed {repeated[0]} is given twice; give each seed once")
    configs = [resolve_config(preset, overrides, seed, scale) for seed in seeds]
    names = [run_name(preset, overrides, seed, scale) for seed in seeds]
    run_dirs = [RunDirectory(runs_dir / name) for name in names]
    options = _train_options(data_root, device, wandb_mode, no_progress, deadline)
    if any(not d.test_path.exists() for d in run_dirs):
        check_data(configs[0], data_root)
    runs, started = [], []
    try:
        for seed, name, config, run_dir in zip(seeds, names, configs, run_dirs, strict=True):
            info = {
                "name": name, "preset": preset, "overrides": dict(_pairs(overrides)),
                "seed": seed, "scale": scale, "device": options.device,
            }  # fmt: skip
            started.append(run_dir)
            runs.append(start_run_directory(run_dir, config, info))
            click.echo(f"run directory: {run_dir.path}")
        results = train_runs(configs, run_dirs, runs, options)
    except RunStopped as e:
        click.echo(e.message(), err=True)
        sys.exit(e.exit_code)
    finally:
        for run_dir in started:
            run_dir.unlock()
    for seed, run_dir, result in zip(seeds, run_dirs, results, strict=True):
        click.echo(f"seed {seed}: {format_result(result)}")
        click.echo(f"run directory: {run_dir.path}")


def _pairs(overrides: tuple[str, ...]) -> list[tuple[str, str]]:
    from mamlpp.config import overrides_dict

    return list(overrides_dict(list(overrides)).items())


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@_DATA_ROOT
@_device("score the ensemble")
def test(run_dir: Path, data_root: Path | None, device: str) -> None:
    """Score the ensemble of a run's best checkpoints on the test tasks (writes test.json when
    the run has finished training).

    \b
    Example:
      mamlpp test runs/omniglot_5way_1shot_mamlpp__default__seed0__smoke
    """
    options = RunOptions(data_root=data_root, device=resolve_device(device), log=click.echo)
    result, finished = test_existing_run(run_dir, options)
    if not finished:
        click.echo("note: training has not finished; test.json was not written")
    click.echo(format_result(result))
    click.echo(f"run directory: {run_dir}")
