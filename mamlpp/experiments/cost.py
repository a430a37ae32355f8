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
    python -m mamlpp.experiments.cost docs      # rewrite docs/runtimes.md from COST_FILES

The measurements the project keeps are the `cost_*.jsonl` files beside this module, described
in `COST_FILES`; docs/runtimes.md is generated from them (tests/test_runtimes.py checks that the
committed page is current), and every other place that needs a runtime points there.
"""

from __future__ import annotations

import heapq
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


HERE = Path(__file__).parent
RUNTIMES_PAGE = HERE.parents[1] / "docs" / "runtimes.md"
GPUS = 8
"""The multi-GPU machine the paper-scale wall times are projected for (one run per GPU)."""


@dataclass(frozen=True)
class CostFile:
    """A kept measurement file and what it measured."""

    name: str
    """File name beside this module."""
    machine: str
    """Machine, software, date and conditions of the measurement."""
    command: str
    """The command that wrote it."""
    unit: str
    """What an hour of it is: CPU-hours, GPU-hours."""
    scale: str
    """The scale the summary projects it to (the per-row table gives both)."""


COST_FILES = (
    CostFile(
        "cost_cpu2_idle.jsonl",
        "the project's 2-core CPU VM (no GPU), otherwise idle; torch 2.14.1; 2026-11-28, with the "
        "task groups on threads",
        "python -m mamlpp.experiments.cost measure --device cpu --iterations 10 --val-tasks 40 "
        "--data-root /path/to/data --out FILE omniglot_5way_1shot_mamlpp ...",
        "CPU-hours",
        "smoke",
    ),
    CostFile(
        "cost_h200_graph.jsonl",
        "one NVIDIA H200, torch 2.11; 2026-11-27; the CUDA-graph step (the default on CUDA) for "
        "the Omniglot and stability presets; the mini-ImageNet rows are the eager step's "
        "(copied from cost_h200.jsonl), so table 2 is an upper bound",
        "python -m mamlpp.experiments.cost measure --device cuda --out FILE",
        "GPU-hours",
        "paper",
    ),
    CostFile(
        "cost_h200.jsonl",
        "one NVIDIA H200, torch 2.11; 2026-11-27; the eager step (`--set cuda_graph=false`); "
        "mini-ImageNet on random pixels of the real shapes",
        "python -m mamlpp.experiments.cost measure --device cuda --set cuda_graph=false --out FILE",
        "GPU-hours",
        "paper",
    ),
)


def load(path: Path) -> dict[str, Measurement]:
    """Preset -> measurement of a cost file (JSON lines as `measure` writes them)."""
    return {
        m["preset"]: Measurement(**m)
        for m in (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    }


@dataclass(frozen=True)
class Projection:
    experiment: str
    preset: str
    runs: int
    source: str | None
    """The measured preset it is timed as (itself when measured); None: nothing comparable."""
    measurement: Measurement | None
    hours_per_run: float


def projections(
    measured: dict[str, Measurement], scale: str, same_dataset: bool = False
) -> list[Projection]:
    """One row per (experiment, preset): hours per run at `scale`, timed as the closest measured
    preset. With `same_dataset`, a preset whose closest measurement is of another dataset counts
    as not timed (source None) instead of borrowing it."""
    rows = []
    for e in EXPERIMENTS.values():
        for preset in e.presets:
            source = preset if preset in measured else closest(preset, measured)
            if (
                source is not None
                and same_dataset
                and get_preset(source).config.data.dataset != get_preset(preset).config.data.dataset
            ):
                source = None
            m = measured[source] if source is not None else None
            hours = run_seconds(preset, m, scale) / 3600 if m is not None else 0.0
            rows.append(Projection(e.name, preset, len(e.seeds), source, m, hours))
    return rows


def wall_hours(run_hours: list[float], devices: int) -> float:
    """Wall time of runs on `devices` devices, one run each at a time, longest first (greedy)."""
    loads = [0.0] * devices
    for hours in sorted(run_hours, reverse=True):
        heapq.heapreplace(loads, loads[0] + hours)
    return max(loads)


def runtimes_markdown(root: Path = HERE) -> str:
    """docs/runtimes.md: every experiment's projected hours from each of COST_FILES."""
    files = [(f, load(root / f.name)) for f in COST_FILES]
    out = [
        "# Runtimes",
        "",
        "Generated by `python -m mamlpp.experiments.cost docs` from the measured cost files in",
        "`mamlpp/experiments/` (`cost_*.jsonl`); do not edit by hand (tests/test_runtimes.py checks",
        "that this page is current). A cost file holds, per timed preset, seconds per outer",
        "iteration (`s_iter`) and per evaluation task (`s_val_task`) from short real `mamlpp train`",
        "runs (epoch 2 of 2 timed, warm-up excluded). One run of a preset is projected as",
        "",
        "    E x (I x s_iter + V x s_val_task) + 5 x T x s_val_task   seconds",
        "",
        "with the scale's E epochs, I iterations per epoch, V validation tasks per epoch and T test",
        "tasks scored by each of the 5 ensemble checkpoints (`mamlpp/config.py`, `apply_scale`).",
        "A preset that was not timed is timed as the closest timed preset of the same dataset, way",
        "and shot (the MAML rows as their MAML++ rows: an upper bound); where the file has no",
        "preset of its dataset, the row is not timed and left out of the total.",
        "",
        "## Summary",
        "",
        "| experiment | runs | "
        + " | ".join(f"{f.scale}: {f.unit}, `{f.name}`" for f, _ in files)
        + f" | paper: wall time on {GPUS} GPUs, `{files[1][0].name}` |",
        "| --- | --- | " + " | ".join("---" for _ in files) + " | --- |",
    ]
    tables = {
        (f.name, scale): projections(measured, scale, same_dataset=True)
        for f, measured in files
        for scale in ("smoke", "paper")
    }
    for e in EXPERIMENTS.values():
        cells = [_total(tables[f.name, f.scale], e.name) for f, _ in files]
        graph = [p for p in tables[files[1][0].name, "paper"] if p.experiment == e.name]
        runs = [p.hours_per_run for p in graph if p.source is not None for _ in range(p.runs)]
        wall = f"{wall_hours(runs, GPUS):.1f} h" if runs else "not timed"
        out.append(f"| {e.name} | {len(e.grid())} | " + " | ".join(cells) + f" | {wall} |")
    out += [
        "",
        "Wall time: the experiment's runs on one machine with that many GPUs, one run per GPU at",
        "a time, longest first (`make table1 SCALE=paper JOBS=auto`). The tables below give both",
        "scales for every file.",
    ]
    for f, _ in files:
        out += ["", f"## `{f.name}`", "", f"Measured on {f.machine}.", "", f"    {f.command}", ""]
        out += [
            "| experiment | preset | runs | s/iter | ms/val task | hours/run, smoke | "
            "hours/run, paper | timed as |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        smoke, paper = tables[f.name, "smoke"], tables[f.name, "paper"]
        for s, p in zip(smoke, paper, strict=True):
            if s.measurement is None:
                out.append(f"| {s.experiment} | {s.preset} | {s.runs} | | | | | not timed |")
                continue
            timed_as = "measured" if s.source == s.preset else s.source
            out.append(
                f"| {s.experiment} | {s.preset} | {s.runs} | {s.measurement.s_iter:.3f} | "
                f"{s.measurement.s_val_task * 1000:.1f} | {s.hours_per_run:.2f} | "
                f"{p.hours_per_run:.2f} | {timed_as} |"
            )
    return "\n".join(out) + "\n"


def _total(rows: list[Projection], experiment: str) -> str:
    mine = [p for p in rows if p.experiment == experiment]
    timed = [p for p in mine if p.source is not None]
    if not timed:
        return "not timed"
    total = sum(p.hours_per_run * p.runs for p in timed)
    if len(timed) < len(mine):
        return f"{total:.1f} ({sum(p.runs for p in timed)} of {sum(p.runs for p in mine)} runs)"
    return f"{total:.1f}"


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
    rows = projections(load(measurements), scale)
    click.echo(
        "| experiment | preset | runs | s/iter | ms/val task | hours/run | hours | timed as |"
    )
    click.echo("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for e in EXPERIMENTS.values():
        total = 0.0
        for p in rows:
            if p.experiment != e.name or p.measurement is None:
                continue
            m = p.measurement
            total += p.hours_per_run * p.runs
            click.echo(
                f"| {e.name} | {p.preset} | {p.runs} | {m.s_iter:.3f} | "
                f"{m.s_val_task * 1000:.1f} | {p.hours_per_run:.2f} | "
                f"{p.hours_per_run * p.runs:.1f} | "
                f"{'measured' if p.source == p.preset else p.source} |"
            )
        click.echo(f"| **{e.name}** | all | {len(e.grid())} | | | | **{total:.1f}** | |")


@main.command()
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=RUNTIMES_PAGE,
    show_default="docs/runtimes.md",
)
def docs(out: Path) -> None:
    """Write the runtimes page (docs/runtimes.md) from the kept cost files."""
    out.write_text(runtimes_markdown())
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
