"""`mamlpp sweep`: train an experiment's grid (presets x seeds) here, or export it for W&B.

``sweep run`` is the local runner behind ``make table1`` etc.: it names every grid point's run
directory with ``mamlpp.runs.resolve.run_name``, skips the finished ones (``test.json`` exists), and
runs the rest as ``mamlpp train`` subprocesses, JOBS at a time; unfinished runs resume because
the trainer resumes when given the same command. With GPUs, each job slot owns one GPU
(``CUDA_VISIBLE_DEVICES``) and each preset's seeds train together in one process
(``--seed 0 --seed 1 --seed 2``, `seed_groups`). A second invocation after a complete sweep launches nothing. A
run directory holding another config than the sweep's (trained before the code's defaults
changed) stops it with an error naming the directory, rather than entering its tables.

``sweep run --executor slurm`` submits the same commands as SLURM jobs (mamlpp.experiments.slurm).

``sweep export`` writes the same grid as a W&B grid sweep whose command is the runner's
``mamlpp train`` command line, so ``wandb sweep`` + ``wandb agent`` on any number of machines
produce the same run directories (and W&B runs) as the local runner.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mamlpp.errors import MamlppError
from mamlpp.experiments.slurm import FOLDER_NAME, SlurmOptions, submit_runs
from mamlpp.runs.stops import TIME_LIMIT_EXIT, Deadline, time_limit_option

if TYPE_CHECKING:
    from mamlpp.experiments import Experiment, GridPoint

TRAIN_COMMAND_ENV = "MAMLPP_SWEEP_TRAIN_COMMAND"
"""Environment variable replacing the ``mamlpp train`` prefix of every launched command
(shell-quoted words). For tests and wrappers, e.g. ``"python fake_train.py"``."""
WANDB_ARGS_MACRO = "${args_no_equals}"
"""The W&B agent replaces this word with ``--preset P --seed S`` (its ``--name value`` form)."""
LOG_DIR_NAME = ".sweep-logs"


@dataclass(frozen=True)
class Sweep:
    """An experiment's grid resolved against a scale, a runs dir and shared train options."""

    experiment: Experiment
    points: list[GridPoint]
    scale: str
    runs_dir: Path
    overrides: tuple[str, ...] = ()
    """``key=value`` overrides given to every run (the experiment's, then the user's)."""
    train_options: tuple[str, ...] = ()
    """Options that do not change the run directory (--data-root, --device, --wandb)."""

    def fixed_args(self) -> list[str]:
        """The ``mamlpp train`` arguments shared by every grid point."""
        args = ["--scale", self.scale, "--runs-dir", str(self.runs_dir), *self.train_options]
        for item in self.overrides:
            args += ["--set", item]
        return args

    def train_args(self, point: GridPoint) -> list[str]:
        """Everything after ``mamlpp train`` for one grid point: the fixed arguments, then the
        grid parameters in exactly the form W&B's agent writes for ``${args_no_equals}``."""
        return [*self.fixed_args(), "--preset", point.preset, "--seed", str(point.seed)]

    def group_args(self, points: list[GridPoint]) -> list[str]:
        """`train_args` of one preset's points trained together in one process: the fixed
        arguments, ``--preset P`` and one ``--seed S`` per point (`mamlpp.runs.multiseed`)."""
        seeds = [arg for p in points for arg in ("--seed", str(p.seed))]
        return [*self.fixed_args(), "--preset", points[0].preset, *seeds]

    def run_dir(self, point: GridPoint) -> Path:
        from mamlpp.config import overrides_dict
        from mamlpp.runs.resolve import run_name

        name = run_name(point.preset, overrides_dict(self.overrides), point.seed, self.scale)
        return self.runs_dir / name

    def trained_otherwise(self, point: GridPoint) -> bool:
        """Whether the point's run directory holds a run whose config differs from the one this
        sweep would train now (the code's defaults changed since, e.g. the smoke scale's
        epochs); `mamlpp train` refuses to continue such a run, so the sweep must not count it."""
        from mamlpp.runs.resolve import holds_another_config, resolve_config
        from mamlpp.runs.tracking import RunDirectory

        config = resolve_config(point.preset, self.overrides, point.seed, self.scale)
        return holds_another_config(RunDirectory(self.run_dir(point)), config)


def held_by_others(sweep: Sweep, points: list[GridPoint]) -> dict[GridPoint, str]:
    """The points whose run another process holds the lock of (`RunDirectory.lock`), with what
    its lock file says about the holder."""
    from mamlpp.runs.tracking import RunDirectory, lock_holder

    held = {}
    for point in points:
        path = sweep.run_dir(point)
        if RunDirectory(path).locked_by_other():
            held[point] = lock_holder(path) or "holder unknown"
    return held


def is_finished(run_dir: Path) -> bool:
    """A run is finished iff its ``test.json`` exists (docs/run-directory.md)."""
    return (run_dir / "test.json").is_file()


def seed_groups(sweep: Sweep, points: list[GridPoint], together: bool) -> list[list[GridPoint]]:
    """The launches: every point alone, or (`together`) the points of one preset whose runs
    stand at the same epoch as one ``mamlpp train --seed A --seed B ...`` (its seeds trained as
    one folded step: faster per task on a GPU, where one meta-batch leaves the card waiting on
    kernel launches: `mamlpp.engine.seeds`). Seeds at different epochs cannot resume together,
    so they form separate launches."""
    if not together:
        return [[p] for p in points]
    groups: dict[tuple[str, int | str], list[GridPoint]] = {}
    for point in points:
        groups.setdefault((point.preset, _progress(sweep.run_dir(point))), []).append(point)
    return list(groups.values())


def _progress(path: Path) -> int | str:
    """A run's completed epochs by its latest.pt (0 without one); the path itself when that
    cannot be read (the run then launches alone and `mamlpp train` reports the problem)."""
    from mamlpp.runs.checkpoints import load_latest
    from mamlpp.runs.tracking import RunDirectory

    run_dir = RunDirectory(path)
    if not run_dir.latest_path.exists():
        return 0
    try:
        return int(load_latest(run_dir)["epoch"]) + 1
    except MamlppError:
        return str(path)


def build_sweep(
    name: str,
    scale: str,
    runs_dir: Path,
    presets: tuple[str, ...] = (),
    seeds: tuple[int, ...] = (),
    overrides: tuple[str, ...] = (),
    train_options: tuple[str, ...] = (),
) -> Sweep:
    """Resolve and validate: unknown experiment, row or override, or a value out of range,
    fails here, before any run."""
    from mamlpp.experiments import get_experiment
    from mamlpp.runs.resolve import resolve_config

    experiment = get_experiment(name)
    points = experiment.grid(presets, seeds)
    all_overrides = (*experiment.overrides, *overrides)
    for point in points:  # each run's config as `mamlpp train` resolves it: ConfigError here
        resolve_config(point.preset, all_overrides, point.seed, scale)
    return Sweep(experiment, points, scale, runs_dir, all_overrides, train_options)


# ---------------------------------------------------------------- the W&B grid sweep


def wandb_sweep_definition(sweep: Sweep, project: str) -> dict[str, Any]:
    """A W&B grid sweep over (preset, seed) whose command is ``mamlpp train`` + the runner's
    fixed arguments + ``--preset P --seed S``."""
    presets = list(dict.fromkeys(p.preset for p in sweep.points))
    seeds = list(dict.fromkeys(p.seed for p in sweep.points))
    e = sweep.experiment
    return {
        "name": f"mamlpp-{e.name}-{sweep.scale}",
        "description": f"{e.title}; {sweep.scale} scale; {len(presets)} presets x "
        f"{len(seeds)} seeds. Made by `mamlpp sweep export {e.name}`.",
        "project": project,
        "method": "grid",
        "metric": {"name": "val/acc", "goal": "maximize"},
        "parameters": {"preset": {"values": presets}, "seed": {"values": seeds}},
        "command": ["${env}", "mamlpp", "train", *sweep.fixed_args(), WANDB_ARGS_MACRO],
    }


# ---------------------------------------------------------------- the local runner


def train_command_prefix() -> list[str]:
    """``mamlpp train`` from this environment (or the override in $MAMLPP_SWEEP_TRAIN_COMMAND)."""
    custom = os.environ.get(TRAIN_COMMAND_ENV, "").strip()
    if custom:
        return shlex.split(custom)
    script = Path(sys.executable).parent / "mamlpp"
    if script.is_file():
        return [str(script), "train"]
    return [sys.executable, "-m", "mamlpp.cli", "train"]


def visible_gpus(device: str | None) -> list[str]:
    """GPU ids a job may be pinned to: none with --device cpu, else $CUDA_VISIBLE_DEVICES's
    entries if set, else every GPU torch sees."""
    if device == "cpu":
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def resolve_jobs(jobs: str, gpus: list[str]) -> int:
    if jobs == "auto":
        return max(1, len(gpus))
    try:
        n = int(jobs)
    except ValueError:
        n = 0
    if n < 1:
        raise MamlppError(f"--jobs {jobs!r} must be a positive integer or 'auto' (one per GPU)")
    return n


def slot_environments(jobs: int, gpus: list[str]) -> list[dict[str, str]]:
    """Extra environment per job slot: one GPU each (round-robin when jobs > GPUs); on the CPU,
    the cores shared out so that parallel jobs do not oversubscribe them."""
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(jobs)]
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        return [{"OMP_NUM_THREADS": threads} for _ in range(jobs)]
    return [{} for _ in range(jobs)]


@dataclass
class Launch:
    index: int
    total: int
    name: str
    argv: list[str]
    log: Path | None
    returncode: int | None = None
    """None: not started (or not ended)."""
    seconds: float = 0.0
    points: list[GridPoint] = field(default_factory=list)
    """The grid points it trains (several: seeds together)."""
    taken: str | None = None
    """Why it was not started although its turn came: another process (a second sweep in the
    same runs dir) trains or finished its runs meanwhile (`_Runner.claim`)."""


class _Runner:
    """Runs launches on a fixed set of job slots; Ctrl-C or SIGTERM terminates the children (they
    resume).
    With a `deadline`, each launch gets what is left of it as its `--time-limit`, and none
    starts once it has passed."""

    def __init__(
        self,
        envs: list[dict[str, str]],
        deadline: Deadline | None = None,
        claim: Callable[[Launch], str | None] | None = None,
    ):
        self.deadline = deadline
        self.claim = claim
        """Called as a launch's turn comes: a reason not to start it (its runs are another
        process's now), else None (it may also narrow the launch to its runs still free)."""
        self.slots: queue.Queue[dict[str, str]] = queue.Queue()
        for env in envs:
            self.slots.put(env)
        self.lock = threading.Lock()
        self.children: set[subprocess.Popen[bytes]] = set()
        self.closed = False
        """Set by `terminate_all`: no child starts after it."""
        self.parallel = len(envs) > 1

    def run(self, launch: Launch) -> Launch:
        env = self.slots.get()
        try:
            where = (
                f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
            )
            tag = f"[{launch.index}/{launch.total}]"
            if self.deadline is not None and self.deadline.expired():
                click.echo(f"{tag} not started: the time limit has passed ({launch.name})")
                return launch
            if self.claim is not None and (taken := self.claim(launch)) is not None:
                launch.taken = taken
                click.echo(f"{tag} not started: {taken} ({launch.name})")
                return launch
            if self.deadline is not None:
                launch.argv = [*launch.argv, "--time-limit", f"{self.deadline.left() / 60:.4f}"]
            log_note = f", log {launch.log}" if launch.log else ""
            click.echo(f"{tag} start {launch.name}{where}{log_note}")
            start = time.monotonic()
            launch.returncode = self._call(launch, {**os.environ, **env})
            launch.seconds = time.monotonic() - start
            status = _status(launch.returncode)
            click.echo(f"{tag} {status} {launch.name} in {_duration(launch.seconds)}")
            return launch
        finally:
            self.slots.put(env)

    def _call(self, launch: Launch, env: dict[str, str]) -> int:
        out = None
        if launch.log is not None:
            launch.log.parent.mkdir(parents=True, exist_ok=True)
            out = launch.log.open("ab")
        with self.lock:
            if self.closed:
                if out is not None:
                    out.close()
                return 128 + signal.SIGTERM
            try:
                proc = subprocess.Popen(
                    launch.argv, env=env, stdout=out, stderr=subprocess.STDOUT if out else None
                )
            except OSError as e:
                raise MamlppError(f"cannot start {launch.argv[0]!r}: {e}") from None
            self.children.add(proc)
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.children.discard(proc)
            if out is not None:
                out.close()

    def terminate_all(self) -> None:
        with self.lock:
            self.closed = True
            children = list(self.children)
        for proc in children:
            proc.terminate()
        for proc in children:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_sweep(
    sweep: Sweep,
    jobs: str,
    device: str | None,
    dry_run: bool,
    slurm: SlurmOptions | None = None,
    seeds_together: bool | None = None,
    deadline: Deadline | None = None,
) -> None:
    """Train the missing and unfinished runs here (``jobs`` at a time), or as SLURM jobs when
    ``slurm`` is given (mamlpp.experiments.slurm). `seeds_together`: launch each preset's
    seeds as one process (`seed_groups`); None: where GPUs are visible (local runs only).
    `deadline` (local runs): the launches share it (`_Runner`); SweepStopped when it stopped
    any."""
    finished, unfinished, missing = [], [], []
    for point in sweep.points:
        path = sweep.run_dir(point)
        if is_finished(path):
            finished.append(point)
        elif path.exists():
            unfinished.append(point)
        else:
            missing.append(point)
    stale = [sweep.run_dir(p).name for p in finished + unfinished if sweep.trained_otherwise(p)]
    if stale:
        raise MamlppError(
            f"{len(stale)} run(s) in {sweep.runs_dir} were started with another config than "
            f"this sweep's (the code's defaults changed since?): {', '.join(stale)}. Delete "
            "them or pick another --runs-dir."
        )
    todo = [p for p in sweep.points if p in unfinished or p in missing]
    click.echo(
        f"{sweep.experiment.name} at {sweep.scale} scale, {len(sweep.points)} runs in "
        f"{sweep.runs_dir}: {len(finished)} finished, {len(unfinished)} unfinished (resume), "
        f"{len(missing)} missing."
    )
    held = held_by_others(sweep, unfinished)
    for point, holder in held.items():
        click.echo(f"Skipping {sweep.run_dir(point).name}: another process trains it ({holder}).")
    todo = [p for p in todo if p not in held]
    if not todo:
        click.echo("Nothing to train." + (" (the held runs excepted)" if held else ""))
        return
    prefix = train_command_prefix()
    if slurm is not None and not dry_run:
        _submit(sweep, todo, prefix, slurm)
        return
    gpus = visible_gpus(device)
    slots = resolve_jobs(jobs, gpus)  # before the dry run returns: it checks --jobs too
    together = bool(gpus) and slurm is None if seeds_together is None else seeds_together
    groups = seed_groups(sweep, todo, together)
    if dry_run:
        for group in groups:
            click.echo(shlex.join([*prefix, *sweep.group_args(group)]))
        return

    n_jobs = min(slots, len(groups))
    try:
        sweep.runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MamlppError(f"cannot create runs dir {sweep.runs_dir}: {e.strerror}") from None
    log_dir = sweep.runs_dir / LOG_DIR_NAME
    launches = []
    for i, group in enumerate(groups, 1):
        name = sweep.run_dir(group[0]).name
        log = log_dir / f"{name}.log" if n_jobs > 1 else None
        label = name + (f" and {len(group) - 1} more seed(s)" if len(group) > 1 else "")
        argv = [*prefix, *sweep.group_args(group)]
        launches.append(Launch(i, len(groups), label, argv, log, points=list(group)))
    where = f"{len(gpus)} GPU(s)" if gpus else "the CPU"
    joint = f" in {len(groups)} processes (seeds together)" if len(groups) < len(todo) else ""
    click.echo(f"Training {len(todo)} runs{joint}, {n_jobs} at a time on {where}.")

    def claim(launch: Launch) -> str | None:
        """Re-check a launch's runs as its turn comes: another sweep in the same runs dir may
        have started or finished them since the plan (its `mamlpp train` would refuse a held
        run, and this sweep would report that as a failure)."""
        others = held_by_others(sweep, launch.points)
        others.update({p: "finished" for p in launch.points if is_finished(sweep.run_dir(p))})
        free = [p for p in launch.points if p not in others]
        if not free:
            holders = sorted(set(others.values()) - {"finished"})
            if holders:
                return f"another process trains it ({', '.join(holders)})"
            return "another process finished it meanwhile"
        if len(free) < len(launch.points):
            launch.points = free
            launch.argv = [*prefix, *sweep.group_args(free)]
        return None

    runner = _Runner(slot_environments(n_jobs, gpus), deadline, claim)
    threads: list[threading.Thread] = []
    work: queue.Queue[Launch] = queue.Queue()
    for launch in launches:
        work.put(launch)

    def worker() -> None:
        while True:
            try:
                launch = work.get_nowait()
            except queue.Empty:
                return
            runner.run(launch)

    for _ in range(n_jobs):
        t = threading.Thread(target=worker, daemon=True)
        t.start()
        threads.append(t)
    try:
        with _terminate_raises():
            for t in threads:
                while t.is_alive():
                    t.join(timeout=0.5)
    except (KeyboardInterrupt, SweepTerminated) as e:
        while not work.empty():  # start nothing new
            work.get_nowait()
        runner.terminate_all()  # SIGTERM: each run stops cleanly at its next iteration
        if isinstance(e, SweepTerminated):
            raise
        raise MamlppError(
            "interrupted; the unfinished runs resume when you run the same command again"
        ) from None

    taken = [launch for launch in launches if launch.taken is not None]
    stopped = [
        launch
        for launch in launches
        if launch.taken is None and launch.returncode in (None, TIME_LIMIT_EXIT)
    ]
    failed = [
        launch
        for launch in launches
        if launch not in stopped
        and launch not in taken
        and (
            launch.returncode != 0 or not all(is_finished(sweep.run_dir(p)) for p in launch.points)
        )
    ]
    if failed:
        lines = "; ".join(
            f"{f.name} (exit {f.returncode}{', log ' + str(f.log) if f.log else ''})"
            for f in failed
        )
        raise MamlppError(
            f"{len(failed)} of {len(launches)} {'runs' if len(launches) == len(todo) else 'launches'}"
            f" did not finish: {lines}. Fix the cause and run "
            "the same command again: finished runs are skipped, unfinished ones resume"
        )
    if stopped:
        assert deadline is not None
        raise SweepStopped(
            f"time limit of {deadline.seconds / 60:.1f} min reached: {len(stopped)} of "
            f"{len(launches)} launches stopped at it or not started (every completed epoch is "
            "saved); run the same command to continue"
        )
    left = [p for p in sweep.points if not is_finished(sweep.run_dir(p))]
    if left:  # only runs left to others (held at the plan, or `claim`ed by them since) remain
        click.echo(
            f"{len(left)} run(s) were left to the other process(es) training them; run the same "
            "command again once they end to check that every run finished."
        )
        return
    click.echo(f"All {len(sweep.points)} runs of {sweep.experiment.name} are finished.")


class SweepStopped(Exception):  # noqa: N818 (a stop, not a failure)
    """The sweep's time limit stopped or held back some launches; exit `TIME_LIMIT_EXIT`."""


class SweepTerminated(Exception):  # noqa: N818 (a request, not a failure)
    """SIGTERM reached the sweep (`kill PID`, a container's stop, a scheduler): its runs are
    stopped in turn; exit 128 + SIGTERM, as `mamlpp train` does."""

    exit_code = 128 + signal.SIGTERM


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """While inside, SIGTERM raises SweepTerminated in the main thread (it would otherwise end
    the sweep at once and leave its `mamlpp train` children training on, orphaned, holding
    their runs' locks). Outside the main thread nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SweepTerminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _submit(sweep: Sweep, todo: list[GridPoint], prefix: list[str], slurm: SlurmOptions) -> None:
    try:
        sweep.runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MamlppError(f"cannot create runs dir {sweep.runs_dir}: {e.strerror}") from None
    launches = [(sweep.run_dir(p).name, [*prefix, *sweep.train_args(p)]) for p in todo]
    failed = set(submit_runs(sweep.runs_dir, launches, slurm))
    failed |= {sweep.run_dir(p).name for p in todo if not is_finished(sweep.run_dir(p))}
    if failed:
        raise MamlppError(
            f"{len(failed)} of {len(todo)} runs did not finish: {', '.join(sorted(failed))} "
            f"(job logs in {sweep.runs_dir / FOLDER_NAME}). Run the same command again: finished "
            "runs are skipped, unfinished ones resume"
        )
    click.echo(f"All {len(sweep.points)} runs of {sweep.experiment.name} are finished.")


def _status(returncode: int) -> str:
    """A launch's end in words: a run stopped by a signal (`mamlpp train` exits 128 + it,
    after a clean stop) is not reported as a failure of its own."""
    if returncode == 0:
        return "done"
    if returncode == TIME_LIMIT_EXIT:
        return "stopped at the time limit"
    for signum in (signal.SIGTERM, signal.SIGINT):
        if returncode in (128 + signum, -signum):
            return f"stopped by {signum.name} (exit {returncode})"
    return f"FAILED (exit {returncode})"


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# ---------------------------------------------------------------- click commands


def _grid_options(f: Any) -> Any:
    options = [
        click.argument("experiment"),
        click.option(
            "--scale",
            type=click.Choice(["smoke", "paper"]),
            default="smoke",
            show_default=True,
            help="smoke: minutes per run on a CPU; paper: the paper's schedule.",
        ),
        click.option(
            "--runs-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Where the run directories go.  [default: runs/<scale>]",
        ),
        click.option(
            "--preset",
            "presets",
            multiple=True,
            help="Only this row of the experiment (repeatable).  [default: every row]",
        ),
        click.option(
            "--seed",
            "seeds",
            type=int,
            multiple=True,
            help="Only this seed (repeatable).  [default: 0 1 2]",
        ),
        click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="KEY=VALUE",
            help="Config override given to every run, e.g. model.filters=32 (repeatable). "
            "Changes the run names.",
        ),
        click.option(
            "--data-root",
            type=click.Path(path_type=Path),
            default=None,
            help="Passed to mamlpp train.",
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default=None,
            help="Passed to mamlpp train; cpu also stops the GPU-per-job assignment.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _train_options(
    data_root: Path | None, device: str | None, wandb: str | None
) -> tuple[str, ...]:
    out: list[str] = []
    if data_root is not None:
        out += ["--data-root", str(data_root)]
    if device is not None:
        out += ["--device", device]
    if wandb is not None:
        out += ["--wandb", wandb]
    return tuple(out)


@click.group()
def sweep() -> None:
    """Run a paper experiment's grid (presets x seeds) here, or export it as a W&B sweep.

    \b
    Example:
      mamlpp sweep run table1 --scale smoke --jobs 1
      mamlpp sweep export table1 --scale paper --out table1.yaml
    """


@sweep.command("run")
@_grid_options
@click.option(
    "--jobs",
    default="auto",
    show_default=True,
    help="Runs at a time; 'auto' is one per visible GPU, or 1 on a CPU-only machine.",
)
@click.option(
    "--wandb",
    type=click.Choice(["offline", "online", "off"]),
    default=None,
    help="Passed to mamlpp train.  [default: mamlpp train's]",
)
@click.option("--dry-run", is_flag=True, help="Print the plan and the commands; run nothing.")
@click.option(
    "--executor",
    type=click.Choice(["local", "slurm"]),
    default="local",
    show_default=True,
    help="local: subprocesses here, --jobs at a time; slurm: one SLURM job per run (submitit).",
)
@click.option(
    "--slurm-partition", default=None, help="SLURM partition of the jobs (--executor slurm)."
)
@click.option(
    "--slurm-time",
    type=click.IntRange(min=1),
    default=1440,
    show_default=True,
    help="Time limit of each job in minutes; a job killed at its limit resumes on the next run.",
)
@click.option(
    "--slurm-gpus", type=click.IntRange(min=0), default=1, show_default=True, help="GPUs per job."
)
@click.option(
    "--seeds-together/--seeds-apart",
    default=None,
    help="Train each preset's seeds in one process as one folded step (faster per task on a "
    "GPU), or one process per seed.  [default: together where GPUs are visible]",
)
@time_limit_option(
    "Local runs: each launch gets what is left of this many minutes as its `mamlpp train "
    "--time-limit`, none starts after it (exit status 75); the same command continues."
)
def run_command(
    experiment: str,
    scale: str,
    runs_dir: Path | None,
    presets: tuple[str, ...],
    seeds: tuple[int, ...],
    overrides: tuple[str, ...],
    data_root: Path | None,
    device: str | None,
    jobs: str,
    wandb: str | None,
    dry_run: bool,
    executor: str,
    slurm_partition: str | None,
    slurm_time: int,
    slurm_gpus: int,
    seeds_together: bool | None,
    time_limit: float | None,
) -> None:
    """Train every missing or unfinished run of EXPERIMENT (table1, table2, figure2).

    Finished runs (their test.json exists) are skipped, unfinished ones resume, so running the
    same command again after an interruption continues the sweep, and after completion does
    nothing.

    \b
    Example:
      mamlpp sweep run table1 --scale smoke --jobs 1 --runs-dir runs/smoke
      mamlpp sweep run figure2 --scale paper --jobs auto   # one run per visible GPU
      mamlpp sweep run table1 --preset omniglot_5way_1shot_mamlpp --seed 0 --dry-run
      mamlpp sweep run table1 --scale paper --executor slurm --slurm-partition gpu --slurm-time 2880
      mamlpp sweep run table1 --scale paper --time-limit 9   # a lease of 10 minutes
    """
    deadline = Deadline(60 * time_limit) if time_limit is not None else None
    if deadline is not None and executor == "slurm":
        raise MamlppError("--time-limit is for local runs; SLURM jobs take --slurm-time")
    s = build_sweep(
        experiment,
        scale,
        runs_dir or Path("runs") / scale,
        presets,
        seeds,
        overrides,
        _train_options(data_root, device, wandb),
    )
    slurm = SlurmOptions(slurm_partition, slurm_time, slurm_gpus) if executor == "slurm" else None
    try:
        run_sweep(s, jobs, device, dry_run, slurm, seeds_together, deadline)
    except SweepStopped as e:
        click.echo(str(e), err=True)
        sys.exit(TIME_LIMIT_EXIT)
    except SweepTerminated as e:
        click.echo(
            "stopped by SIGTERM: the runs in progress were stopped (every completed epoch is "
            "saved); run the same command to continue",
            err=True,
        )
        sys.exit(e.exit_code)


@sweep.command("export")
@_grid_options
@click.option("--project", default="mamlpp", show_default=True, help="W&B project of the sweep.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the sweep here (.json for JSON, else YAML).  [default: print YAML]",
)
def export_command(
    experiment: str,
    scale: str,
    runs_dir: Path | None,
    presets: tuple[str, ...],
    seeds: tuple[int, ...],
    overrides: tuple[str, ...],
    data_root: Path | None,
    device: str | None,
    project: str,
    out: Path | None,
) -> None:
    """Write EXPERIMENT's grid as a W&B grid sweep that runs each point with mamlpp train.

    Every agent runs `mamlpp train ... --wandb online --preset P --seed S`, the command the
    local runner uses, so it writes the same run directory (on the agent's machine) and
    mirrors it to W&B, where the analysis reads all machines' runs back.

    \b
    Example:
      mamlpp sweep export table1 --scale paper --out table1.yaml
      wandb sweep table1.yaml            # prints the sweep id
      wandb agent ENTITY/mamlpp/SWEEP_ID # on every machine (one agent per GPU)
    """
    import yaml

    s = build_sweep(
        experiment,
        scale,
        runs_dir or Path("runs") / scale,
        presets,
        seeds,
        overrides,
        _train_options(data_root, device, "online"),
    )
    definition = wandb_sweep_definition(s, project)
    if out is not None and out.suffix == ".json":
        text = json.dumps(definition, indent=2) + "\n"
    else:
        text = yaml.safe_dump(definition, sort_keys=False, width=1000)
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        out.write_text(text)
    except OSError as e:
        raise MamlppError(f"cannot write {out}: {e.strerror}") from None
    click.echo(
        f"Wrote {out}: {len(s.points)} runs. Next: `wandb sweep {out}`, then "
        "`wandb agent <the printed sweep id>` on each machine (CUDA_VISIBLE_DEVICES=i per GPU).",
        err=True,
    )
