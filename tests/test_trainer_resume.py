"""Exact resume: a `mamlpp train` process killed with SIGKILL, rerun with the same command,
ends with the same metrics, iterations and test result as an uninterrupted run. And the trainer
driving the CUDA-graph step's logic (run unrecorded on the CPU: the same static inputs,
optimizer hand-over and read-back as on a GPU, minus the recording) trains like the eager step
and resumes an interrupted run exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mamlpp.engine import cuda_graph
from mamlpp.kernels import KernelOptions
from mamlpp.runs import trainer
from mamlpp.runs.resolve import resolve_config, start_run_directory
from mamlpp.runs.tracking import RunDirectory, read_jsonl
from mamlpp.runs.trainer import RunOptions
from tests.support.tiny import TINY_RUN_OVERRIDES

OVERRIDES = TINY_RUN_OVERRIDES
# epochs 0-1 weigh both inner steps, epochs 2-3 the last only: two graphs over the run
GRAPH_OVERRIDES = [*OVERRIDES, "outer.msl_epochs=2"]


def _command(runs: Path) -> list[str]:
    sets = [arg for o in OVERRIDES for arg in ("--set", o)]
    return [
        sys.executable, "-m", "mamlpp.cli", "train", "--preset", "omniglot_5way_1shot_mamlpp",
        "--seed", "0", "--scale", "smoke", "--runs-dir", str(runs), "--wandb", "off",
        "--device", "cpu", "--no-progress", *sets,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _run_to_end(runs: Path) -> RunDirectory:
    done = subprocess.run(_command(runs), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (path,) = runs.iterdir()
    return RunDirectory(path)


def _kill_after_first_epoch(runs: Path) -> RunDirectory:
    process = subprocess.Popen(
        _command(runs), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            found = list(runs.glob("*/metrics.jsonl"))
            if found and found[0].read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    (path,) = runs.iterdir()
    return RunDirectory(path)


def _plant_debris_of_a_kill_during_writes(run: RunDirectory) -> None:
    """What a kill in the middle of an epoch's writes can leave behind."""
    (run.checkpoints / "latest.pt.tmp").write_bytes(b"torn")
    torch.save({"stale": True}, run.checkpoints / "epoch_003.pt")
    with open(run.metrics_path, "a") as f:
        f.write('{"epoch": 3, "train/loss"')
    with open(run.iterations_path, "a") as f:
        f.write('{"iteration": 99, "epoch": 3}\n')


def _without_timings(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    killed = _kill_after_first_epoch(tmp_path / "killed")
    assert not killed.test_path.exists()
    assert 1 <= len(killed.read_metrics()) < 4
    _plant_debris_of_a_kill_during_writes(killed)
    resumed = _run_to_end(tmp_path / "killed")
    straight = _run_to_end(tmp_path / "straight")

    assert resumed.path.name == straight.path.name
    assert [r["epoch"] for r in resumed.read_metrics()] == [0, 1, 2, 3]
    assert _without_timings(resumed.read_metrics()) == _without_timings(straight.read_metrics())
    assert read_jsonl(resumed.iterations_path) == read_jsonl(straight.iterations_path)
    assert json.loads(resumed.test_path.read_text()) == json.loads(straight.test_path.read_text())
    assert sorted(p.name for p in resumed.checkpoints.iterdir()) == sorted(
        p.name for p in straight.checkpoints.iterdir()
    )


# ---------------------------------------------------------------- the CUDA-graph step's logic

# the graphed step computes the tasks as one group (as on CUDA): so does the eager reference
OPTIONS = RunOptions(
    wandb="off", progress=False, log=lambda _: None, kernel_options=KernelOptions(task_threads=False)
)


def _train(path: Path, interrupt_after: int | None, monkeypatch: pytest.MonkeyPatch) -> RunDirectory:
    config = resolve_config("omniglot_5way_1shot_mamlpp", GRAPH_OVERRIDES, 0, "smoke")
    run = RunDirectory(path)
    info = start_run_directory(run, config, {"name": path.name})
    original = trainer.run_epoch

    def run_epoch(*args: Any) -> Any:
        out = original(*args)
        if args[5] == interrupt_after:  # the epoch just written
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(trainer, "run_epoch", run_epoch)
    if interrupt_after is not None:
        with pytest.raises(KeyboardInterrupt):
            trainer.train_run(config, run, info, OPTIONS)
        monkeypatch.setattr(trainer, "run_epoch", original)
    trainer.train_run(config, run, info, OPTIONS)
    return run


def test_graph_step_logic_trains_like_eager_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager = _train(tmp_path / "eager", None, monkeypatch)
    made: list[cuda_graph.GraphedTrainStep] = []

    def graph_logic(learner: Any) -> cuda_graph.GraphedTrainStep:
        made.append(cuda_graph.GraphedTrainStep(learner, record=False))
        return made[-1]

    monkeypatch.setattr(cuda_graph, "training_step", graph_logic)
    whole = _train(tmp_path / "whole", None, monkeypatch)
    assert len(made) == 1 and len(made[0].graphs) == 2  # MSL phase, then last step only
    resumed = _train(tmp_path / "resumed", 1, monkeypatch)
    assert len(made) == 3  # one step object per process start, built after the restore

    assert _without_timings(resumed.read_metrics()) == _without_timings(whole.read_metrics())
    assert resumed.read_test() == whole.read_test()
    graphed_rows = _without_timings(whole.read_metrics())
    for graphed, reference in zip(graphed_rows, _without_timings(eager.read_metrics()), strict=True):
        assert graphed.keys() == reference.keys()
        for key, value in reference.items():
            assert graphed[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
