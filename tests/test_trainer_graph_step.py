"""The trainer driving the CUDA-graph step's logic (run unrecorded on the CPU: the same static
inputs, optimizer hand-over and read-back as on a GPU, minus the recording): it trains like the
eager step, and a run interrupted after an epoch resumes to exactly the same metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mamlpp import cuda_graph, trainer
from mamlpp.tracking import RunDirectory
from mamlpp.trainer import RunOptions, resolve_config, start_run_directory

OVERRIDES = [
    "data.dataset=synthetic",
    "model.filters=8",
    "inner.steps=2",
    "inner.eval_steps=2",
    "outer.meta_batch_size=2",
    "outer.msl_epochs=2",  # epochs 0-1 weigh both steps, epoch 2 the last only: two graphs
    "schedule.epochs=4",
    "schedule.iterations_per_epoch=3",
    "schedule.val_tasks=4",
    "schedule.test_tasks=4",
    "schedule.ensemble_top_k=2",
]
OPTIONS = RunOptions(wandb="off", progress=False, log=lambda _: None)


def _train(path: Path, interrupt_after: int | None, monkeypatch: pytest.MonkeyPatch) -> RunDirectory:
    config = resolve_config("omniglot_5way_1shot_mamlpp", OVERRIDES, 0, "smoke")
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


def _numbers(run: RunDirectory) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in run.read_metrics()]


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

    assert _numbers(resumed) == _numbers(whole)
    assert resumed.read_test() == whole.read_test()
    for graphed, reference in zip(_numbers(whole), _numbers(eager), strict=True):
        assert graphed.keys() == reference.keys()
        for key, value in reference.items():
            assert graphed[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
