"""Run directories -> tidy pandas frames. Analysis reads nothing but run directories.

The format is the contract in ``docs/run-directory.md``: ``config.json``, ``metrics.jsonl`` (one
JSON object per epoch), ``iterations.jsonl`` (one per outer iteration) and ``test.json`` (present
once the run finished). Every frame carries the run's identity columns (``run``, ``preset``,
``variant``, ``seed``, ``scale``) so that it can be grouped without looking anything up.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mamlpp.config import Config
from mamlpp.errors import MamlppError

ID_COLUMNS = ["run", "preset", "variant", "seed", "scale"]
_LSLR_KEY = re.compile(r"^lslr/(?P<param>.+)/step(?P<step>\d+)$")
_GRAD_KEY = re.compile(r"^grad/(?P<param>.+)/(?P<stat>max|min|mean|norm)$")
_CONFIG_SECTIONS = tuple(
    f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(getattr(Config(), f.name))
)
"""The nested sections of a config.json's config (`mamlpp.config.Config`'s dataclass fields)."""


class RunsError(MamlppError):
    """A runs dir that is missing, empty or holds a malformed run directory."""


@dataclass(frozen=True)
class Run:
    """One run directory: its identity, resolved config and (when finished) test result."""

    path: Path
    name: str
    preset: str
    seed: int
    scale: str
    config: dict[str, Any]
    """``Config.to_dict()`` of the resolved config."""
    overrides: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] | None = None
    """``test.json``; None while the run is unfinished."""

    @property
    def finished(self) -> bool:
        return self.test is not None

    @property
    def variant(self) -> str:
        """The preset plus its overrides: runs of one variant differ only in the seed."""
        if not self.overrides:
            return self.preset
        slug = ",".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))
        return f"{self.preset} [{slug}]"

    @property
    def fidelity(self) -> str:
        """'paper' or 'reference-code' (`Config.fidelity`; runs from before the field: paper)."""
        return str(self.config.get("fidelity", "paper"))

    @property
    def uses_lslr(self) -> bool:
        return bool(self.config.get("inner", {}).get("lslr", False))

    @property
    def uses_msl(self) -> bool:
        return bool(self.config.get("outer", {}).get("msl", False))

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / "metrics.jsonl")

    def iterations(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / "iterations.jsonl")


# ---------------------------------------------------------------- reading files


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file; a missing file is empty, a torn last line (a run killed while
    writing) is dropped, a bad line anywhere else is an error naming the file and line."""
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines()
    rows = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if i == len(lines) - 1:
                break  # the epoch in flight when the run was killed
            reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e).split(":")[0]
            raise RunsError(
                f"{path} line {i + 1} is not a JSON object ({reason}); fix or delete that line"
            ) from None
        rows.append(row)
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunsError(
            f"{path} is not valid JSON ({e.msg}); delete the run directory or rerun it"
        ) from e
    if not isinstance(data, dict):
        raise RunsError(f"{path} must hold a JSON object; delete the run directory or rerun it")
    return data


def load_run(path: Path) -> Run:
    """Read one run directory (a folder holding ``config.json``)."""
    doc = _read_json(path / "config.json")
    if "config" not in doc or "run" not in doc:
        raise RunsError(
            f"{path / 'config.json'} lacks the 'config' and 'run' sections of the run-directory "
            "format (docs/run-directory.md); was it written by `mamlpp train`?"
        )
    info, config = doc["run"], doc["config"]
    bad = [k for k in ("config", "run") if not isinstance(doc[k], dict)] or [
        f"config.{k}" for k in _CONFIG_SECTIONS if not isinstance(config.get(k, {}), dict)
    ]
    if bad:
        raise RunsError(
            f"{path / 'config.json'}: {', '.join(bad)} must be a JSON object (docs/run-directory.md); "
            "was it written by `mamlpp train`?"
        )
    test_path = path / "test.json"
    return Run(
        path=path,
        name=str(info.get("name", path.name)),
        preset=str(info.get("preset", config.get("preset", "custom"))),
        seed=int(info.get("seed", config.get("seed", 0))),
        scale=str(info.get("scale", config.get("scale", "custom"))),
        config=config,
        overrides=dict(info.get("overrides") or {}),
        test=_read_json(test_path) if test_path.exists() else None,
    )


def find_run_dirs(runs_dir: Path) -> list[Path]:
    """Every folder under ``runs_dir`` (at any depth) that holds a ``config.json``."""
    return sorted(
        p.parent
        for p in runs_dir.rglob("config.json")
        if not ({"wandb", "checkpoints"} & set(p.relative_to(runs_dir).parts[:-1]))
    )


def load_runs(runs_dir: str | Path, skipped: dict[Path, str] | None = None) -> list[Run]:
    """All runs under ``runs_dir``; a clear error when there is nothing to analyse. With
    ``skipped``, a run directory whose config.json, test.json or metrics.jsonl cannot be read is
    left out and its reason recorded there (a report of the other runs beats none), and so is
    every copy of a run but one (`_one_per_run_name`); without, the first such directory is a
    RunsError."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise RunsError(
            f"runs dir {runs_dir} does not exist; train first (`mamlpp train ... --runs-dir "
            f"{runs_dir}`) or import runs with --from-wandb ENTITY/PROJECT"
        )
    runs = []
    for path in find_run_dirs(runs_dir):
        if skipped is None:
            runs.append(load_run(path))
            continue
        try:
            run = load_run(path)
            run.metrics()  # read now, so that a damaged file leaves this run out, not the report
        except RunsError as e:
            skipped[path] = str(e)
            continue
        runs.append(run)
    runs = _one_per_run_name(runs, runs_dir, skipped)
    if not runs and skipped:
        path, reason = next(iter(skipped.items()))
        raise RunsError(
            f"none of the {len(skipped)} run directories under {runs_dir} can be read; the first, "
            f"{path}: {reason}"
        )
    if not runs:
        raise RunsError(
            f"no runs under {runs_dir} (no folder holds a config.json); train first "
            f"(`mamlpp train ... --runs-dir {runs_dir}`) or pass the folder that holds the runs"
        )
    return runs


def _one_per_run_name(
    runs: list[Run], runs_dir: Path, skipped: dict[Path, str] | None
) -> list[Run]:
    """One run directory per run name (preset, overrides, seed, scale): a copy of a run under the
    same runs dir (a backup, a second download) would count its seed twice in the tables. The
    copy kept is the finished one, then the one with more epochs, then the first by path; the
    others go to ``skipped``, or without it are a RunsError."""
    copies: dict[str, list[Run]] = {}
    for run in runs:
        copies.setdefault(run.name, []).append(run)
    left_out: set[Path] = set()
    for name, group in copies.items():
        if len(group) == 1:
            continue
        if skipped is None:
            raise RunsError(
                f"{len(group)} run directories under {runs_dir} hold the run {name}: "
                f"{', '.join(str(r.path) for r in group)}; move all but one out of {runs_dir} so "
                "that its seed counts once"
            )
        kept = max(group, key=lambda r: (r.finished, len(r.metrics()), -group.index(r)))
        for run in group:
            if run is not kept:
                left_out.add(run.path)
                skipped[run.path] = (
                    f"another copy of the run {name} (kept: {kept.path}, "
                    f"{'finished' if kept.finished else 'unfinished'}); left out so that its "
                    "seed counts once"
                )
    return [r for r in runs if r.path not in left_out]


# ---------------------------------------------------------------- frames


def _identity(run: Run) -> dict[str, Any]:
    return {
        "run": run.name,
        "preset": run.preset,
        "variant": run.variant,
        "seed": run.seed,
        "scale": run.scale,
    }


def runs_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per run: identity, task family, switches and the final test accuracy (fraction)."""
    rows = []
    for r in runs:
        data = r.config.get("data", {})
        rows.append(
            {
                **_identity(r),
                "dataset": data.get("dataset"),
                "n_way": data.get("n_way"),
                "k_shot": data.get("k_shot"),
                "lslr": r.uses_lslr,
                "msl": r.uses_msl,
                "finished": r.finished,
                "test_accuracy": (r.test or {}).get("accuracy"),
                "path": str(r.path),
            }
        )
    return pd.DataFrame(rows)


def metrics_wide(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per run x epoch; one column per ``metrics.jsonl`` key."""
    rows = [{**_identity(r), **m} for r in runs for m in r.metrics()]
    if not rows:
        return pd.DataFrame(columns=[*ID_COLUMNS, "epoch"])
    return pd.DataFrame(rows).sort_values(["run", "epoch"], kind="stable").reset_index(drop=True)


def metrics_long(runs: Iterable[Run]) -> pd.DataFrame:
    """The tidy frame: one row per run x epoch x key, columns ``ID_COLUMNS + [epoch, key, value]``."""
    wide = metrics_wide(runs)
    keys = [c for c in wide.columns if c not in (*ID_COLUMNS, "epoch")]
    long = wide.melt(
        id_vars=[*ID_COLUMNS, "epoch"], value_vars=keys, var_name="key", value_name="value"
    )
    return long.dropna(subset=["value"]).reset_index(drop=True)


def iterations_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per run x outer iteration (``iteration``, ``epoch``, ``train/loss``, ``train/acc``)."""
    rows = [{**_identity(r), **it} for r in runs for it in r.iterations()]
    if not rows:
        return pd.DataFrame(columns=[*ID_COLUMNS, "iteration", "epoch", "train/loss", "train/acc"])
    return pd.DataFrame(rows)


def _param_order(param: str) -> tuple[int, int, str]:
    """Network order: conv0.weight, conv0.bias, ..., conv3.bias, linear.weight, linear.bias."""
    layer, _, kind = param.rpartition(".")
    m = re.fullmatch(r"conv(\d+)", layer)
    rank = int(m.group(1)) if m else (10_000 if layer == "linear" else 20_000)
    return rank, {"weight": 0, "bias": 1}.get(kind, 2), param


def lslr_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """Learned inner learning rates, long: one row per run x epoch x adapted tensor x step.

    ``position`` numbers (tensor, step) pairs in network order with the steps unrolled, and
    ``tensor_step`` labels them (``conv0.weight/step0``); the charts' x axis."""
    long = metrics_long(runs)
    parts = long["key"].str.extract(_LSLR_KEY)
    frame = long.assign(param=parts["param"], step=parts["step"]).dropna(subset=["param"])
    frame = frame.rename(columns={"value": "rate"}).drop(columns="key")
    frame["step"] = frame["step"].astype(int)
    pairs = sorted(
        set(zip(frame["param"], frame["step"], strict=True)),
        key=lambda ps: (_param_order(ps[0]), ps[1]),
    )
    position = {pair: i for i, pair in enumerate(pairs)}
    frame["position"] = [
        position[(p, s)] for p, s in zip(frame["param"], frame["step"], strict=True)
    ]
    frame["tensor_step"] = frame["param"] + "/step" + frame["step"].astype(str)
    return frame.sort_values(["run", "epoch", "position"]).reset_index(drop=True)


def grad_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """Meta-gradient statistics, long: one row per run x epoch x tensor x stat (max/min/mean/norm)."""
    long = metrics_long(runs)
    parts = long["key"].str.extract(_GRAD_KEY)
    frame = long.assign(param=parts["param"], stat=parts["stat"]).dropna(subset=["param"])
    return frame.drop(columns="key").reset_index(drop=True)


def best_epochs(runs: Iterable[Run]) -> dict[str, int]:
    """Run name -> the epoch with the highest ``val/acc`` (the earliest on ties)."""
    wide = metrics_wide(runs)
    if "val/acc" not in wide.columns:
        return {}
    wide = wide.dropna(subset=["val/acc"])
    return {name: int(g.loc[g["val/acc"].idxmax(), "epoch"]) for name, g in wide.groupby("run")}
