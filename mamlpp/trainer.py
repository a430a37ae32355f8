"""Training runs: epochs of outer updates, validation, top-k checkpoints, exact resume, the
ensemble test.

One run = one resolved ``Config`` (preset -> scale -> overrides -> seed) in one run directory
named by ``run_name``. Training meta-batch t is ``train.batch(range(t*B, (t+1)*B))`` and the
learner has no randomness besides its seeded initialisation, so resuming from ``latest.pt``
(learner state incl. Adam and BN running stats, epoch, top-k bookkeeping) continues exactly where
an uninterrupted run would be. The test protocol (DESIGN.md section 4): the top-k checkpoints by
validation accuracy each adapt to every test task; their class probabilities are averaged (mean
of probabilities, not of logits) and the ensemble is scored.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from mamlpp.batch import TaskBatch
from mamlpp.config import Config, ConfigError, apply_overrides, apply_scale, overrides_dict
from mamlpp.errors import MamlppError
from mamlpp.presets import get_preset
from mamlpp.tracking import (
    RunDirectory,
    RunDirectoryError,
    WandbMirror,
    WandbMode,
    atomic_torch_save,
    git_commit,
    now_utc,
    versions,
)

CHECKPOINT_FORMAT = 1


class NonFiniteLossError(MamlppError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class Sampler(Protocol):
    def batch(self, indices: Sequence[int]) -> TaskBatch: ...


EpisodeFactory = Callable[..., Sampler]
"""``make_episodes(config, split, data_root=None, seed=None) -> Sampler``."""


# ---------------------------------------------------------------------- naming and config


def run_name(
    preset: str, overrides: Mapping[str, Any] | Sequence[str], seed: int, scale: str
) -> str:
    """``<preset>__<overrides slug or 'default'>__seed<S>__<scale>`` (docs/run-directory.md).

    The slug is the sorted ``key=value`` pairs (values in JSON spelling, the last of repeated
    keys wins), joined by ',', characters outside ``[A-Za-z0-9._=,-]`` replaced by '-'; past 80
    characters it is its first 60 plus an 8-hex-digit hash of the whole."""
    pairs = overrides_dict(list(overrides)) if not isinstance(overrides, Mapping) else overrides
    text = ",".join(f"{k}={_spell(v)}" for k, v in sorted(pairs.items()))
    slug = re.sub(r"[^A-Za-z0-9._=,-]", "-", text) or "default"
    if len(slug) > 80:
        slug = slug[:60] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{preset}__{slug}__seed{seed}__{scale}"


def _spell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def resolve_config(preset: str, overrides: Sequence[str], seed: int, scale: str) -> Config:
    """preset -> scale -> ``--set`` overrides -> seed."""
    config = apply_scale(get_preset(preset).config, scale)
    config = apply_overrides(config, list(overrides))
    return check_schedule(replace(config, seed=seed))


def check_schedule(config: Config) -> Config:
    """The counts a run needs at least one of; ConfigError naming the key otherwise."""
    s = config.schedule
    counts = {
        "schedule.epochs": s.epochs,
        "schedule.iterations_per_epoch": s.iterations_per_epoch,
        "schedule.val_tasks": s.val_tasks,
        "schedule.test_tasks": s.test_tasks,
        "schedule.ensemble_top_k": s.ensemble_top_k,
        "outer.meta_batch_size": config.outer.meta_batch_size,
    }
    for key, value in counts.items():
        if value < 1:
            raise ConfigError(f"{key}={value} must be at least 1")
    if s.eval_batch_size < 0:
        raise ConfigError(
            f"schedule.eval_batch_size={s.eval_batch_size} must be 0 (= meta-batch) or more"
        )
    return config


def resolve_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise MamlppError(
            "--device cuda was asked for but no CUDA GPU is visible; use --device cpu"
        )
    if choice not in ("cpu", "cuda"):
        raise MamlppError(f"--device {choice!r} is not a valid choice; choose auto, cpu or cuda")
    return choice


def train_seed(config: Config) -> int:
    return config.seed if config.data.train_seed is None else config.data.train_seed


# ---------------------------------------------------------------------- top-k bookkeeping


@dataclass
class TopK:
    """The k best epochs by validation accuracy (ties: the earlier epoch ranks higher)."""

    k: int
    entries: list[tuple[float, int]] = field(default_factory=list)
    """(val accuracy, epoch), best first."""

    def offer(self, epoch: int, accuracy: float) -> tuple[bool, list[int]]:
        """Add an epoch; returns (whether it is kept, the epochs it pushed out)."""
        ranked = sorted([*self.entries, (accuracy, epoch)], key=lambda e: (-e[0], e[1]))
        self.entries, dropped = ranked[: self.k], ranked[self.k :]
        return (accuracy, epoch) in self.entries, [e for _, e in dropped]

    @property
    def epochs(self) -> list[int]:
        return sorted(e for _, e in self.entries)

    def state(self) -> list[list[float]]:
        return [[a, e] for a, e in self.entries]

    @classmethod
    def from_state(cls, k: int, state: list[list[float]]) -> TopK:
        return cls(k, [(float(a), int(e)) for a, e in state])


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


def train_epoch(
    train_step: Any, sampler: Sampler, config: Config, epoch: int, progress: bool
) -> tuple[EpochMeans, list[dict[str, Any]]]:
    """`iterations_per_epoch` outer updates by `train_step` (`cuda_graph.training_step`);
    stops with NonFiniteLossError on a NaN/inf loss."""
    b, iters = config.outer.meta_batch_size, config.schedule.iterations_per_epoch
    means, rows = EpochMeans(), []
    bar = tqdm(
        range(iters), desc=f"epoch {epoch + 1}/{config.schedule.epochs}",
        unit="it", leave=False, disable=not progress, dynamic_ncols=True,
    )  # fmt: skip
    for i in bar:
        t = epoch * iters + i
        step = train_step(sampler.batch(range(t * b, (t + 1) * b)), epoch)
        if not math.isfinite(step.loss):
            bar.close()
            raise NonFiniteLossError(
                f"training loss became {step.loss} at epoch {epoch}, iteration {i} (global "
                f"iteration {t}); the run stopped and its last good checkpoint is kept. "
                "Try a lower outer.lr or inner.lr, or outer.grad_clip"
            )
        means.add(step.loss, step.accuracy, step.grad_stats)
        rows.append(
            {"iteration": t, "epoch": epoch, "train/loss": step.loss, "train/acc": step.accuracy}
        )
        bar.set_postfix(loss=f"{step.loss:.3f}", acc=f"{step.accuracy:.3f}", refresh=False)
    bar.close()
    return means, rows


def evaluation_chunks(config: Config, num_tasks: int) -> list[range]:
    size = config.schedule.eval_batch_size or config.outer.meta_batch_size
    return [range(s, min(s + size, num_tasks)) for s in range(0, num_tasks, size)]


def validate(learner: Any, sampler: Sampler, config: Config) -> tuple[float, float]:
    """Mean target loss and accuracy over the same `val_tasks` tasks every epoch."""
    losses, accs = [], []
    for chunk in evaluation_chunks(config, config.schedule.val_tasks):
        result = learner.evaluate(sampler.batch(chunk))
        losses.append(result.loss.double())
        accs.append(result.accuracy.double())
    return float(torch.cat(losses).mean()), float(torch.cat(accs).mean())


def epoch_row(
    epoch: int, learner: Any, means: EpochMeans, val: tuple[float, float], seconds: float,
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


def remaining_line(epoch_seconds: list[float], epochs_left: int) -> str:
    if epochs_left == 0 or not epoch_seconds:
        return ""
    minutes = sum(epoch_seconds) / len(epoch_seconds) * epochs_left / 60
    return f"  ~{minutes:.1f} min of training left"


# ---------------------------------------------------------------------- checkpoints and resume


def save_latest(run_dir: RunDirectory, learner: Any, epoch: int, top_k: TopK) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "top_k": top_k.state(),
        "learner": learner.state_dict(),
    }
    atomic_torch_save(state, run_dir.latest_path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as e:
        raise RunDirectoryError(
            f"cannot read checkpoint {path} ({e}); delete it to start over"
        ) from None


def load_learner_state(learner: Any, state: dict[str, Any], path: Path) -> None:
    try:
        learner.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as e:
        raise RunDirectoryError(
            f"checkpoint {path} does not fit this run's config ({e}); use another --runs-dir"
        ) from None


def restore(run_dir: RunDirectory, learner: Any, config: Config) -> tuple[int, TopK]:
    """Load latest.pt when there is one; returns (next epoch, top-k). Log lines and checkpoint
    files of epochs after the last completed one (the epoch in flight when killed) are dropped."""
    top_k, next_epoch = TopK(config.schedule.ensemble_top_k), 0
    if run_dir.latest_path.exists():
        state = load_checkpoint(run_dir.latest_path)
        load_learner_state(learner, state["learner"], run_dir.latest_path)
        top_k = TopK.from_state(config.schedule.ensemble_top_k, state["top_k"])
        next_epoch = int(state["epoch"]) + 1
    run_dir.truncate_logs(next_epoch - 1)
    for path in run_dir.checkpoints.glob("epoch_*.pt*"):
        if path.suffix == ".tmp" or int(path.stem.split("_")[1]) not in top_k.epochs:
            path.unlink()
    return next_epoch, top_k


def finish_epoch(
    run_dir: RunDirectory, learner: Any, row: dict[str, Any], iterations: list[dict[str, Any]],
    top_k: TopK,
) -> bool:  # fmt: skip
    """Write the epoch in crash-safe order: logs, top-k checkpoint, metrics line, latest.pt, then
    delete evicted checkpoints. A kill between any two steps resumes to an identical run."""
    epoch = int(row["epoch"])
    run_dir.append_iterations(iterations)
    kept, evicted = top_k.offer(epoch, float(row["val/acc"]))
    if kept:
        atomic_torch_save(learner.state_dict(), run_dir.epoch_checkpoint(epoch))
    run_dir.append_metrics(row)
    save_latest(run_dir, learner, epoch, top_k)
    for old in evicted:
        run_dir.epoch_checkpoint(old).unlink(missing_ok=True)
    return kept


# ---------------------------------------------------------------------- the run


@dataclass(frozen=True)
class RunOptions:
    data_root: str | Path | None = None
    device: str = "cpu"
    wandb: WandbMode = "offline"
    progress: bool = True
    log: Callable[[str], None] = tqdm.write
    """Where the one-line epoch summaries and notes go."""


def default_episodes() -> EpisodeFactory:
    from mamlpp.data import make_episodes

    return make_episodes


def holds_another_config(run_dir: RunDirectory, config: Config) -> bool:
    """Whether `run_dir` holds a run started with a config other than `config` (a run started
    before the code's defaults changed); a run directory without config.json holds none."""
    if not run_dir.config_path.exists():
        return False
    return _differs(run_dir.read_config(), config)


def _differs(stored: dict[str, Any], config: Config) -> bool:
    """Whether a read config.json (`RunDirectory.read_config`) holds another config."""
    return bool(stored["config"] != json.loads(config.to_json()))


def start_run_directory(
    run_dir: RunDirectory, config: Config, run: dict[str, Any]
) -> dict[str, Any]:
    """Write config.json for a new run; for an existing one check it holds this very config and
    return its stored run info (the same command finds and continues its own run)."""
    run_dir.create()
    if run_dir.config_path.exists():
        stored = run_dir.read_config()
        if _differs(stored, config):
            raise RunDirectoryError(
                f"{run_dir.path} holds a run with a different config (the code's defaults "
                "changed since it started?); delete it or pick another --runs-dir"
            )
        return dict(stored["run"])
    wanted = json.loads(config.to_json())
    run = {**run, "versions": versions(), "git_commit": git_commit(), "started": now_utc(),
           "wandb_id": uuid.uuid4().hex[:12]}  # fmt: skip
    run_dir.write_config(wanted, run)
    return run


def open_mirror(
    run_dir: RunDirectory, config: Config, run: Mapping[str, Any], mode: WandbMode
) -> WandbMirror:
    commit = run.get("git_commit") or "unknown"
    tags = [f"seed:{config.seed}", f"scale:{config.scale}", f"commit:{commit[:12]}"]
    return WandbMirror(
        mode, run_dir.path, name=str(run["name"]), group=config.preset, tags=tags,
        config={**config.to_dict(), "run": dict(run)}, run_id=run.get("wandb_id"),
    )  # fmt: skip


def run_epoch(
    learner: Any, train_step: Any, train: Sampler, val: Sampler, config: Config, epoch: int,
    run_dir: RunDirectory, top_k: TopK, progress: bool,
) -> tuple[dict[str, Any], bool]:  # fmt: skip
    start = time.perf_counter()
    means, iterations = train_epoch(train_step, train, config, epoch, progress)
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
    from mamlpp.cuda_graph import training_step
    from mamlpp.learner import MetaLearner

    finished = run_dir.read_test()
    if finished is not None:
        options.log(f"{run_dir.path} is already finished; its test result is in test.json")
        return finished
    check_schedule(config)
    episodes = episodes or default_episodes()
    torch.manual_seed(config.seed)
    learner = MetaLearner(config, device=options.device)
    next_epoch, top_k = restore(run_dir, learner, config)
    train_step = training_step(learner)  # after restore: a CUDA graph takes over the optimizer
    if next_epoch > 0:
        options.log(f"resuming {run_dir.path} after epoch {next_epoch - 1}")
    train = episodes(config, "train", data_root=options.data_root, seed=train_seed(config))
    val = episodes(config, "val", data_root=options.data_root, seed=config.data.val_seed)
    mirror = open_mirror(run_dir, config, run, options.wandb)
    options.log(schedule_line(config, options.device))
    seconds: list[float] = []
    try:
        for epoch in range(next_epoch, config.schedule.epochs):
            row, kept = run_epoch(
                learner, train_step, train, val, config, epoch, run_dir, top_k, options.progress
            )
            mirror.log_epoch(row, learner.lslr_rates())
            seconds.append(row["time/epoch_s"])
            left = remaining_line(seconds, config.schedule.epochs - epoch - 1)
            options.log(summary_line(row, config.schedule.epochs, kept) + left)
        result = test_run(config, run_dir, top_k.epochs, options, episodes, write=True)
        mirror.log_summary(
            {f"test/{k}": v for k, v in result.items() if k in ("accuracy", "ci95", "std")}
        )
    except BaseException:
        mirror.finish(exit_code=1)
        raise
    mirror.finish()
    return result


def test_run(
    config: Config, run_dir: RunDirectory, epochs: Sequence[int], options: RunOptions,
    episodes: EpisodeFactory | None = None, write: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Score the ensemble of the given epochs' checkpoints on `test_tasks` test tasks."""
    from mamlpp import ensemble

    episodes = episodes or default_episodes()
    learners = ensemble.load_learners(
        config, [run_dir.epoch_checkpoint(e) for e in epochs], options.device
    )
    sampler = episodes(config, "test", data_root=options.data_root, seed=config.data.test_seed)
    chunks = evaluation_chunks(config, config.schedule.test_tasks)
    result = {
        **ensemble.summarise(ensemble.ensemble_accuracies(learners, sampler, chunks)),
        "checkpoint_epochs": list(epochs),
        "ensemble": ensemble.ENSEMBLE,
        "test_seed": config.data.test_seed,
    }
    if write:
        run_dir.write_test(result)
    return result


def test_existing_run(path: Path | str, options: RunOptions) -> tuple[dict[str, Any], bool]:
    """`mamlpp test RUN_DIR`: rescore a run's current top-k checkpoints. Returns (result,
    whether the run finished training); test.json is (re)written only for a finished run."""
    run_dir = RunDirectory(path)
    config = Config.from_dict(run_dir.read_config()["config"])
    if not run_dir.latest_path.exists():
        raise RunDirectoryError(f"{run_dir.path} has no checkpoints yet; train at least one epoch")
    state = load_checkpoint(run_dir.latest_path)
    top_k = TopK.from_state(config.schedule.ensemble_top_k, state["top_k"])
    done = int(state["epoch"]) + 1 >= config.schedule.epochs
    return test_run(config, run_dir, top_k.epochs, options, write=done), done
