"""Training runs: epochs of outer updates, validation, top-k checkpoints, exact resume, the
ensemble test.

One run = one resolved ``Config`` in one run directory (`mamlpp.runs.resolve`). Training
meta-batch t is ``train.batch(range(t*B, (t+1)*B))`` and the
learner has no randomness besides its seeded initialisation, so resuming from ``latest.pt``
(learner state incl. Adam and BN running stats, epoch, top-k bookkeeping) continues exactly where
an uninterrupted run would be (`mamlpp.runs.checkpoints`). The test: the top-k checkpoints by
validation accuracy each adapt to every test task and vote as an ensemble (`mamlpp.runs.ensemble`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from mamlpp.config import Config, ConfigError
from mamlpp.config import validate as validate_config
from mamlpp.data.batch import TaskBatch
from mamlpp.engine import cuda_graph
from mamlpp.engine.learner import EvalResult, MetaLearner, StepResult
from mamlpp.engine.seeds import SeedStack, evaluation_pass_tasks, folds_evaluation
from mamlpp.errors import MamlppError
from mamlpp.kernels import DEFAULT as DEFAULT_KERNELS
from mamlpp.kernels import KernelOptions
from mamlpp.runs import ensemble
from mamlpp.runs.checkpoints import (
    TopK,
    finish_epoch,
    load_latest,
    missing_rows_warning,
    restore,
)
from mamlpp.runs.resolve import check_schedule, run_group, train_seed
from mamlpp.runs.stops import (
    Deadline,
    RunStopped,
    StopRequest,
    minutes,
    stop_on_signals,
)
from mamlpp.runs.tracking import (
    CorruptFileError,
    RunDirectory,
    RunDirectoryError,
    WandbMirror,
    WandbMode,
)


class NonFiniteLossError(MamlppError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class Sampler(Protocol):
    def batch(self, indices: Sequence[int]) -> TaskBatch: ...


EpisodeFactory = Callable[..., Sampler]
"""``make_episodes(config, split, data_root=None, seed=None, device="cpu") -> Sampler``; the
trainer asks for samplers on the run's device, so no images are copied from the host per batch."""


# ---------------------------------------------------------------------- one epoch


@dataclass
class EpochMeans:
    """Running sums of the per-iteration results of one epoch."""

    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    grad_sums: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float, accuracy: float, grad_stats: dict[str, dict[str, float]]) -> None:
        self.losses.append(loss)
        self.accuracies.append(accuracy)
        for param, stats in grad_stats.items():
            for stat, value in stats.items():
                key = f"grad/{param}/{stat}"
                self.grad_sums[key] = self.grad_sums.get(key, 0.0) + value

    def row(self) -> dict[str, float]:
        n = len(self.losses)
        out = {"train/loss": sum(self.losses) / n, "train/acc": sum(self.accuracies) / n}
        out.update({k: v / n for k, v in self.grad_sums.items()})
        return out


def epoch_bar(config: Config, epoch: int, progress: bool) -> tqdm:
    """The progress bar over an epoch's iterations (hidden without `progress`)."""
    return tqdm(
        range(config.schedule.iterations_per_epoch), desc=f"epoch {epoch + 1}/{config.schedule.epochs}",
        unit="it", leave=False, disable=not progress, dynamic_ncols=True,
    )  # fmt: skip


def train_epoch(
    train_step: Any, sampler: Sampler, config: Config, epoch: int, progress: bool,
    stop: StopRequest | None = None,
) -> tuple[EpochMeans, list[dict[str, Any]]]:  # fmt: skip
    """`iterations_per_epoch` outer updates by `train_step` (`cuda_graph.training_step`);
    stops with NonFiniteLossError on a NaN/inf loss, and with RunStopped before an iteration
    when `stop` was requested."""

    def one(indices: range) -> list[StepResult]:
        return [train_step(sampler.batch(indices), epoch)]

    means, rows = iterate_epoch(one, [None], config, epoch, progress, stop or StopRequest())
    return means[0], rows[0]


def iterate_epoch(
    step: Callable[[range], Sequence[StepResult]], seeds: Sequence[int | None], config: Config,
    epoch: int, progress: bool, stop: StopRequest,
) -> tuple[list[EpochMeans], list[list[dict[str, Any]]]]:  # fmt: skip
    """An epoch's iterations: `step(indices)` does outer iteration t on the meta-batch of
    task indices [t*B, (t+1)*B) and returns one StepResult per run (`seeds`: the runs' seeds
    when several train together, else [None]); their means and iteration rows per run. Checks
    `stop` before each iteration (RunStopped, naming the iteration reached) and every loss
    after it (NonFiniteLossError)."""
    b, iters = config.outer.meta_batch_size, config.schedule.iterations_per_epoch
    means = [EpochMeans() for _ in seeds]
    rows: list[list[dict[str, Any]]] = [[] for _ in seeds]
    bar = epoch_bar(config, epoch, progress)
    start = time.perf_counter()
    for i in bar:
        if stop.requested():
            bar.close()
            stop.check(in_flight=(i, iters, time.perf_counter() - start))
        t = epoch * iters + i
        steps = step(range(t * b, (t + 1) * b))
        for seed, result in zip(seeds, steps, strict=True):
            if not math.isfinite(result.loss):
                bar.close()
                raise non_finite_loss(result.loss, epoch, i, t, seed)
        for m, r, result in zip(means, rows, steps, strict=True):
            m.add(result.loss, result.accuracy, result.grad_stats)
            r.append(iteration_row(result, epoch, t))
        bar.set_postfix(loss=f"{steps[0].loss:.3f}", acc=f"{steps[0].accuracy:.3f}", refresh=False)
    bar.close()
    return means, rows


def non_finite_loss(loss: float, epoch: int, i: int, t: int, seed: int | None = None) -> NonFiniteLossError:
    """The error for a NaN/inf training loss at iteration `i` of `epoch` (global iteration `t`);
    `seed`: which of several seeds trained together."""
    where = f"at epoch {epoch}, iteration {i} (global iteration {t})"
    if seed is None:
        what = f"training loss became {loss} {where}; the run stopped and its last good checkpoint is kept"
    else:
        what = (
            f"seed {seed}'s training loss became {loss} {where}; the runs stopped and their last "
            "good checkpoints are kept"
        )
    return NonFiniteLossError(f"{what}. Try a lower outer.lr or inner.lr, or outer.grad_clip")


def iteration_row(step: StepResult, epoch: int, t: int) -> dict[str, Any]:
    """iterations.jsonl's line for global iteration `t`."""
    return {"iteration": t, "epoch": epoch, "train/loss": step.loss, "train/acc": step.accuracy}


def evaluation_chunks(config: Config, num_tasks: int, device: str | torch.device = "cpu") -> list[range]:
    """The chunks of tasks evaluated together at validation and test: `schedule.eval_batch_size`
    tasks, by default the meta-batch on the CPU (its task groups on threads split a chunk) and
    on CUDA `seeds.evaluation_pass_tasks` of it (meta-batch x inner steps: no more activations
    than one training step holds, ~steps x fewer kernel launches per task). Tasks are
    independent, so the chunking changes rounding only (tests/test_eval_chunks.py)."""
    size = config.schedule.eval_batch_size or config.outer.meta_batch_size
    if not config.schedule.eval_batch_size and torch.device(device).type == "cuda":
        size = evaluation_pass_tasks(config, size)
    return [range(s, min(s + size, num_tasks)) for s in range(0, num_tasks, size)]


def validate(learner: MetaLearner, sampler: Sampler, config: Config) -> tuple[float, float]:
    """Mean target loss and accuracy over the same `val_tasks` tasks every epoch."""
    def evaluate(batch: TaskBatch) -> list[EvalResult]:
        return [learner.evaluate(batch)]

    return _validation_means(evaluate, sampler, config, learner.device)[0]


def validate_seeds(
    stack: SeedStack, sampler: Sampler, config: Config, fold: bool | None = None,
    learners: Sequence[MetaLearner] | None = None,
) -> list[tuple[float, float]]:  # fmt: skip
    """`validate` of every seed of `stack`, in seed order. Folded (`fold`; None: by device,
    `seeds.folds_evaluation`): one folded pass per chunk, the chunk given to every seed
    (`SeedStack.evaluate_shared`); else `validate` of each seed's learner (`learners` when the
    caller holds them already, else `stack.learner(s)`). tests/test_multiseed.py compares the
    two."""
    if not (folds_evaluation(config, stack.device) if fold is None else fold):
        singles = learners or [stack.learner(s) for s in range(stack.seeds)]
        return [validate(learner, sampler, config) for learner in singles]
    return _validation_means(stack.evaluate_shared, sampler, config, stack.device)


def _validation_means(
    evaluate: Callable[[TaskBatch], Sequence[EvalResult]], sampler: Sampler, config: Config,
    device: str | torch.device,
) -> list[tuple[float, float]]:  # fmt: skip
    """Per parameter set, the mean target loss and accuracy over the `val_tasks` tasks, which
    `evaluate` scores chunk by chunk (`evaluation_chunks`), one result per set."""
    losses: list[list[torch.Tensor]] = []
    accs: list[list[torch.Tensor]] = []
    for chunk in evaluation_chunks(config, config.schedule.val_tasks, device):
        results = evaluate(sampler.batch(chunk))
        losses.append([r.loss.double() for r in results])
        accs.append([r.accuracy.double() for r in results])
    return [
        (float(torch.cat(loss).mean()), float(torch.cat(acc).mean()))
        for loss, acc in zip(zip(*losses, strict=True), zip(*accs, strict=True), strict=True)
    ]


def epoch_row(
    epoch: int, learner: MetaLearner, means: EpochMeans, val: tuple[float, float], seconds: float,
    train_seconds: float, iterations: int,
) -> dict[str, Any]:  # fmt: skip
    """The flat per-epoch dict: metrics.jsonl line == wandb.log payload. ``time/epoch_s`` is
    training plus validation; ``time/iters_per_s`` counts the training iterations only."""
    train = means.row()
    row: dict[str, Any] = {
        "epoch": epoch,
        "train/loss": train.pop("train/loss"),
        "train/acc": train.pop("train/acc"),
        "val/loss": val[0],
        "val/acc": val[1],
        "meta_lr": learner.meta_lr(epoch),
    }
    for param, rates in learner.lslr_rates().items():
        row.update({f"lslr/{param}/step{k}": float(r) for k, r in enumerate(rates)})
    row.update({f"msl/step{k}": float(w) for k, w in enumerate(learner.msl_weights(epoch))})
    row.update(train)
    row["time/epoch_s"] = seconds
    row["time/iters_per_s"] = iterations / max(train_seconds, 1e-9)
    return row


def summary_line(row: Mapping[str, Any], epochs: int, kept: bool) -> str:
    return (
        f"epoch {row['epoch'] + 1:>3}/{epochs}  train loss {row['train/loss']:.4f} "
        f"acc {row['train/acc']:.2%}  val loss {row['val/loss']:.4f} acc {row['val/acc']:.2%}  "
        f"meta_lr {row['meta_lr']:.2e}  {row['time/epoch_s']:.1f}s "
        f"({row['time/iters_per_s']:.1f} it/s){'  [top-k]' if kept else ''}"
    )


def schedule_line(config: Config, device: str) -> str:
    s = config.schedule
    return (
        f"{config.preset} ({config.scale} scale, seed {config.seed}, {device}): {s.epochs} epochs x "
        f"{s.iterations_per_epoch} iterations of {config.outer.meta_batch_size} tasks, "
        f"{s.val_tasks} validation tasks per epoch, ensemble of {s.ensemble_top_k} on "
        f"{s.test_tasks} test tasks"
    )


@dataclass
class Pace:
    """Seconds per epoch and per validation pass measured in this command, and what they
    predict: the next epoch, the ensemble test (`ensemble_top_k` members each adapting to
    `test_tasks` tasks as validation adapts to `val_tasks`; several seeds trained together
    validate and test together, so the ratio holds for them too), and the rest of the run.
    `earlier_s`: the epoch times of the run's epochs trained by earlier commands."""

    config: Config
    start: float = field(default_factory=time.monotonic)
    earlier_s: float = 0.0
    epoch_s: list[float] = field(default_factory=list)
    val_s: list[float] = field(default_factory=list)

    def add(self, epoch_s: float, train_s: float) -> None:
        """An epoch's time and the part of it its iterations took (the rest is validation)."""
        self.epoch_s.append(epoch_s)
        self.val_s.append(max(0.0, epoch_s - train_s))

    def add_row(self, row: Mapping[str, Any]) -> None:
        """An epoch's metrics row (`epoch_row`)."""
        iterations = self.config.schedule.iterations_per_epoch
        self.add(float(row["time/epoch_s"]), iterations / float(row["time/iters_per_s"]))

    def epoch(self) -> float | None:
        return sum(self.epoch_s) / len(self.epoch_s) if self.epoch_s else None

    def test(self) -> float | None:
        if not self.val_s:
            return None
        s = self.config.schedule
        val = sum(self.val_s) / len(self.val_s)
        return val * s.test_tasks / max(1, s.val_tasks) * s.ensemble_top_k

    def left(self, epochs_left: int) -> float | None:
        epoch, test = self.epoch(), self.test()
        if epoch is None or test is None:
            return None
        return epoch * epochs_left + test

    def remaining_line(self, epochs_left: int) -> str:
        epoch = self.epoch()
        if epochs_left == 0 or epoch is None:
            return ""
        return f"  ~{minutes(epoch * epochs_left)} of training left"

    def project(self, stopped: RunStopped) -> None:
        """Fill in the stopped run's remaining and whole time (this command's start-up
        included). Before any epoch has completed, from the iterations of the epoch in flight:
        training alone."""
        epochs_left = stopped.total_epochs - stopped.completed_epochs
        stopped.left_s = self.left(epochs_left)
        if stopped.left_s is None and stopped.in_flight is not None and stopped.in_flight[0] > 0:
            done, of, seconds = stopped.in_flight
            stopped.left_s = seconds / done * of * epochs_left
            stopped.training_only = True
        if stopped.left_s is not None:
            stopped.whole_s = self.earlier_s + (time.monotonic() - self.start) + stopped.left_s

    def next_piece(self, epochs_left: int) -> float | None:
        """The expected seconds of what comes next: an epoch, or the test after the last."""
        return self.epoch() if epochs_left > 0 else self.test()

    @classmethod
    def of_run(
        cls, config: Config, run_dir: RunDirectory, next_epoch: int, deadline: Deadline | None
    ) -> Pace:
        """The pace of a run resumed at `next_epoch`: counted from the command's deadline's
        start when it has one (start-up included), with the epoch times metrics.jsonl holds for
        the epochs before `next_epoch`."""
        rows = run_dir.read_metrics() if next_epoch > 0 else []
        earlier = sum(float(r.get("time/epoch_s", 0.0)) for r in rows if r["epoch"] < next_epoch)
        start = deadline.start if deadline is not None else time.monotonic()
        return cls(config, start=start, earlier_s=earlier)


# ---------------------------------------------------------------------- the run


@dataclass(frozen=True)
class RunOptions:
    data_root: str | Path | None = None
    device: str = "cpu"
    wandb: WandbMode = "offline"
    progress: bool = True
    kernel_options: KernelOptions = DEFAULT_KERNELS
    """Which speed paths the learner may use (all; fewer for A/B benchmarks and tests)."""
    log: Callable[[str], None] = tqdm.write
    """Where the one-line epoch summaries and notes go."""
    stop_on_signals: bool = False
    """SIGTERM/SIGINT stop the run cleanly (RunStopped) instead of killing it (`mamlpp train`)."""
    deadline: Deadline | None = None
    """The command's wall-time budget (`mamlpp train --time-limit`): the run stops cleanly
    before an epoch or the test that would not end inside it, or at the next iteration once it
    has passed (RunStopped)."""


def default_episodes() -> EpisodeFactory:
    from mamlpp.data import make_episodes

    return make_episodes

def open_mirror(
    run_dir: RunDirectory, config: Config, run: Mapping[str, Any], mode: WandbMode
) -> WandbMirror:
    """The run's W&B mirror. Its group is the run name without the seed (preset, overrides and
    scale), so the runs W&B aggregates in a group differ only in the seed, as a row of the
    report's tables; the preset is a tag."""
    commit = run.get("git_commit") or "unknown"
    tags = [
        f"preset:{config.preset}", f"seed:{config.seed}", f"scale:{config.scale}",
        f"commit:{commit[:12]}",
    ]  # fmt: skip
    return WandbMirror(
        mode, run_dir.path, name=str(run["name"]), group=run_group(str(run["name"])), tags=tags,
        config={**config.to_dict(), "run": dict(run)}, run_id=run.get("wandb_id"),
    )  # fmt: skip


def run_epoch(
    learner: MetaLearner, train_step: Any, train: Sampler, val: Sampler, config: Config, epoch: int,
    run_dir: RunDirectory, top_k: TopK, progress: bool, stop: StopRequest | None = None,
) -> tuple[dict[str, Any], bool]:  # fmt: skip
    start = time.perf_counter()
    means, iterations = train_epoch(train_step, train, config, epoch, progress, stop)
    train_seconds = time.perf_counter() - start
    val_result = validate(learner, val, config)
    seconds = time.perf_counter() - start
    row = epoch_row(epoch, learner, means, val_result, seconds, train_seconds, len(iterations))
    return row, finish_epoch(run_dir, learner, row, iterations, top_k)


def train_run(
    config: Config, run_dir: RunDirectory, run: Mapping[str, Any], options: RunOptions,
    episodes: EpisodeFactory | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train (or resume) to the last epoch, then run the ensemble test; returns test.json's dict.
    A finished run (test.json present) is not trained again."""
    finished = run_dir.read_test()
    if finished is not None:
        options.log(f"{run_dir.path} is already finished; its test result is in test.json")
        return finished
    check_schedule(config)
    episodes = episodes or default_episodes()
    torch.manual_seed(config.seed)
    capturable = cuda_graph.applies(config, options.device)
    learner = MetaLearner(
        config, options.device, kernel_options=options.kernel_options, capturable=capturable
    )
    next_epoch, top_k = restore(run_dir, learner, config)
    train_step = cuda_graph.training_step(learner)  # after restore: it reads the optimizer state
    if next_epoch > 0:
        options.log(f"resuming {run_dir.path} after epoch {next_epoch - 1}")
        if (warning := missing_rows_warning(run_dir, next_epoch)) is not None:
            options.log(warning)
    root, device = options.data_root, options.device
    train = episodes(config, "train", data_root=root, seed=train_seed(config), device=device)
    val = episodes(config, "val", data_root=root, seed=config.data.val_seed, device=device)
    mirror = open_mirror(run_dir, config, run, options.wandb)
    options.log(schedule_line(config, options.device))
    epochs = config.schedule.epochs
    pace = Pace.of_run(config, run_dir, next_epoch, options.deadline)
    completed = next_epoch
    try:
        with stop_on_signals(options.stop_on_signals, options.deadline) as stop:
            for epoch in range(next_epoch, epochs):
                row, kept = run_epoch(
                    learner, train_step, train, val, config, epoch, run_dir, top_k,
                    options.progress, stop,
                )  # fmt: skip
                completed = epoch + 1
                mirror.log_epoch(row, learner.lslr_rates())
                pace.add_row(row)
                left = pace.remaining_line(epochs - completed)
                options.log(summary_line(row, epochs, kept) + left)
                stop.make_room(pace.next_piece(epochs - completed))
            result = test_run(
                config, run_dir, top_k.epochs, options, episodes, write=True, stop=stop
            )
            if config.inner.lslr:
                mirror.log_lr_chart(run_dir.read_metrics(), str(run["name"]), config.seed)
        mirror.log_summary(
            {f"test/{k}": v for k, v in result.items() if k in ("accuracy", "ci95", "std")}
        )
    except RunStopped as e:
        e.completed_epochs, e.total_epochs = completed, epochs
        pace.project(e)
        mirror.finish(exit_code=e.exit_code, preempted=e.preempted)
        raise
    except BaseException:
        mirror.finish(exit_code=1)
        raise
    mirror.finish()
    return result


def test_run(
    config: Config, run_dir: RunDirectory, epochs: Sequence[int], options: RunOptions,
    episodes: EpisodeFactory | None = None, write: bool = True, stop: StopRequest | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Score the ensemble of the given epochs' checkpoints on `test_tasks` test tasks. A
    checkpoint that fails its checksum is left out (named in the log and under
    ``skipped_checkpoints`` in the result); ``checkpoint_epochs`` lists the ones used."""
    episodes = episodes or default_episodes()
    paths = {run_dir.epoch_checkpoint(e): e for e in epochs}
    learners, skipped = ensemble.load_learners(config, list(paths), options.device)
    for path, reason in skipped.items():
        options.log(f"warning: {reason}; the ensemble leaves epoch {paths[path]} out")
    used = [e for p, e in paths.items() if p not in skipped]
    sampler = episodes(
        config, "test", data_root=options.data_root, seed=config.data.test_seed,
        device=options.device,
    )  # fmt: skip
    chunks = evaluation_chunks(config, config.schedule.test_tasks, options.device)
    accuracies = ensemble.ensemble_accuracies(
        learners, sampler, chunks, between=(stop or StopRequest()).check
    )
    result: dict[str, Any] = {
        **ensemble.summarise(accuracies),
        "checkpoint_epochs": used,
        "ensemble": ensemble.ENSEMBLE[config.schedule.ensemble],
        "test_seed": config.data.test_seed,
    }
    if skipped:
        result["skipped_checkpoints"] = {str(paths[p]): r for p, r in skipped.items()}
    if write:
        run_dir.write_test(result)
    return result


def test_existing_run(path: Path | str, options: RunOptions) -> tuple[dict[str, Any], bool]:
    """`mamlpp test RUN_DIR`: rescore a run's current top-k checkpoints. Returns (result,
    whether the run finished training); test.json is (re)written only for a finished run."""
    run_dir = RunDirectory(path)
    stored = run_dir.read_config()["config"]
    try:
        config = validate_config(Config.from_dict(stored))  # a hand-edited value out of range too
    except ConfigError as e:
        raise RunDirectoryError(
            f"{run_dir.config_path} does not hold a mamlpp config ({e}); pass the folder that "
            "`mamlpp train` printed"
        ) from None
    if not run_dir.latest_path.exists():
        raise RunDirectoryError(f"{run_dir.path} has no checkpoints yet; train at least one epoch")
    try:
        state = load_latest(run_dir)
    except CorruptFileError:
        # latest.pt names the top k; without it, the epoch checkpoints on disk are those k
        # (`finish_epoch` deletes an evicted one right after latest.pt), so score them
        present = sorted(run_dir.epoch_checkpoints())
        if not present:
            raise
        options.log(
            f"warning: {run_dir.latest_path} is damaged, so the top {config.schedule.ensemble_top_k} "
            f"cannot be read from it; scoring the epoch checkpoints present instead: {present} "
            "(test.json is not written)"
        )
        return test_run(config, run_dir, present, options, write=False), False
    top_k = TopK.from_state(config.schedule.ensemble_top_k, state["top_k"])
    done = int(state["epoch"]) + 1 >= config.schedule.epochs
    return test_run(config, run_dir, top_k.epochs, options, write=done), done
