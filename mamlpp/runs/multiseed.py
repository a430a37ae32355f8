"""Several seeds of one configuration trained in one process as one folded step
(`mamlpp train --preset P --seed 0 --seed 1 ...`; `mamlpp.engine.seeds.SeedStack`).

Each seed is still its own run: its own run directory (the name `mamlpp train --seed S` would
give it), lock, config.json, metrics.jsonl, checkpoints, test.json and W&B mirror, written by
the single-run code (`trainer.epoch_row`, `checkpoints.finish_epoch`, `trainer.test_run`) on a
`MetaLearner` holding the seed's state (`SeedStack.learner`). The outer updates are shared:
iteration t folds every seed's meta-batch t (each from its own train seed) into one step.
Validation (the same tasks for every seed) is `trainer.validate_seeds`: on CUDA one folded pass
per chunk over all seeds, elsewhere `trainer.validate` per seed as in a separate run
(`seeds.folds_evaluation`). The test runs per seed as in a separate run.

What differs from separate runs: summation order in the shared step and, on CUDA, in the folded
validation (tests/test_seeds.py, tests/test_multiseed.py), and the time columns (the training
time of an epoch is the time of the joint step, `time/iters_per_s` counts joint iterations;
`time/epoch_s` includes the validation of all seeds). Resume: every seed from its own
latest.pt; seeds stopped at different epochs are refused with a note to run them separately.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from mamlpp.config import Config
from mamlpp.data.batch import TaskBatch
from mamlpp.engine import cuda_graph, seeds
from mamlpp.engine.learner import MetaLearner, StepResult
from mamlpp.engine.seeds import SeedStack
from mamlpp.errors import MamlppError
from mamlpp.runs.checkpoints import TopK, finish_epoch, missing_rows_warning, restore
from mamlpp.runs.resolve import check_schedule, train_seed
from mamlpp.runs.stops import RunStopped, StopRequest, stop_on_signals
from mamlpp.runs.tracking import RunDirectory, RunDirectoryError, WandbMirror
from mamlpp.runs.trainer import (
    EpisodeFactory,
    EpochMeans,
    Pace,
    RunOptions,
    Sampler,
    default_episodes,
    epoch_row,
    iterate_epoch,
    open_mirror,
    schedule_line,
    summary_line,
    test_run,
    train_run,
    validate_seeds,
)


def train_runs(
    configs: Sequence[Config], run_dirs: Sequence[RunDirectory], runs: Sequence[Mapping[str, Any]],
    options: RunOptions, episodes: EpisodeFactory | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Train (or resume) the seeds' runs together, then test each; returns their test.json
    dicts in order. Finished runs only report their result; a single unfinished one trains
    alone (`trainer.train_run`)."""
    results: dict[int, dict[str, Any]] = {}
    for i, run_dir in enumerate(run_dirs):
        finished = run_dir.read_test()
        if finished is not None:
            options.log(f"{run_dir.path} is already finished; its test result is in test.json")
            results[i] = finished
    pending = [i for i in range(len(configs)) if i not in results]
    if len(pending) == 1:
        (i,) = pending
        results[i] = train_run(configs[i], run_dirs[i], runs[i], options, episodes)
    elif pending:
        together = _train_together(
            [configs[i] for i in pending], [run_dirs[i] for i in pending],
            [runs[i] for i in pending], options, episodes or default_episodes(),
        )  # fmt: skip
        results.update(zip(pending, together, strict=True))
    return [results[i] for i in range(len(configs))]


def _restore_all(
    stack: SeedStack, configs: Sequence[Config], run_dirs: Sequence[RunDirectory], device: str
) -> tuple[int, list[TopK]]:
    """Every seed's latest.pt into the stack (`checkpoints.restore` per run); the next epoch."""
    learners = [MetaLearner(c, device) for c in configs]
    restored = [restore(d, single, c) for d, single, c in zip(run_dirs, learners, configs, strict=True)]
    epochs = sorted({e for e, _ in restored})
    if len(epochs) > 1:
        where = ", ".join(f"seed {c.seed} at epoch {e}" for c, (e, _) in zip(configs, restored, strict=True))
        raise MamlppError(
            f"the seeds stopped at different epochs ({where}); resume them separately, one "
            "--seed per command"
        )
    try:
        stack.load_state_dicts([single.state_dict() for single in learners])
    except ValueError as e:
        raise RunDirectoryError(f"the runs' checkpoints cannot be trained together ({e})") from None
    return epochs[0], [top_k for _, top_k in restored]


def train_epoch_together(
    stack: SeedStack, train_step: Callable[[TaskBatch, int], list[StepResult]],
    samplers: Sequence[Sampler], epoch: int, progress: bool, stop: StopRequest,
) -> tuple[list[EpochMeans], list[list[dict[str, Any]]]]:  # fmt: skip
    """`trainer.train_epoch` for every seed at once: iteration t trains each seed on its own
    sampler's meta-batch t in one joint step (`seeds.training_step`)."""

    def joint(indices: range) -> list[StepResult]:
        return train_step(stack.join([s.batch(indices) for s in samplers]), epoch)

    seed_numbers = [c.seed for c in stack.configs]
    return iterate_epoch(joint, seed_numbers, stack.config, epoch, progress, stop)


def _train_together(
    configs: Sequence[Config], run_dirs: Sequence[RunDirectory], runs: Sequence[Mapping[str, Any]],
    options: RunOptions, episodes: EpisodeFactory,
) -> list[dict[str, Any]]:  # fmt: skip
    for c in configs:
        check_schedule(c)
    config = configs[0]
    torch.manual_seed(config.seed)
    try:
        stack = SeedStack(
            configs, options.device, kernel_options=options.kernel_options,
            capturable=cuda_graph.applies(config, options.device),
        )  # fmt: skip
    except ValueError as e:
        raise MamlppError(f"these runs cannot be trained together: {e}") from None
    next_epoch, top_ks = _restore_all(stack, configs, run_dirs, options.device)
    train_step = seeds.training_step(stack)  # after restoring: it reads the optimizer state
    if next_epoch > 0:
        options.log(f"resuming {len(configs)} seeds after epoch {next_epoch - 1}")
        for run_dir in run_dirs:
            if (warning := missing_rows_warning(run_dir, next_epoch)) is not None:
                options.log(warning)
    root, device = options.data_root, options.device
    trains = [episodes(c, "train", data_root=root, seed=train_seed(c), device=device) for c in configs]
    val = episodes(config, "val", data_root=root, seed=config.data.val_seed, device=device)
    mirrors: list[WandbMirror] = []
    epochs = config.schedule.epochs
    completed = next_epoch
    pace = Pace.of_run(config, run_dirs[0], next_epoch, options.deadline)
    try:
        for c, run_dir, run in zip(configs, run_dirs, runs, strict=True):
            mirrors.append(open_mirror(run_dir, c, run, options.wandb))
            options.log(schedule_line(c, options.device))
        with stop_on_signals(options.stop_on_signals, options.deadline) as stop:
            for epoch in range(next_epoch, epochs):
                start = time.perf_counter()
                means, iterations = train_epoch_together(
                    stack, train_step, trains, epoch, options.progress, stop
                )
                train_seconds = time.perf_counter() - start
                rows: list[tuple[dict[str, Any], bool, MetaLearner]] = []
                learners = [stack.learner(s) for s in range(len(run_dirs))]
                val_results = validate_seeds(stack, val, config, learners=learners)
                for s, (run_dir, learner) in enumerate(zip(run_dirs, learners, strict=True)):
                    row = epoch_row(
                        epoch, learner, means[s], val_results[s], time.perf_counter() - start,
                        train_seconds, len(iterations[s]),
                    )  # fmt: skip
                    rows.append((row, finish_epoch(run_dir, learner, row, iterations[s], top_ks[s]), learner))
                completed = epoch + 1
                pace.add(time.perf_counter() - start, train_seconds)
                left = pace.remaining_line(epochs - completed)
                for c, mirror, (row, kept, learner) in zip(configs, mirrors, rows, strict=True):
                    mirror.log_epoch(row, learner.lslr_rates())
                    options.log(f"seed {c.seed}: " + summary_line(row, epochs, kept))
                if left:
                    options.log(left.strip())
                stop.make_room(pace.next_piece(epochs - completed))
            results = []
            for c, run_dir, run, mirror, top_k in zip(configs, run_dirs, runs, mirrors, top_ks, strict=True):
                result = test_run(c, run_dir, top_k.epochs, options, episodes, write=True, stop=stop)
                if c.inner.lslr:
                    mirror.log_lr_chart(run_dir.read_metrics(), str(run["name"]), c.seed)
                results.append(result)
        for mirror, result in zip(mirrors, results, strict=True):
            mirror.log_summary(
                {f"test/{k}": v for k, v in result.items() if k in ("accuracy", "ci95", "std")}
            )
    except RunStopped as e:
        e.completed_epochs, e.total_epochs = completed, epochs
        pace.project(e)
        for mirror in mirrors:
            mirror.finish(exit_code=e.exit_code, preempted=e.preempted)
        raise
    except BaseException:
        for mirror in mirrors:
            mirror.finish(exit_code=1)
        raise
    for mirror in mirrors:
        mirror.finish()
    return results
