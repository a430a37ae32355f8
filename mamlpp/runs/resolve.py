"""From a command line to a resolved config and its run directory.

One run = one resolved ``Config`` (preset -> scale -> fidelity -> other ``--set`` overrides ->
seed) in one run
directory named by ``run_name`` (docs/run-directory.md). Running the same command again finds
the same directory; ``start_run_directory`` refuses a directory that holds another config.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from mamlpp.config import (
    Config,
    ConfigError,
    apply_overrides,
    apply_scale,
    overrides_dict,
    validate,
)
from mamlpp.errors import MamlppError
from mamlpp.presets import get_preset
from mamlpp.runs.tracking import RunDirectory, RunDirectoryError, git_commit, now_utc, versions


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


def run_group(name: str) -> str:
    """A run name (`run_name`) without its seed: ``<preset>__<slug>__<scale>``, the runs that
    differ only in the seed (one row of the report's tables); a name of another form is its own
    group."""
    parts = name.rsplit("__", 2)  # <preset>__<slug>, seed<S>, <scale>
    if len(parts) == 3 and re.fullmatch(r"seed-?\d+", parts[1]):
        return f"{parts[0]}__{parts[2]}"
    return name


def _spell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def resolve_config(preset: str, overrides: Sequence[str], seed: int, scale: str) -> Config:
    """preset -> scale -> fidelity (a ``fidelity=...`` override, `config.apply_fidelity`) ->
    the other ``--set`` overrides -> seed. The fidelity is an override, so it is part of the run
    name (`run_name`): runs of the two fidelities never share a directory."""
    config = apply_scale(get_preset(preset).config, scale)
    config = apply_overrides(config, list(overrides))
    given = overrides_dict(list(overrides))
    if "seed" in given:
        raise ConfigError(f"--set seed=... is not allowed; use --seed (given: --seed {seed})")
    for key, value in (("preset", preset), ("scale", scale)):
        if key in given:  # they name the run directory: a --set would make it lie
            raise ConfigError(
                f"--set {key}=... is not allowed; use --{key} (given: --{key} {value})"
            )
    return check_schedule(replace(config, seed=seed))


def check_schedule(config: Config) -> Config:
    """Every field in its allowed range (`mamlpp.config.validate`); ConfigError naming the key,
    the value and the range otherwise."""
    return validate(config)


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
    return its stored run info (the same command finds and continues its own run). Takes the
    run's lock first (`RunDirectory.lock`): a run another process trains is refused."""
    run_dir.create()
    run_dir.lock()
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
