"""The first layer's batch norm folded into its convolution, on any device.

The first layer's input does not depend on any parameter, so the batch statistics of its
output y = w . p + b follow from the images' 3x3 patches p alone: mean = w . m + b and
var = w S w^T, with m and S the patches' mean and covariance. Batch norm then is an affine map
y -> scale * (w . p) + shift per task and filter, and every batch-norm derivative, first and
second, is taken on [B, F] tensors instead of full-resolution activations. Where it was measured
faster: benchmarks/RESULTS.md#cpu and #gpu (`mamlpp.kernels.choose` applies it there).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mamlpp.engine.model import (
    BN_EPS,
    BatchNormStats,
    FirstStage,
    FoldedImages,
    NetSpec,
    Params,
    activate_and_downsample,
    affine_set,
    seed_count,
    seed_rows,
    task_average,
)


def patch_statistics(patches: Tensor, tasks: int) -> tuple[Tensor, Tensor, int]:
    """Per task, the mean [tasks, K] and biased covariance [tasks, K, K] of the 3x3 patches
    `patches` [n, tasks*K, positions] (F.unfold of the folded images, zero padding included),
    and how many patches each task has (n x positions)."""
    n, folded = patches.shape[:2]
    k = folded // tasks
    patches = patches.view(n, tasks, k, -1).transpose(0, 1).transpose(2, 3).reshape(tasks, -1, k)
    mean = patches.mean(1)
    centered = patches - mean.unsqueeze(1)
    return mean, centered.transpose(1, 2) @ centered / patches.shape[1], patches.shape[1]


def batch_norm_as_affine(
    w: Tensor,
    bias: Tensor,
    patch_mean: Tensor,
    patch_covariance: Tensor,
    patch_count: int,
    step: int,
    shared: Params,
    spec: NetSpec,
    stats_out: list[BatchNormStats] | None,
) -> tuple[Tensor, Tensor]:
    """Batch norm (batch statistics) of the first conv's output y = w . p + b as the affine map
    y -> scale * (w . p) + shift, per task and filter ([B, F] each), from the patches' mean and
    covariance (module docstring). `w` is [B, F, K]; BN tensors stacked per seed ([S, sets, F])
    give each seed's B/S tasks their own scale/shift and statistics (`model.per_task`)."""
    mean = (w @ patch_mean.unsqueeze(2)).squeeze(2) + bias  # [tasks, filters]
    var = ((w @ patch_covariance) * w).sum(2)  # biased, as batch norm normalises with
    a = min(step, spec.affine_sets - 1)
    gamma, beta = affine_set(shared, "bn0.weight", a), affine_set(shared, "bn0.bias", a)
    seeds = seed_count(shared["bn0.weight"])
    if seeds is not None:  # [S, F] per seed -> [tasks, F]
        tasks = w.shape[0]
        gamma, beta = (seed_rows(v, tasks // seeds) for v in (gamma, beta))
    scale = gamma * torch.rsqrt(var + BN_EPS)
    shift = (bias - mean) * scale + beta
    if stats_out is not None:
        unbiased = var.detach() * (patch_count / max(patch_count - 1, 1))
        if seeds is None:
            stats_out.append(BatchNormStats(0, step, mean.detach().mean(0), unbiased.mean(0)))
        else:
            tasks = w.shape[0]
            stats_out.append(
                BatchNormStats(
                    0,
                    step,
                    task_average(mean.detach(), tasks, seeds),
                    task_average(unbiased, tasks, seeds),
                )
            )
    return scale, shift


def conv_with_batch_norm(
    x: FoldedImages,
    weight: Tensor,
    bias: Tensor,
    step: int,
    shared: Params,
    spec: NetSpec,
    stats_out: list[BatchNormStats] | None,
) -> Tensor:
    """conv0 then batch norm with batch statistics as ONE grouped convolution of the folded
    images: bn(conv(x, w, b)) = conv(x, scale * w, shift) (`batch_norm_as_affine`); equals
    conv2d + `model.batch_norm` up to rounding (tests/test_engine.py: the folded engine with
    strided convolutions, where `choose` folds it on the CPU, against the per-task loop).
    Returns the stage's output before activation and downsampling (`first_stage` adds them)."""
    tasks, filters = weight.shape[:2]
    stride = 2 if spec.downsample == "stride" else 1
    patches = F.unfold(x.folded, 3, padding=1, stride=stride)
    mean, covariance, count = patch_statistics(patches, tasks)
    w = weight.reshape(tasks, filters, -1)
    scale, shift = batch_norm_as_affine(
        w, bias, mean, covariance, count, step, shared, spec, stats_out
    )
    return F.conv2d(
        x.folded,
        (w * scale.unsqueeze(2)).reshape(tasks * filters, *weight.shape[2:]),
        shift.reshape(-1),
        stride=stride,
        padding=1,
        groups=tasks,
    )


def first_stage_with(pool: Callable[[Tensor], Tensor]) -> FirstStage:
    """A `model.FirstStage`: `conv_with_batch_norm`, then activation and downsampling with the
    max-pooling kernel `pool`."""

    def first_stage(
        x: FoldedImages,
        weight: Tensor,
        bias: Tensor,
        step: int,
        shared: Params,
        spec: NetSpec,
        stats_out: list[BatchNormStats] | None,
    ) -> Tensor:
        h = conv_with_batch_norm(x, weight, bias, step, shared, spec, stats_out)
        return activate_and_downsample(h, spec, pool)

    return first_stage
