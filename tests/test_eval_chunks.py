"""Validation and test tasks are independent, so evaluating them in larger chunks
(schedule.eval_batch_size) gives the same per-task results."""

from __future__ import annotations

from dataclasses import replace

import torch

from mamlpp.data import make_episodes
from mamlpp.engine.learner import MetaLearner
from mamlpp.presets import synthetic_config
from mamlpp.runs.trainer import evaluation_chunks, validate


def test_one_chunk_of_16_equals_two_chunks_of_8() -> None:
    c = synthetic_config()
    torch.manual_seed(0)
    learner = MetaLearner(c, dtype=torch.float64)
    val = make_episodes(c, "val")
    whole = learner.evaluate(val.batch(range(16)))
    halves = [learner.evaluate(val.batch(range(s, s + 8))) for s in (0, 8)]
    for name in ("loss", "accuracy", "probs"):
        joined = torch.cat([getattr(h, name) for h in halves])
        torch.testing.assert_close(getattr(whole, name), joined, rtol=0, atol=1e-12)


def test_validation_does_not_depend_on_the_evaluation_batch_size() -> None:
    c = synthetic_config()
    c = replace(c, schedule=replace(c.schedule, val_tasks=24))
    torch.manual_seed(0)
    learner = MetaLearner(c, dtype=torch.float64)
    val = make_episodes(c, "val")
    results = {}
    for size in (0, 5, 24):
        sized = replace(c, schedule=replace(c.schedule, eval_batch_size=size))
        assert sum(len(r) for r in evaluation_chunks(sized, 24)) == 24
        results[size] = validate(learner, val, sized)
    for size in (5, 24):
        assert abs(results[size][0] - results[0][0]) < 1e-12
        assert abs(results[size][1] - results[0][1]) < 1e-12


def test_the_default_chunk_follows_the_device() -> None:
    """By default the CPU evaluates a meta-batch of tasks at a time, CUDA meta-batch x inner
    steps (fewer launches per task, no more memory than a training step); an explicit
    schedule.eval_batch_size wins on both."""
    c = synthetic_config()
    b, steps = c.outer.meta_batch_size, c.inner.steps
    assert [len(r) for r in evaluation_chunks(c, 3 * b * steps)] == [b] * 3 * steps
    assert [len(r) for r in evaluation_chunks(c, 3 * b * steps, "cuda")] == [b * steps] * 3
    sized = replace(c, schedule=replace(c.schedule, eval_batch_size=5))
    assert {len(r) for r in evaluation_chunks(sized, 20, "cuda")} == {5}
