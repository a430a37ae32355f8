"""Tiny configurations and random meta-batches shared by the tests."""

from __future__ import annotations

import torch

from mamlpp.config import Config
from mamlpp.data.batch import TaskBatch

TINY_RUN_OVERRIDES = [
    "data.dataset=synthetic",
    "model.filters=8",
    "inner.steps=2",
    "inner.eval_steps=2",
    "outer.meta_batch_size=2",
    "schedule.epochs=4",
    "schedule.iterations_per_epoch=3",
    "schedule.val_tasks=4",
    "schedule.test_tasks=4",
    "schedule.ensemble_top_k=2",
]
"""`--set` overrides that make a whole run (4 epochs of 3 iterations, test included) take
seconds on the synthetic dataset."""


def random_batch(c: Config, tasks: int, seed: int = 0) -> TaskBatch:
    """`tasks` tasks of `c`'s shape with uniform random pixels and every class in order."""
    g = torch.Generator().manual_seed(seed)
    n, k, q = c.data.n_way, c.data.k_shot, c.data.target_per_class
    shape = (c.in_channels, c.image_size, c.image_size)
    return TaskBatch(
        torch.rand(tasks, n * k, *shape, generator=g),
        torch.arange(n).repeat_interleave(k).repeat(tasks, 1),
        torch.rand(tasks, n * q, *shape, generator=g),
        torch.arange(n).repeat_interleave(q).repeat(tasks, 1),
    )
