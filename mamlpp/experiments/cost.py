"""What a paper-scale experiment costs: measure seconds per outer iteration and per validation
pass with short real runs, then project device-hours per table.

A measurement is a `mamlpp train` run at paper scale shrunk to 2 epochs of a few iterations
(epoch 2 is timed: warm-up excluded). Projection for one run of a preset, with E epochs, I
iterations per epoch, V validation tasks, the top-5 ensemble scored on T test tasks:

    run_s = E * (I * s_iter + V * s_val_task) + 5 * T * s_val_task

(each ensemble member adapts to every test task like a validation pass does). An experiment's
hours = sum over its grid points. Presets not measured borrow the measurement of the closest
measured preset (same dataset, way, shot; preferring the same inner steps and switches), and the
table says which.

    python -m mamlpp.experiments.cost measure --device cuda --out build/cost.jsonl
    python -m mamlpp.experiments.cost project build/cost.jsonl [--scale smoke]
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click

from mamlpp.config import apply_scale
from mamlpp.experiments import EXPERIMENTS
from mamlpp.presets import get_preset

PRIORITY = (
    "omniglot_20way_1shot_mamlpp",
    "omniglot_20way_1shot_maml",
    "omniglot_5way_1shot_mamlpp",
    "omniglot_20way_5shot_mamlpp",
    "miniimagenet_5way_1shot_mamlpp",
    "miniimagenet_5way_5shot_mamlpp",
    "stability_mamlpp",
    "omniglot_5way_5shot_mamlpp",
    "miniimagenet_5way_1shot_mamlpp_1step",
    "miniimagenet_5way_1shot_maml",
    "omniglot_5way_1shot_maml",
    "omniglot_20way_5shot_maml",
    "stability_maml",
    "miniimagenet_5way_5shot_maml",
    "omniglot_5way_5shot_maml",
)
"""Measured first: one row per (dataset, way, shot), MAML++ before MAML."""


@dataclass(frozen=True)
class Measurement:
    preset: str
    s_iter: float
    """Seconds per outer iteration (training only)."""
    s_val_task: float
    """Seconds per validation task (one first-order adaptation and evaluation)."""
    device: str


def measure_one(
    preset: str,
    device: str,
    iterations: int,
    val_tasks: int,
    data_root: str | None,
    overrides: tuple[str, ...] = (),
) -> Measurement:
    from mamlpp.experiments.sweep import train_command_prefix

    with tempfile.TemporaryDirectory() as runs:
        argv = [*train_command_prefix(), "--preset", preset, "--seed", "0", "--scale", "paper"]
        argv += ["--runs-dir", runs, "--wandb", "off", "--device", device, "--no-progress"]
        for item in (
            "schedule.epochs=2",
            f"schedule.iterations_per_epoch={iterations}",
            f"schedule.val_tasks={val_tasks}",
            f"schedule.test_tasks={val_tasks}",
            *overrides,
        ):
            argv += ["--set", item]
        if data_root:
            argv += ["--data-root", data_root]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise click.ClickException(f"{preset}: mamlpp train failed: {done.stderr[-800:]}")
        (metrics,) = Path(runs).glob("*/metrics.jsonl")
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        config = json.loads((metrics.parent / "config.json").read_text())
    timed = rows[-1]
    s_iter = 1.0 / timed["time/iters_per_s"]
    s_val = max(0.0, timed["time/epoch_s"] - iterations * s_iter) / val_tasks
    return Measurement(preset, s_iter, s_val, str(config["run"].get("device", device)))


def run_seconds(preset: str, m: Measurement, scale: str = "paper") -> float:
    s = apply_scale(get_preset(preset).config, scale).schedule
    per_epoch = s.iterations_per_epoch * m.s_iter + s.val_tasks * m.s_val_task
    return s.epochs * per_epoch + s.ensemble_top_k * s.test_tasks * m.s_val_task


def closest(preset: str, measured: dict[str, Measurement]) -> str | None:
    """The measured preset that costs most like `preset` (same data, way and shot first)."""
    c = get_preset(preset).config

    def distance(other: str) -> tuple[int, ...]:
        o = get_preset(other).config
        return (
            c.data.dataset != o.data.dataset,
            c.data.n_way != o.data.n_way,
            c.data.k_shot != o.data.k_shot,
            abs(c.inner.steps - o.inner.steps),
            c.model.downsample != o.model.downsample,
            (c.outer.msl, c.inner.lslr, c.bn.per_step_stats)
            != (o.outer.msl, o.inner.lslr, o.bn.per_step_stats),
        )

    return min(measured, key=distance, default=None)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Measure paper-scale speed and project device-hours per experiment."""


@main.command()
@click.option("--device", default="cuda", show_default=True)
@click.option("--iterations", default=20, show_default=True, help="Timed iterations per epoch.")
@click.option("--val-tasks", default=100, show_default=True)
@click.option("--data-root", default=None)
@click.option("--budget-s", default=360.0, show_default=True, help="Stop starting new runs after.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Extra override.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.argument("presets", nargs=-1)
def measure(
    device: str,
    iterations: int,
    val_tasks: int,
    data_root: str | None,
    budget_s: float,
    overrides: tuple[str, ...],
    out: Path,
    presets: tuple[str, ...],
) -> None:
    """Time short paper-scale runs (PRESETS, default a priority list), appending JSON lines."""
    start = time.monotonic()
    for preset in presets or PRIORITY:
        if time.monotonic() - start > budget_s:
            click.echo(f"budget spent; not measured: {preset}")
            continue
        t0 = time.monotonic()
        try:
            m = measure_one(preset, device, iterations, val_tasks, data_root, overrides)
        except click.ClickException as e:
            click.echo(f"skip {e.message}")
            continue
        with out.open("a") as f:
            f.write(json.dumps(m.__dict__) + "\n")
        click.echo(
            f"{preset}: {m.s_iter:.4f} s/iter, {m.s_val_task * 1000:.1f} ms/val task on "
            f"{m.device} ({time.monotonic() - t0:.0f}s)"
        )


@main.command()
@click.argument("measurements", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--scale", type=click.Choice(["paper", "smoke"]), default="paper", show_default=True)
def project(measurements: Path, scale: str) -> None:
    """Print device-hours per experiment at SCALE as a Markdown table."""
    measured = {
        m["preset"]: Measurement(**m)
        for m in (json.loads(line) for line in measurements.read_text().splitlines())
    }
    click.echo(
        "| experiment | preset | runs | s/iter | ms/val task | hours/run | hours | timed as |"
    )
    click.echo("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for e in EXPERIMENTS.values():
        total = 0.0
        for preset in e.presets:
            source = preset if preset in measured else closest(preset, measured)
            if source is None:
                continue
            m = measured[source]
            hours = run_seconds(preset, m, scale) / 3600
            total += hours * len(e.seeds)
            click.echo(
                f"| {e.name} | {preset} | {len(e.seeds)} | {m.s_iter:.3f} | "
                f"{m.s_val_task * 1000:.1f} | {hours:.2f} | {hours * len(e.seeds):.1f} | "
                f"{'measured' if source == preset else source} |"
            )
        click.echo(f"| **{e.name}** | all | {len(e.grid())} | | | | **{total:.1f}** | |")


if __name__ == "__main__":
    main()
