"""End-to-end training runs at a tiny scale: the run directory, the W&B mirror, the ensemble test,
the NaN stop and the CLI's errors. (Resume after a killed process: test_trainer_resume.py.)"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from mamlpp.cli import main
from mamlpp.config import Config
from mamlpp.engine import schedules
from mamlpp.runs import ensemble, trainer
from mamlpp.runs.resolve import resolve_config, start_run_directory
from mamlpp.runs.tracking import RunDirectory, RunDirectoryError
from mamlpp.runs.trainer import NonFiniteLossError, RunOptions

PRESET = "omniglot_5way_1shot_mamlpp"
TINY = [
    "model.filters=8",
    "inner.steps=2",
    "inner.eval_steps=2",
    "outer.meta_batch_size=2",
    "outer.msl_epochs=3",
    "schedule.iterations_per_epoch=2",
    "schedule.val_tasks=4",
    "schedule.test_tasks=4",
]


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def _only_run(runs: Path) -> RunDirectory:
    (path,) = runs.iterdir()
    return RunDirectory(path)


def _expected_keys(config: Config, meta_names: list[str], adapted: list[str]) -> set[str]:
    keys = {"epoch", "train/loss", "train/acc", "val/loss", "val/acc", "meta_lr"}
    keys |= {f"lslr/{p}/step{k}" for p in adapted for k in range(config.bn_sets)}
    keys |= {f"msl/step{k}" for k in range(config.inner.steps)}
    keys |= {f"grad/{p}/{s}" for p in meta_names for s in ("max", "min", "mean", "norm")}
    return keys | {"time/epoch_s", "time/iters_per_s"}


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Record which splits/seeds the run samples and which learners the ensemble scores."""
    from mamlpp.data import make_episodes

    seen: dict[str, list[Any]] = {"episodes": [], "learners": []}

    def spy_episodes(config: Config, split: str, **kw: Any) -> Any:
        seen["episodes"].append((split, kw.get("seed")))
        return make_episodes(config, split, **kw)  # type: ignore[arg-type]

    original = ensemble.ensemble_accuracies

    def spy_accuracies(learners: Any, sampler: Any, chunks: Any, **kw: Any) -> torch.Tensor:
        seen["learners"].append(list(learners))
        return original(learners, sampler, chunks, **kw)

    monkeypatch.setattr(trainer, "default_episodes", lambda: spy_episodes)
    monkeypatch.setattr(ensemble, "ensemble_accuracies", spy_accuracies)
    return seen


def test_omniglot_run_directory_wandb_and_ensemble(
    tmp_path: Path, shared_data_root: Path, spies: dict[str, list[Any]]
) -> None:
    overrides = [*TINY, "schedule.epochs=6"]
    args = ["train", "--preset", PRESET, "--seed", "0", "--scale", "smoke", *_sets(overrides)]
    args += ["--runs-dir", str(tmp_path / "runs"), "--data-root", str(shared_data_root)]
    result = CliRunner().invoke(
        main, [*args, "--wandb", "offline", "--device", "cpu", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    run = _only_run(tmp_path / "runs")
    assert "ensemble test accuracy" in result.output and str(run.path) in result.output
    config = resolve_config(PRESET, overrides, 0, "smoke")
    stored = json.loads(run.config_path.read_text())
    assert stored["config"] == json.loads(config.to_json())
    assert stored["run"]["scale"] == "smoke" and stored["run"]["seed"] == 0
    assert set(stored["run"]["versions"]) == {"mamlpp", "torch", "python"}
    assert {"git_commit", "device", "started", "name", "overrides"} <= set(stored["run"])

    _check_metrics(run, config)
    _check_ensemble(run, config, spies)
    _check_wandb(run)
    rescored = CliRunner().invoke(
        main, ["test", str(run.path), "--data-root", str(shared_data_root)]
    )
    assert rescored.exit_code == 0, rescored.output
    accuracy = json.loads(run.test_path.read_text())["accuracy"]
    assert f"ensemble test accuracy: {100 * accuracy:.2f}%" in rescored.output


def _check_metrics(run: RunDirectory, config: Config) -> None:
    from mamlpp.engine.learner import MetaLearner

    learner = MetaLearner(config)
    learner.load_state_dict(torch.load(run.latest_path)["learner"])
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == list(range(6))
    expected = _expected_keys(config, list(learner.meta_parameters()), learner.adapted_names)
    assert all(set(r) == expected for r in rows)
    for r in rows:
        weights = schedules.msl_weights(2, r["epoch"], 3, True)
        assert [r[f"msl/step{k}"] for k in range(2)] == pytest.approx(weights)
        assert r["meta_lr"] == pytest.approx(schedules.meta_lr(config, r["epoch"]))
    assert rows[0]["msl/step0"] > 0 and rows[-1]["msl/step0"] == 0  # MSL annealed
    last = rows[-1]
    for name in learner.adapted_names:
        rates = learner.meta_parameters()[f"lslr.{name}"].tolist()
        assert [last[f"lslr/{name}/step{k}"] for k in range(len(rates))] == rates
    assert rows[0]["lslr/conv0.weight/step0"] != rows[-1]["lslr/conv0.weight/step0"]
    iterations = [json.loads(line) for line in run.iterations_path.read_text().splitlines()]
    assert [i["iteration"] for i in iterations] == list(range(12))


def _check_ensemble(run: RunDirectory, config: Config, spies: dict[str, list[Any]]) -> None:
    rows = run.read_metrics()
    best = sorted(rows, key=lambda r: (-r["val/acc"], r["epoch"]))[:5]
    test = json.loads(run.test_path.read_text())
    assert test["checkpoint_epochs"] == sorted(r["epoch"] for r in best)
    assert test["num_tasks"] == 4 and 0.0 <= test["accuracy"] <= 1.0
    assert test["test_seed"] == config.data.test_seed
    assert test["ensemble"] == "mean of class probabilities"
    assert math.isclose(test["ci95"], 1.96 * test["std"] / 2.0)
    files = sorted(p.name for p in run.checkpoints.iterdir())
    assert files == sorted(["latest.pt"] + [f"epoch_{e:03d}.pt" for e in test["checkpoint_epochs"]])
    assert ("test", config.data.test_seed) in spies["episodes"]
    assert ("val", config.data.val_seed) in spies["episodes"]
    assert ("train", 0) in spies["episodes"]
    (learners,) = spies["learners"]
    firsts = {float(lr.meta_parameters()["conv0.weight"].detach().flatten()[0]) for lr in learners}
    assert len(learners) == 5 and len(firsts) == 5  # five distinct checkpoints


def _check_wandb(run: RunDirectory) -> None:
    files = list((run.path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    data = files[0].read_bytes()
    assert b"lslr/conv0.weight/step0" in data and b"lslr_table" in data


def test_nan_loss_stops_with_epoch_and_iteration_and_keeps_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mamlpp.engine.learner import MetaLearner

    calls = {"n": 0}
    original = MetaLearner.train_step

    def poisoned(self: Any, batch: Any, epoch: int) -> Any:
        result = original(self, batch, epoch)
        calls["n"] += 1
        return replace(result, loss=float("nan")) if calls["n"] == 4 else result

    monkeypatch.setattr(MetaLearner, "train_step", poisoned)
    config = resolve_config(
        PRESET, [*TINY, "data.dataset=synthetic", "schedule.epochs=3"], 0, "smoke"
    )
    run = RunDirectory(tmp_path / "run")
    info = start_run_directory(run, config, {"name": "nan"})
    options = RunOptions(wandb="off", progress=False, log=lambda _: None)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, iteration 1 \(global iteration 3\)"):
        trainer.train_run(config, run, info, options)
    assert torch.load(run.latest_path)["epoch"] == 0
    assert [r["epoch"] for r in run.read_metrics()] == [0]
    assert not run.test_path.exists()


def test_rerun_with_a_different_config_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    config = resolve_config(PRESET, ["data.dataset=synthetic"], 0, "smoke")
    first = start_run_directory(run, config, {"name": "x"})
    assert start_run_directory(run, config, {"name": "x"}) == first
    with pytest.raises(RunDirectoryError, match="different config"):
        start_run_directory(run, replace(config, seed=1), {"name": "x"})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--preset", "omniglot_5way_1shot_mamlp"], "unknown preset 'omniglot_5way_1shot_mamlp'"),
        (["--preset", PRESET, "--set", "inner.stepz=3"], "unknown config key 'inner.stepz'"),
        (["--preset", PRESET, "--set", "inner.steps"], "must look like key=value"),
        (["--preset", PRESET, "--set", "inner.steps=three"], "inner.steps needs an integer"),
        (["--preset", PRESET, "--set", "schedule.val_tasks=0"], "schedule.val_tasks=0 is out of range; it must be at least 1"),
    ],
)
def test_bad_cli_input_gives_one_clear_line(extra: list[str], message: str, tmp_path: Path) -> None:
    args = ["train", "--seed", "0", "--runs-dir", str(tmp_path), "--wandb", "off", *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and message in result.output
    assert result.output.strip().count("\n") == 0


def test_unwritable_runs_dir_gives_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    runs = str(blocker / "runs")  # a folder below a file can never be created
    args = ["train", "--preset", PRESET, "--seed", "0", "--runs-dir", runs, "--wandb", "off", "--set", "data.dataset=synthetic"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.startswith("error: cannot write the run directory")
    assert "--runs-dir" in result.output and result.output.strip().count("\n") == 0


def test_test_command_rejects_a_folder_that_is_no_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["test", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_the_progress_bar_is_drawn_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """tqdm redraws its bar with carriage returns several times a second: in a log file (a
    sweep's .sweep-logs, `make table1 > log`, a SLURM job) it buries the epoch lines."""
    import io
    import sys

    from mamlpp.runs import cli as runs_cli

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def progress(stderr: Any, no_progress: bool) -> bool:
        monkeypatch.setattr(sys, "stderr", stderr)
        return runs_cli._train_options(None, "cpu", "off", no_progress, None).progress

    assert progress(Terminal(), no_progress=False)
    assert not progress(Terminal(), no_progress=True)
    assert not progress(io.StringIO(), no_progress=False)  # a log file
    closed = io.StringIO()
    closed.close()
    assert not progress(closed, no_progress=False)
