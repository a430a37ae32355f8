"""`mamlpp train --seed 0 --seed 1`: two seeds trained together write the run directories that
two separate runs write (float32; the shared step differs from separate runs in summation order
only: tests/test_seeds.py), resume together, and refuse what they cannot do together.

The numerical comparison runs the trainer with the CPU's task threads off: a single float32 run
with them on and off already drifts apart at this tiny scale (1e-7 differences grow to 5e-2 in
the training loss within a few second-order iterations), so only one grouping is comparable."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mamlpp.cli import main
from mamlpp.kernels import KernelOptions
from mamlpp.runs import tracking
from mamlpp.runs.checkpoints import load_latest
from mamlpp.runs.multiseed import train_runs
from mamlpp.runs.resolve import resolve_config, run_name, start_run_directory
from mamlpp.runs.tracking import RunDirectory, read_jsonl
from mamlpp.runs.trainer import RunOptions, train_run
from tests.support.deadline import ScriptedDeadline

OVERRIDES = [
    "data.dataset=synthetic",
    "model.filters=6",
    "inner.steps=2",
    "inner.eval_steps=2",
    "outer.meta_batch_size=2",
    "outer.msl_epochs=1",
    "schedule.epochs=3",
    "schedule.iterations_per_epoch=2",
    "schedule.val_tasks=4",
    "schedule.test_tasks=4",
    "schedule.ensemble_top_k=2",
]
PRESET = "omniglot_5way_1shot_mamlpp"
REL = 1e-4


def _train(
    runs: Path, seeds: list[int], overrides: list[str] = OVERRIDES, wandb: str = "off",
    extra: list[str] | None = None,
) -> Any:  # fmt: skip
    args = ["train", "--preset", PRESET, "--scale", "smoke", "--runs-dir", str(runs), *(extra or [])]
    args += ["--wandb", wandb, "--device", "cpu", "--no-progress"]
    args += [a for s in seeds for a in ("--seed", str(s))]
    args += [a for o in overrides for a in ("--set", o)]
    return CliRunner().invoke(main, args)


def _run_dir(runs: Path, seed: int) -> RunDirectory:
    (path,) = runs.glob(f"*__seed{seed}__smoke")
    return RunDirectory(path)


def _assert_close(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=REL, abs_tol=REL), (where, a, b)
    else:
        assert a == b, (where, a, b)


def _outputs(run_dir: RunDirectory) -> dict[str, Any]:
    """What a run directory records, less the wall-clock columns."""
    return {
        "metrics": [
            {k: v for k, v in row.items() if not k.startswith("time/")}
            for row in run_dir.read_metrics()
        ],
        "iterations": read_jsonl(run_dir.path / "iterations.jsonl"),
        "test": run_dir.read_test(),
    }


def _trainer_runs(root: Path, seeds: list[int], together: bool) -> list[RunDirectory]:
    """The runs of `seeds` by the trainer, all together or one by one, on one task group (the
    CPU's task threads off, as the joint step runs: tests/test_seeds.py)."""
    overrides = [*OVERRIDES, "model.filters=16", "schedule.epochs=2"]
    options = RunOptions(
        device="cpu", wandb="off", progress=False, log=lambda line: None,
        kernel_options=KernelOptions(task_threads=False),
    )  # fmt: skip
    configs, dirs, runs = [], [], []
    for seed in seeds:
        name = run_name(PRESET, overrides, seed, "smoke")
        configs.append(resolve_config(PRESET, overrides, seed, "smoke"))
        dirs.append(RunDirectory(root / name))
        runs.append(start_run_directory(dirs[-1], configs[-1], {"name": name}))
    if together:
        train_runs(configs, dirs, runs, options)
    else:
        for c, d, r in zip(configs, dirs, runs, strict=True):
            train_run(c, d, r, options)
    return dirs


def test_two_seeds_together_write_what_separate_runs_write(tmp_path: Path) -> None:
    """float32, 2 epochs (MSL's two phases), second order: measured worst relative difference 3.7e-5
    (gradient statistics; the minima and the conv biases' gradients, zero in exact arithmetic,
    are rounding noise, hence also an absolute tolerance)."""
    together = _trainer_runs(tmp_path / "together", [0, 1], together=True)
    apart = _trainer_runs(tmp_path / "apart", [0, 1], together=False)
    for seed, (a, b) in enumerate(zip(together, apart, strict=True)):
        assert a.path.name == b.path.name
        _assert_close(_outputs(a), _outputs(b), f"seed {seed}")
        assert len(a.read_metrics()) == 2 and (a.read_test() or {})["checkpoint_epochs"]
    assert _outputs(together[0])["metrics"] != _outputs(together[1])["metrics"]


def test_cli_trains_seeds_into_their_own_run_directories(tmp_path: Path) -> None:
    """Each seed's run directory, config.json, checkpoints, test.json and W&B run (offline, in
    one process: W&B's create_new runs) as its own command would write them."""
    from tests.support.wandb_records import history

    done = _train(tmp_path, [0, 1], wandb="offline")
    assert done.exit_code == 0, done.output
    for seed in (0, 1):
        run_dir = _run_dir(tmp_path, seed)
        assert f"seed {seed}: ensemble test accuracy" in done.output
        assert run_dir.path.name == run_name(PRESET, OVERRIDES, seed, "smoke")
        stored = run_dir.read_config()
        assert stored["config"] == json.loads(resolve_config(PRESET, OVERRIDES, seed, "smoke").to_json())
        assert stored["run"]["seed"] == seed
        assert run_dir.read_test() is not None
        assert str(run_dir.path.resolve()) not in tracking._HELD_LOCKS  # unlocked
        assert load_latest(run_dir)["epoch"] == 2
        (wandb_file,) = (run_dir.path / "wandb").glob("offline-run-*/run-*.wandb")
        logged = [row["val/acc"] for row in history(wandb_file) if "val/acc" in row]
        assert logged == [row["val/acc"] for row in run_dir.read_metrics()]
    again = _train(tmp_path, [0, 1])  # finished: the same command only reports
    assert again.exit_code == 0 and again.output.count("already finished") == 2


def test_a_finished_seed_reports_and_the_other_trains_alone(tmp_path: Path) -> None:
    runs, reference = tmp_path / "runs", tmp_path / "reference"
    assert _train(reference, [1]).exit_code == 0
    assert _train(runs, [0]).exit_code == 0
    done = _train(runs, [0, 1])
    assert done.exit_code == 0, done.output
    assert "already finished" in done.output
    assert _outputs(_run_dir(runs, 1)) == _outputs(_run_dir(reference, 1))


def test_a_repeated_seed_is_one_clear_line(tmp_path: Path) -> None:
    done = _train(tmp_path, [3, 3])
    assert done.exit_code == 2
    assert "--seed 3 is given twice" in done.output


def test_interrupted_seeds_resume_to_the_same_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after an epoch (RunStopped at the epoch's end), rerun: the same outputs as an
    uninterrupted joint run; one seed's latest.pt rolled back an epoch: refused in one line."""
    from mamlpp.runs import multiseed, trainer

    full = tmp_path / "full"
    assert _train(full, [0, 1]).exit_code == 0

    runs, stop_after = tmp_path / "runs", 1
    calls = {"n": 0}
    original = multiseed.train_epoch_together

    def stopping(*args: Any, **kw: Any) -> Any:
        if calls["n"] == stop_after:
            raise trainer.RunStopped(15)
        calls["n"] += 1
        return original(*args, **kw)

    monkeypatch.setattr(multiseed, "train_epoch_together", stopping)
    stopped = _train(runs, [0, 1])
    assert stopped.exit_code == 128 + 15, stopped.output
    monkeypatch.setattr(multiseed, "train_epoch_together", original)
    assert load_latest(_run_dir(runs, 0))["epoch"] == stop_after - 1
    mismatch = tmp_path / "mismatch"
    shutil.copytree(runs, mismatch)
    _run_dir(mismatch, 1).latest_path.unlink()  # seed 1 restarts from epoch 0, seed 0 does not
    refused = _train(mismatch, [0, 1])
    assert refused.exit_code == 2
    assert "seed 0 at epoch 1, seed 1 at epoch 0" in refused.output
    assert "resume them separately" in refused.output
    resumed = _train(runs, [0, 1])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming 2 seeds" in resumed.output
    for seed in (0, 1):  # the same joint step before and after the stop: identical
        assert _outputs(_run_dir(runs, seed)) == _outputs(_run_dir(full, seed))


def test_seeds_together_stop_at_the_time_limit_and_resume_to_the_same_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The time limit (scripted: no room after the first epoch) stops both seeds at the same
    epoch boundary with exit status 75; the rerun ends where an uninterrupted joint run ends."""
    from mamlpp.runs import cli as runs_cli

    full = tmp_path / "full"
    assert _train(full, [0, 1]).exit_code == 0
    monkeypatch.setattr(runs_cli, "Deadline", ScriptedDeadline)
    monkeypatch.setattr(ScriptedDeadline, "ROOM", [False])
    runs = tmp_path / "runs"
    stopped = _train(runs, [0, 1], extra=["--time-limit", "5"])
    assert stopped.exit_code == 75, stopped.output
    assert "time limit of 5.0 min reached at epoch 1/3 " in stopped.stderr
    assert [len(_run_dir(runs, s).read_metrics()) for s in (0, 1)] == [1, 1]
    resumed = _train(runs, [0, 1])
    assert resumed.exit_code == 0, resumed.output
    for seed in (0, 1):
        assert _outputs(_run_dir(runs, seed)) == _outputs(_run_dir(full, seed))


def test_folded_validation_equals_validating_each_seed() -> None:
    """float64: `validate_seeds` folded (one pass per chunk over three seeds, on the CPU here)
    gives each seed what `validate` gives its learner, to rounding (1e-12); chunks of 2, 2 and
    1 tasks, passes split further by a small `max_tasks`. The seeds' results differ, so a
    seed mix-up fails."""
    from dataclasses import replace

    import torch

    from mamlpp.data import make_episodes
    from mamlpp.engine.seeds import SeedStack
    from mamlpp.runs.trainer import validate, validate_seeds
    from tests.test_seeds import random_batch, tiny

    base = tiny()
    base = replace(base, schedule=replace(base.schedule, val_tasks=5, eval_batch_size=2))
    configs = [replace(base, seed=s) for s in range(3)]
    stack = SeedStack(configs, dtype=torch.float64)
    for step in range(2):
        stack.train_step([random_batch(base, 2, 10 * step + s) for s in range(3)], step)
    val = make_episodes(base, "val")
    apart = [validate(stack.learner(s), val, base) for s in range(3)]
    assert len(set(apart)) == 3
    assert validate_seeds(stack, val, base, fold=False) == apart  # the CPU's path: unchanged
    folded = validate_seeds(stack, val, base, fold=True)
    assert validate_seeds(stack, val, base) == apart  # the CPU does not fold by default
    original = stack.evaluate_shared
    stack.evaluate_shared = lambda batch: original(batch, max_tasks=3)  # type: ignore[method-assign]
    split = validate_seeds(stack, val, base, fold=True)
    for results in (folded, split):
        assert len(results) == 3
        for (loss, acc), (ref_loss, ref_acc) in zip(results, apart, strict=True):
            assert abs(loss - ref_loss) < 1e-12 and abs(acc - ref_acc) < 1e-12
