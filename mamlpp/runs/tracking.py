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

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import platform
import socket
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


def write_error(path: Path, error: OSError) -> RunDirectoryError:
    """One line naming the file and the cause of a failed write (ENOSPC, EROFS, EDQUOT, ...)."""
    cause = error.strerror or str(error)
    name = errno.errorcode.get(error.errno or 0, "")
    hint = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some of your quota",
        errno.EROFS: "make the file system writable or pick another --runs-dir",
    }.get(error.errno or 0, "fix the cause")
    return RunDirectoryError(
        f"cannot write {path}: {cause}{f' ({name})' if name else ''}; {hint}, then run the same "
        "command again: it resumes from the last completed epoch"
    )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename (atomic on POSIX). A failed
    write removes the temporary file and raises a one-line RunDirectoryError (`write_error`)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_error(path, e) from None


def state_digest(obj: Any) -> str:
    """sha256 of a checkpoint's content: every tensor's dtype, shape and bytes and every other
    value's repr, dict keys in sorted order. Stored in the checkpoint (key `CHECKSUM_KEY`) and
    recomputed on load (`verify_state`); torch's zip container checks no checksum itself (a
    flipped byte in a tensor loads silently)."""
    h = hashlib.sha256()

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(value.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, Mapping):
            h.update(b"{")
            for key in sorted(value, key=repr):
                h.update(repr(key).encode() + b":")
                walk(value[key])
            h.update(b"}")
        elif isinstance(value, list | tuple):
            h.update(b"[")
            for item in value:
                walk(item)
            h.update(b"]")
        else:
            h.update(repr(value).encode())
        h.update(b";")

    walk(obj)
    return h.hexdigest()


CHECKSUM_KEY = "sha256"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file and a rename: a kill mid-write keeps the old file. A
    dict gets its content checksum (`state_digest`) under `CHECKSUM_KEY`; the bytes are
    serialised in memory first, so a full disk is an OSError of the write (`write_error`), not
    torch's "unexpected pos"."""
    if isinstance(obj, dict):
        obj = {**{k: v for k, v in obj.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: state_digest(
            {k: v for k, v in obj.items() if k != CHECKSUM_KEY})}  # fmt: skip
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


class CorruptFileError(RunDirectoryError):
    """A run file that cannot be read or fails its checksum."""


def load_verified(path: Path) -> dict[str, Any]:
    """torch.load a checkpoint written by `atomic_torch_save` and check its checksum; returns it
    without the checksum key. CorruptFileError when unreadable or not matching (a file without
    a checksum, written before checksums, is accepted as it is)."""
    if not path.exists():
        raise CorruptFileError(f"checkpoint {path} is missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # any unpickling failure of random bytes (UnpicklingError, EOF, ...)
        raise CorruptFileError(f"checkpoint {path} is unreadable ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise CorruptFileError(f"checkpoint {path} is not a mamlpp checkpoint")
    stored = state.pop(CHECKSUM_KEY, None)
    if stored is not None and stored != state_digest(state):
        raise CorruptFileError(f"checkpoint {path} fails its checksum (the file was damaged)")
    return state


def _decoded_lines(path: Path) -> list[str | None]:
    """The lines of a text file; None for a line that is not UTF-8 (binary garbage)."""
    out: list[str | None] = []
    for raw in path.read_bytes().splitlines():
        try:
            out.append(raw.decode())
        except UnicodeDecodeError:
            out.append(None)
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of `path` (a torn last line from a killed writer, or any other
    line that is not a JSON object, is skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in _decoded_lines(path):
        try:
            row = json.loads(line) if line is not None else None
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_epoch_rows(path: Path) -> list[dict[str, Any]]:
    """The lines of a per-epoch log (metrics.jsonl, iterations.jsonl) for resuming: a torn last
    line is dropped; any other unreadable line, or one without an integer `epoch`, is a
    CorruptFileError naming the line and the fix."""
    if not path.exists():
        return []
    lines = _decoded_lines(path)
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line) if line is not None else None
        except json.JSONDecodeError:
            row = None
        if row is None and number == len(lines):
            continue  # torn by a kill mid-append
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            what = "is not a JSON object" if not isinstance(row, dict) else "has no integer epoch"
            raise CorruptFileError(
                f"line {number} of {path} {what}; delete that line (each line is one "
                "record written by mamlpp) and run the same command again"
            )
        rows.append(row)
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

    def epoch_checkpoints(self) -> dict[int, Path]:
        """The complete epoch checkpoints on disk (`epoch_checkpoint`'s files), by epoch."""
        return {int(p.stem.split("_")[1]): p for p in self.checkpoints.glob("epoch_*.pt")}

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
        try:
            stored = json.loads(self.config_path.read_bytes().decode())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptFileError(
                f"{self.config_path} is unreadable ({type(e).__name__}); it is not a mamlpp run "
                "directory, or its config.json was damaged: start the run again in a new "
                "--runs-dir"
            ) from None
        if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict) or (
            not isinstance(stored.get("run"), dict)
        ):
            raise CorruptFileError(
                f"{self.path} is not a mamlpp run directory (its config.json has no config and "
                "run sections); pass the folder that `mamlpp train` printed"
            )
        return stored

    # ------------------------------------------------------------------ jsonl logs
    def append_metrics(self, row: Mapping[str, Any]) -> None:
        self._append(self.metrics_path, [row])

    def append_iterations(self, rows: list[dict[str, Any]]) -> None:
        self._append(self.iterations_path, rows)

    def _append(self, path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
        """A failed append may leave a torn last line; resuming drops it (`truncate_logs`)."""
        try:
            with open(path, "a") as f:
                f.write(_jsonl(rows))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise write_error(path, e) from None

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def truncate_logs(self, last_epoch: int) -> None:
        """Keep only the lines of epochs <= `last_epoch` (resume drops the epoch in flight)."""
        for path in (self.metrics_path, self.iterations_path):
            rows = [r for r in read_epoch_rows(path) if r["epoch"] <= last_epoch]
            atomic_write_bytes(path, _jsonl(rows).encode())

    # ------------------------------------------------------------------ test.json
    def write_test(self, result: Mapping[str, Any]) -> None:
        atomic_write_bytes(self.test_path, json.dumps(dict(result), indent=2).encode())

    def read_test(self) -> dict[str, Any] | None:
        if not self.test_path.exists():
            return None
        try:
            result = json.loads(self.test_path.read_bytes().decode())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptFileError(
                f"{self.test_path} is unreadable ({type(e).__name__}); delete it and run the "
                "same command again: the test is rerun from the kept checkpoints"
            ) from None
        return result if isinstance(result, dict) else None

    # ------------------------------------------------------------------ lock
    lock_path = property(lambda self: self.path / "run.lock")

    def lock(self) -> None:
        """Hold the run's advisory lock (`flock` on run.lock, which names the holder's PID and
        host) until `unlock` or the process ends: the kernel releases a dead process's lock,
        so a stale lock cannot exist. Another process holding it: RunLockedError naming it.
        Taking a lock this process already holds is a no-op."""
        key = str(self.path.resolve())
        if key in _HELD_LOCKS:
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(self.lock_path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunLockedError(
                f"{self.path} is in use by {lock_holder(self.path) or 'another process'}; "
                "wait for it to end (or stop it), then run the same command again"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
        except OSError as e:
            os.close(fd)
            raise write_error(self.lock_path, e) from None
        _HELD_LOCKS[key] = fd

    def unlock(self) -> None:
        fd = _HELD_LOCKS.pop(str(self.path.resolve()), None)
        if fd is not None:
            os.close(fd)

    def locked_by_other(self) -> bool:
        """Whether another process holds this run's lock now."""
        if str(self.path.resolve()) in _HELD_LOCKS or not self.lock_path.exists():
            return False
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)


class RunLockedError(RunDirectoryError):
    """Another process is training this run."""


_HELD_LOCKS: dict[str, int] = {}
"""run directory (resolved) -> file descriptor holding its flock, for this process."""


def lock_holder(path: Path) -> str | None:
    """What run.lock in `path` says about its holder ('pid N on host H'), or None."""
    try:
        text = (Path(path) / "run.lock").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


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
    given = f"--wandb {choice!r}" if option else f"$WANDB_MODE={choice!r}"
    raise MamlppError(f"{given} is not a valid choice; choose offline, online or off")


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
        errors = wandb.errors
        try:
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
        except (errors.UsageError, errors.AuthenticationError, errors.CommError) as e:
            raise MamlppError(
                f"cannot start the W&B {mode} run ({e}); run `wandb login` or set WANDB_API_KEY, "
                "or use --wandb offline (no account needed)"
            ) from None
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

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        """Close the W&B run; `preempted` (a SIGTERM, as SLURM sends) marks it so first, which
        W&B shows as preempted and a resumed run continues."""
        if self.run is not None:
            if preempted and hasattr(self.run, "mark_preempting"):
                self.run.mark_preempting()
            self.run.finish(exit_code=exit_code)
            self.run = None
