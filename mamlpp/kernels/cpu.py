"""CPU speed paths: the first stage as one matmul with patches prepared once per batch, max-pooling
as a gather at the maxima found by max_pool2d's channels-last kernel, and an elementwise
batch-norm kernel kept as a benchmarking alternative.

Each is exact against the plain path in `mamlpp.engine.model` (tests/test_engine.py); where
each is used and why: benchmarks/RESULTS.md#cpu.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mamlpp.engine.model import (
    BN_EPS,
    BatchNormStats,
    FoldedImages,
    NetSpec,
    Params,
    activate,
    fold_tasks,
)
from mamlpp.kernels.folded_bn import batch_norm_as_affine, patch_statistics


@dataclass(frozen=True)
class PatchWindows(FoldedImages):
    """The images with what `first_stage_matmul` needs from them, computed once per batch."""

    windows: Tensor
    """[n, B, K, 4*Ho*Wo]: the K = 9 x C values of the 3x3 patch at each position of every
    2x2 pooling window, positions ordered (hi, wi, ho, wo): offset in the window, then the
    window (`first_stage_matmul` says why)."""
    pooled_size: tuple[int, int]
    """(Ho, Wo) = (H // 2, W // 2), max_pool2d's output size."""
    patch_mean: Tensor
    """[B, K] mean of the patches of all H x W positions (batch norm's statistics)."""
    patch_covariance: Tensor
    """[B, K, K] their biased covariance."""
    patch_count: int


def prepare_patch_windows(x: Tensor, spec: NetSpec) -> PatchWindows:
    """`x` [B, n, C, H, W] with its pooling windows' patches and their statistics."""
    tasks, n, channels, height, width = x.shape
    folded = fold_tasks(x)
    patches = F.unfold(folded, 3, padding=1)  # [n, tasks*K, H*W]
    mean, covariance, count = patch_statistics(patches, tasks)
    ho, wo = height // 2, width // 2
    k = channels * 9
    grid = patches.view(n, tasks, k, height, width)[..., : 2 * ho, : 2 * wo]
    windows = grid.reshape(n, tasks, k, ho, 2, wo, 2).permute(0, 1, 2, 4, 6, 3, 5)
    windows = windows.reshape(n, tasks, k, 4 * ho * wo)
    return PatchWindows(x, folded, windows, (ho, wo), mean, covariance, count)


def first_stage_matmul(
    x: FoldedImages,
    weight: Tensor,
    bias: Tensor,
    step: int,
    shared: Params,
    spec: NetSpec,
    stats_out: list[BatchNormStats] | None,
) -> Tensor:
    """conv0, batch norm with batch statistics, 2x2 max-pooling and the activation of B tasks
    -> [n, B*F, Ho, Wo]; `x` must come from `prepare_patch_windows`.

    Batch norm is folded into the weights (`batch_norm_as_affine`); the convolution at the
    positions that pooling reads is one matmul with `x.windows`, giving y laid out
    [n*B, F, hi, wi, Q] (Q = Ho*Wo windows). Viewed as [n*B, Q, (F, hi), wi], that is a
    channels-last tensor whose 2x2 pooling windows are exactly (hi, wi): max_pool2d_with_indices
    finds each window's maximum there with torch's own tie-breaking, with its channels-last
    kernel (benchmarks/RESULTS.md#cpu), and the pooled values are gathered from y at those
    indices: gather's derivatives never touch y itself, whereas max_pool2d's second derivative
    builds and adds a zero tensor of y's size. The shift is added after pooling
    (max(y + c) = max(y) + c), and the activation after both (it commutes with max-pooling)."""
    assert isinstance(x, PatchWindows), "first_stage_matmul needs prepare_patch_windows' input"
    tasks, filters = weight.shape[:2]
    w = weight.reshape(tasks, filters, -1)
    scale, shift = batch_norm_as_affine(
        w, bias, x.patch_mean, x.patch_covariance, x.patch_count, step, shared, spec, stats_out
    )
    n = x.windows.shape[0]
    ho, wo = x.pooled_size
    q = ho * wo
    y = torch.matmul((w * scale.unsqueeze(2)).unsqueeze(0), x.windows)  # [n, B, F, 4*Q]
    with torch.no_grad():
        channels_last = y.view(n * tasks, 2 * filters, 2, q).permute(0, 3, 1, 2)
        window_max = F.max_pool2d_with_indices(channels_last, (2, 2))[1]  # [n*B, Q, F, 1]
        # its index 2*(2f + hi) + wi in the [(F, hi), wi] plane is y's row in [n*B, 4F, Q]
        rows = window_max.permute(0, 2, 3, 1).reshape(n * tasks, filters, q)
    pooled = y.view(n * tasks, 4 * filters, q).gather(1, rows)
    return activate(pooled.view(n, tasks * filters, ho, wo) + shift.reshape(1, -1, 1, 1), spec)


def max_pool_by_gather(h: Tensor) -> Tensor:
    """F.max_pool2d(h, 2) of contiguous [n, C, H, W] activations as a gather at the window
    maxima that max_pool2d's channels-last kernel finds (the same maxima, ties broken the same
    way). On the CPU the channels-last kernel is faster than the one for contiguous tensors,
    and gather's derivatives never touch `h` itself (benchmarks/RESULTS.md#cpu)."""
    with torch.no_grad():
        channels_last = h.contiguous(memory_format=torch.channels_last)
        index = F.max_pool2d_with_indices(channels_last, (2, 2))[1].contiguous()
    n, c, ho, wo = index.shape
    return h.flatten(2).gather(2, index.view(n, c, -1)).view(n, c, ho, wo)


def batch_norm_elementwise(h: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Batch norm with batch statistics written out in elementary ops on the [n*H*W, C] view (a
    free view in the channels-last layout): an alternative to the fused kernel's composite
    second derivative, for benchmarking only (`KernelOptions.batch_norm`)."""
    n, c, height, width = h.shape
    rows = h.permute(0, 2, 3, 1).reshape(-1, c)
    var, mean = torch.var_mean(rows, dim=0, unbiased=False)
    out = (rows - mean) * (torch.rsqrt(var + BN_EPS) * weight) + bias
    unbiased = var.detach() * (rows.shape[0] / max(rows.shape[0] - 1, 1))
    return out.view(n, height, width, c).permute(0, 3, 1, 2), mean.detach(), unbiased
