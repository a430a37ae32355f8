"""The run directory (docs/run-directory.md) and its W&B mirror.

``RunDirectory`` writes the files analysis reads: ``config.json``, ``metrics.jsonl`` (one flat
line per epoch, appended and flushed), ``iterations.jsonl``, ``checkpoints/`` and ``test.json``.
Every checkpoint and whole-file write goes to a temporary name first and is then renamed, so a
process killed at any moment leaves either the old file or the new one, never half of one.

``WandbMirror`` sends the same per-epoch dict to ``wandb.log`` (offline by default, no account
needed) with ``epoch`` as the x axis of every metric, plus the learned inner learning rates as a
per-epoch ``wandb.Table``; when the run ends it logs the report's learned-learning-rate chart
(mamlpp.runs.charts, with its epoch slider) as an HTML panel, so the W&B run page shows it too.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch

import mamlpp
from mamlpp.errors import MamlppError

WandbMode = Literal["offline", "online", "off"]


class RunDirectoryError(MamlppError):
    """The runs directory cannot be created or written, or holds a different run."""


# ---------------------------------------------------------------------- files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename (atomic on POSIX)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file and a rename: a kill mid-write keeps the old file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of `path` (a torn last line from a killed writer is skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _jsonl(rows: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(dict(r), allow_nan=True) + "\n" for r in rows)


class RunDirectory:
    """One run's folder; the only thing analysis reads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    iterations_path = property(lambda self: self.path / "iterations.jsonl")
    test_path = property(lambda self: self.path / "test.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    latest_path = property(lambda self: self.path / "checkpoints" / "latest.pt")

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:03d}.pt"

    def create(self) -> None:
        """Make the folder (and `checkpoints/`); a clear error when that is not possible."""
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise RunDirectoryError(
                f"cannot write the run directory {self.path} ({e.strerror or e}); "
                "choose a writable folder with --runs-dir"
            ) from None

    # ------------------------------------------------------------------ config.json
    def write_config(self, config: dict[str, Any], run: dict[str, Any]) -> None:
        text = json.dumps({"config": config, "run": run}, indent=2, sort_keys=True)
        atomic_write_bytes(self.config_path, text.encode())

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            raise RunDirectoryError(
                f"{self.path} is not a run directory (no config.json); "
                "pass the folder that `mamlpp train` printed"
            )
        return json.loads(self.config_path.read_text())

    # ------------------------------------------------------------------ jsonl logs
    def append_metrics(self, row: Mapping[str, Any]) -> None:
        self._append(self.metrics_path, [row])

    def append_iterations(self, rows: list[dict[str, Any]]) -> None:
        self._append(self.iterations_path, rows)

    def _append(self, path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
        with open(path, "a") as f:
            f.write(_jsonl(rows))
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def truncate_logs(self, last_epoch: int) -> None:
        """Keep only the lines of epochs <= `last_epoch` (resume drops the epoch in flight)."""
        for path in (self.metrics_path, self.iterations_path):
            rows = [r for r in read_jsonl(path) if r["epoch"] <= last_epoch]
            atomic_write_bytes(path, _jsonl(rows).encode())

    # ------------------------------------------------------------------ test.json
    def write_test(self, result: Mapping[str, Any]) -> None:
        atomic_write_bytes(self.test_path, json.dumps(dict(result), indent=2).encode())

    def read_test(self) -> dict[str, Any] | None:
        return json.loads(self.test_path.read_text()) if self.test_path.exists() else None


# ---------------------------------------------------------------------- provenance


def git_commit() -> str | None:
    """The commit of the mamlpp source tree (suffix '-dirty' with local changes), or None."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    return {
        "mamlpp": mamlpp.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------- W&B


def resolve_wandb_mode(option: str | None) -> WandbMode:
    """--wandb wins; else the user's WANDB_MODE (online/offline/disabled); else offline."""
    choice = option or os.environ.get("WANDB_MODE", "offline")
    if choice in ("disabled", "off"):
        return "off"
    if choice in ("online", "run"):
        return "online"
    if choice in ("offline", "dryrun"):
        return "offline"
    raise MamlppError(f"--wandb {choice!r} is not a valid choice; choose offline, online or off")


class WandbMirror:
    """Mirror of metrics.jsonl in W&B; a no-op with mode 'off'."""

    def __init__(
        self,
        mode: WandbMode,
        run_dir: Path,
        name: str,
        group: str,
        tags: list[str],
        config: dict[str, Any],
        run_id: str | None = None,
    ) -> None:
        """`run_id` (kept in config.json) makes a resumed run continue the same W&B run."""
        self.run: Any = None
        if mode == "off":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        if os.environ.get("WANDB_SWEEP_ID") or os.environ.get("WANDB_RUN_ID"):
            run_id = None  # a W&B sweep agent (or the user) chose the run id
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "mamlpp"),
            mode=mode,
            dir=str(run_dir),
            name=name,
            group=group,
            tags=tags,
            config=config,
            id=run_id,
            resume="allow" if run_id else None,
            reinit="create_new",
        )
        # Every per-epoch metric is plotted against `epoch` (W&B's default x is its own step).
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

    def log_epoch(self, metrics: Mapping[str, Any], lslr: Mapping[str, list[float]]) -> None:
        """`metrics` exactly as written to metrics.jsonl, then the LSLR picture as a table."""
        if self.run is None:
            return
        import wandb

        epoch = int(metrics["epoch"])
        self.run.log(dict(metrics), step=epoch, commit=False)
        rows = [[epoch, p, k, lr] for p, rates in lslr.items() for k, lr in enumerate(rates)]
        table = wandb.Table(columns=["epoch", "param", "step", "lr"], data=rows)
        self.run.log({"lslr_table": table}, step=epoch, commit=True)

    def log_lr_chart(self, rows: list[dict[str, Any]], title: str, seed: int) -> bool:
        """Log the learned-learning-rate chart of this run (its ``metrics.jsonl`` rows) as
        ``charts/learned_lr``, an interactive HTML panel; False when there is nothing to draw.
        The panel loads plotly.js from plotly's CDN (W&B pages are viewed online; embedding it
        would add 4.8 MB to every run)."""
        if self.run is None:
            return False
        from mamlpp.runs.charts import run_lr_figure

        fig = run_lr_figure(rows, title, seed)
        if fig is None:
            return False
        import wandb

        page = fig.to_html(include_plotlyjs="cdn", full_html=True)
        last = max(int(r["epoch"]) for r in rows)
        self.run.log({"epoch": last, "charts/learned_lr": wandb.Html(page, inject=False)})
        return True

    def log_summary(self, values: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(dict(values))

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
