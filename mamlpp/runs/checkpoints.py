"""Checkpoints of a run: the top-k epochs by validation accuracy, ``latest.pt`` for exact resume,
and the crash-safe order in which an epoch's files are written.

``latest.pt`` holds the learner's whole state (meta-parameters, Adam, BN running statistics),
the epoch and the top-k bookkeeping; ``checkpoints/epoch_<E>.pt`` holds the learner state of a
top-k epoch (what the test ensemble loads). Every write is atomic and carries a content checksum
that every load verifies (`tracking.atomic_torch_save`, `tracking.load_verified`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamlpp.config import Config
from mamlpp.engine.learner import MetaLearner
from mamlpp.runs.tracking import (
    CorruptFileError,
    RunDirectory,
    RunDirectoryError,
    atomic_torch_save,
    load_verified,
)

CHECKPOINT_FORMAT = 1


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


def save_latest(run_dir: RunDirectory, learner: MetaLearner, epoch: int, top_k: TopK) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "top_k": top_k.state(),
        "learner": learner.state_dict(),
    }
    atomic_torch_save(state, run_dir.latest_path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint, its checksum verified; CorruptFileError otherwise (`load_verified`)."""
    return load_verified(path)


def load_latest(run_dir: RunDirectory) -> dict[str, Any]:
    """latest.pt, verified; a damaged one is a CorruptFileError with a fix that works: without
    latest.pt the run starts again from epoch 0 (`restore` drops the logs and checkpoints that
    no latest.pt vouches for)."""
    fix = (
        f"training cannot resume from it. Delete {run_dir.latest_path} and run the same command "
        "again: the run restarts from epoch 0, discarding its logs and checkpoints"
    )
    try:
        state = load_verified(run_dir.latest_path)
    except CorruptFileError as e:
        raise CorruptFileError(f"{e}; {fix}") from None
    fields = (state.get("epoch"), state.get("top_k"), state.get("learner"))
    if not all(isinstance(v, t) for v, t in zip(fields, (int, list, dict), strict=True)):
        raise CorruptFileError(f"{run_dir.latest_path} is not a mamlpp checkpoint; {fix}")
    return state


def load_learner_state(learner: MetaLearner, state: dict[str, Any], path: Path) -> None:
    try:
        learner.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as e:
        raise RunDirectoryError(
            f"checkpoint {path} does not fit this run's config ({e}); use another --runs-dir"
        ) from None


def restore(run_dir: RunDirectory, learner: MetaLearner, config: Config) -> tuple[int, TopK]:
    """Load latest.pt when there is one; returns (next epoch, top-k). Log lines and checkpoint
    files of epochs after the last completed one (the epoch in flight when killed) are dropped."""
    top_k, next_epoch = TopK(config.schedule.ensemble_top_k), 0
    if run_dir.latest_path.exists():
        state = load_latest(run_dir)
        load_learner_state(learner, state["learner"], run_dir.latest_path)
        top_k = TopK.from_state(config.schedule.ensemble_top_k, state["top_k"])
        next_epoch = int(state["epoch"]) + 1
    run_dir.truncate_logs(next_epoch - 1)
    for path in run_dir.checkpoints.glob("epoch_*.pt.tmp"):
        path.unlink()
    for epoch, path in run_dir.epoch_checkpoints().items():
        if epoch not in top_k.epochs:
            path.unlink()
    return next_epoch, top_k


def missing_rows_warning(run_dir: RunDirectory, next_epoch: int) -> str | None:
    """A warning line when metrics.jsonl lacks epochs before `next_epoch` that latest.pt vouches
    for. `finish_epoch` writes an epoch's line before its latest.pt, so only damage or an edit
    outside mamlpp loses one; the lost rows do not come back without training again, so the
    run goes on without them and says so."""
    have = {int(r["epoch"]) for r in run_dir.read_metrics()}
    missing = [e for e in range(next_epoch) if e not in have]
    if not missing:
        return None
    shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
    return (
        f"warning: {run_dir.metrics_path} lacks the lines of epochs {shown} ({len(missing)} of "
        f"{next_epoch}; damaged or edited outside mamlpp); training goes on from latest.pt and "
        "those epochs stay missing from the curves (restore the file from a copy to keep them)"
    )


def finish_epoch(
    run_dir: RunDirectory, learner: MetaLearner, row: dict[str, Any], iterations: list[dict[str, Any]],
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
