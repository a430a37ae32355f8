"""The engine's input: a meta-batch of B few-shot tasks."""

from __future__ import annotations

from typing import NamedTuple

import torch


class TaskBatch(NamedTuple):
    """B tasks of N classes: k support and q target images per class.

    support_x [B, N*k, C, H, W] float, support_y [B, N*k] long in 0..N-1,
    target_x  [B, N*q, C, H, W] float, target_y  [B, N*q] long in 0..N-1.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    target_x: torch.Tensor
    target_y: torch.Tensor

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TaskBatch:
        """Move to a device; images (not labels) also to `dtype` when given."""
        return TaskBatch(
            self.support_x.to(device=device, dtype=dtype or self.support_x.dtype, non_blocking=True),
            self.support_y.to(device, non_blocking=True),
            self.target_x.to(device=device, dtype=dtype or self.target_x.dtype, non_blocking=True),
            self.target_y.to(device, non_blocking=True),
        )

    def task(self, i: int) -> TaskBatch:
        """Task i alone, keeping a leading task dimension of 1."""
        return TaskBatch(*(t[i : i + 1] for t in self))

    def tasks(self, which: slice) -> TaskBatch:
        """The tasks in the slice `which` (views, no copy)."""
        return TaskBatch(*(t[which] for t in self))
