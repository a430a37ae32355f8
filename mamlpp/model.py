"""The 4-stage conv net of MAML/MAML++ as pure functions of (parameters, batch-norm state, step, x).

Parameters are a name -> tensor mapping. Adapted in the inner loop (the "fast weights"):
``conv<i>.weight``, ``conv<i>.bias``, ``linear.weight``, ``linear.bias``. Learned only in the
outer loop: the batch-norm scale/shift ``bn<i>.weight``/``bn<i>.bias`` of shape
[sets, filters], one set per inner step with BNWB or a single shared set without. Running
statistics ``bn<i>.running_mean``/``running_var`` have the same [sets, filters] layout (BNRS).

Two forwards compute the same function:
- ``forward_task``: one task, plain conv2d/linear; the reference.
- ``forward_tasks``: B tasks at once. Each task's fast weights carry a leading task dimension;
  the tasks are folded into the channel dimension ([n, B*C, H, W]) so every conv is ONE grouped
  convolution (groups=B), batch norm over the folded channels gives each task its own batch
  statistics, and the head is one batched matmul. Few, large kernels: this is what makes the
  engine fast on a GPU, and it keeps second-order gradients intact (plain autograd, no vmap).
  The first layer's batch norm is folded into its weights (statistics from the input patches,
  `_batch_norm_as_affine`). On the CPU with max-pooling, the whole first stage (conv, batch
  norm, pooling) is one matmul with patches prepared once per batch (`first_layer_input`) and
  a gather at the window maxima (`_first_stage`); elsewhere a grouped convolution
  (`_first_conv_with_batch_norm`).

Batch statistics are computed functionally and *returned* (``BatchNormStats``), never written
into buffers inside the forward; the learner applies them to the running statistics afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mamlpp.config import Config

Params = Mapping[str, Tensor]
BNMode = Literal["batch", "running"]
LEAKY_SLOPE = 0.01
BN_EPS = 1e-5
# Activation layout and batch-norm kernel: the contiguous layout with torch's fused batch norm
# was the fastest end to end on both the 2-core CPU and the H200 (benchmarks/RESULTS.md), though
# channels-last pooling alone is faster in isolation. Both switches stay for benchmarking.
MEMORY_FORMAT = torch.contiguous_format
BN_KERNEL: Literal["fused", "elementwise"] = "fused"
# The folded engine computes the first layer's batch norm from input-patch statistics, folded
# into its convolution (`_first_conv_with_batch_norm`); False: conv then `_batch_norm`. The
# per-task loop (`forward_task`, the tests' reference) always takes the plain path.
FOLD_FIRST_BATCH_NORM = True
# On the CPU with max-pooling, the first stage (conv, folded batch norm, pooling) as a matmul
# with prepared patches and a channels-last view for pooling (`_first_stage`); False: the
# folded convolution above. For benchmarking (benchmarks/ab_switch.py).
FIRST_STAGE_AS_MATMUL = True
# On the CPU, the folded engine's later max-pooling layers as `_max_pool_by_gather`; False:
# F.max_pool2d. For benchmarking (benchmarks/ab_switch.py).
POOL_BY_GATHER = True


@dataclass(frozen=True)
class NetSpec:
    """The shapes of the network, derived from a config."""

    in_channels: int
    image_size: int
    filters: int
    stages: int
    n_way: int
    downsample: str
    activation: str
    affine_sets: int
    stat_sets: int

    @classmethod
    def from_config(cls, c: Config) -> NetSpec:
        return cls(
            in_channels=c.in_channels,
            image_size=c.image_size,
            filters=c.model.filters,
            stages=c.model.stages,
            n_way=c.data.n_way,
            downsample=c.model.downsample,
            activation=c.model.activation,
            affine_sets=c.bn_sets if c.bn.per_step_affine else 1,
            stat_sets=c.bn_sets if c.bn.per_step_stats else 1,
        )

    @property
    def feature_size(self) -> int:
        side = self.image_size
        for _ in range(self.stages):
            # 3x3 conv, padding 1: stride 2 gives ceil(side/2); max/avg pool 2x2 gives floor.
            side = math.ceil(side / 2) if self.downsample == "stride" else side // 2
        return self.filters * side * side

    @property
    def adapted_names(self) -> list[str]:
        names = [f"conv{i}.{k}" for i in range(self.stages) for k in ("weight", "bias")]
        return names + ["linear.weight", "linear.bias"]


class BatchNormStats(NamedTuple):
    """Batch statistics of one forward pass at one BN layer, averaged over the tasks."""

    layer: int
    step: int
    mean: Tensor
    var: Tensor  # unbiased, as torch's running-variance update uses


def init_params(spec: NetSpec, generator: torch.Generator) -> dict[str, Tensor]:
    """Xavier-uniform conv/linear weights, zero biases; BN scale 1, shift 0."""
    params: dict[str, Tensor] = {}
    channels = spec.in_channels
    for i in range(spec.stages):
        w = torch.empty(spec.filters, channels, 3, 3)
        torch.nn.init.xavier_uniform_(w, generator=generator)
        params[f"conv{i}.weight"] = w
        params[f"conv{i}.bias"] = torch.zeros(spec.filters)
        params[f"bn{i}.weight"] = torch.ones(spec.affine_sets, spec.filters)
        params[f"bn{i}.bias"] = torch.zeros(spec.affine_sets, spec.filters)
        channels = spec.filters
    w = torch.empty(spec.n_way, spec.feature_size)
    torch.nn.init.xavier_uniform_(w, generator=generator)
    params["linear.weight"] = w
    params["linear.bias"] = torch.zeros(spec.n_way)
    return params


def init_running_stats(spec: NetSpec) -> dict[str, Tensor]:
    stats: dict[str, Tensor] = {}
    for i in range(spec.stages):
        stats[f"bn{i}.running_mean"] = torch.zeros(spec.stat_sets, spec.filters)
        stats[f"bn{i}.running_var"] = torch.ones(spec.stat_sets, spec.filters)
    return stats


def _activate(h: Tensor, spec: NetSpec) -> Tensor:
    return F.leaky_relu(h, LEAKY_SLOPE) if spec.activation == "leaky_relu" else F.softplus(h)


def _activate_and_downsample(h: Tensor, spec: NetSpec, pool_by_gather: bool = False) -> Tensor:
    """activation then downsampling. Max-pooling commutes with an increasing activation, so it
    runs first and the activation (and its first and second derivatives) touch 4x fewer values.
    pool_by_gather: `_max_pool_by_gather` (the folded engine on the CPU) for F.max_pool2d."""
    if spec.downsample == "max_pool":
        pooled = _max_pool_by_gather(h) if pool_by_gather else F.max_pool2d(h, 2)
        return _activate(pooled, spec)
    if spec.downsample == "avg_pool":
        return F.avg_pool2d(_activate(h, spec), 2)
    return _activate(h, spec)  # "stride": the conv already halved the resolution


def _max_pool_by_gather(h: Tensor) -> Tensor:
    """F.max_pool2d(h, 2) of contiguous [n, C, H, W] activations as a gather at the window
    maxima that max_pool2d's channels-last kernel finds (the same maxima, ties broken the same
    way). On the 2-core CPU the channels-last kernel is several times faster than the one for
    contiguous tensors, and gather's derivatives never touch `h` itself, whereas max_pool2d's
    second derivative builds and adds a zero tensor of h's size (benchmarks/RESULTS.md)."""
    with torch.no_grad():
        channels_last = h.contiguous(memory_format=torch.channels_last)
        index = F.max_pool2d_with_indices(channels_last, (2, 2))[1].contiguous()
    n, c, ho, wo = index.shape
    return h.flatten(2).gather(2, index.view(n, c, -1)).view(n, c, ho, wo)


def _batch_norm(
    h: Tensor,
    layer: int,
    step: int,
    tasks: int,
    params: Params,
    running: Params,
    spec: NetSpec,
    mode: BNMode,
    stats_out: list[BatchNormStats] | None,
) -> Tensor:
    a = min(step, spec.affine_sets - 1)
    weight = params[f"bn{layer}.weight"][a].repeat(tasks)
    bias = params[f"bn{layer}.bias"][a].repeat(tasks)
    if mode == "running":
        s = min(step, spec.stat_sets - 1)
        mean = running[f"bn{layer}.running_mean"][s].repeat(tasks)
        var = running[f"bn{layer}.running_var"][s].repeat(tasks)
        return F.batch_norm(h, mean, var, weight, bias, training=False, eps=BN_EPS)
    out, mean, var = _batch_norm_train(h, weight, bias)
    if stats_out is not None:
        stats_out.append(
            BatchNormStats(layer, step, mean.view(tasks, -1).mean(0), var.view(tasks, -1).mean(0))
        )
    return out


def _batch_norm_train(h: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Batch norm with batch statistics -> (output, batch mean, unbiased batch variance); the
    statistics are detached (they only feed the running statistics)."""
    if BN_KERNEL == "fused":
        return _batch_norm_fused(h, weight, bias)
    return _batch_norm_elementwise(h, weight, bias)


def _batch_norm_fused(h: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """torch's fused kernel. With momentum 1 its "running" buffers (fresh local tensors, not
    the model's) receive this pass's mean and unbiased variance."""
    mean = torch.zeros(h.shape[1], device=h.device, dtype=h.dtype)
    var = torch.ones(h.shape[1], device=h.device, dtype=h.dtype)
    out = F.batch_norm(h, mean, var, weight, bias, training=True, momentum=1.0, eps=BN_EPS)
    return out, mean, var


def _batch_norm_elementwise(h: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Batch norm written out in elementary ops on the [n*H*W, C] view (a free view in the
    channels-last layout): an alternative to the fused kernel's composite second derivative,
    kept for benchmarking (benchmarks/RESULTS.md)."""
    n, c, height, width = h.shape
    rows = h.permute(0, 2, 3, 1).reshape(-1, c)
    var, mean = torch.var_mean(rows, dim=0, unbiased=False)
    out = (rows - mean) * (torch.rsqrt(var + BN_EPS) * weight) + bias
    unbiased = var.detach() * (rows.shape[0] / max(rows.shape[0] - 1, 1))
    return out.view(n, height, width, c).permute(0, 3, 1, 2), mean.detach(), unbiased


def forward_tasks(
    fast: Params,
    shared: Params,
    running: Params,
    x: Tensor | FirstLayerInput,
    step: int,
    spec: NetSpec,
    mode: BNMode = "batch",
    stats_out: list[BatchNormStats] | None = None,
) -> Tensor:
    """Logits [B, n, N] of B tasks. `fast` holds task-batched adapted weights (leading dim B),
    `shared` the BN scale/shift, `x` is [B, n, C, H, W] images, or those images with their
    first-layer patches (`first_layer_input`, prepared once for all inner steps)."""
    if isinstance(x, FirstLayerInput):
        prepared, images, h = x, x.images, x.folded
    else:
        prepared, images, h = None, x, _fold_tasks(x)
    tasks, n = images.shape[:2]
    h = h.contiguous(memory_format=MEMORY_FORMAT)
    stride = 2 if spec.downsample == "stride" else 1
    for i in range(spec.stages):
        w, b = fast[f"conv{i}.weight"], fast[f"conv{i}.bias"]
        if i == 0 and mode == "batch" and prepared is not None:
            h = _activate(_first_stage(prepared, w, b, step, shared, spec, stats_out), spec)
            continue
        if i == 0 and mode == "batch" and _fold_first_batch_norm(h):
            h = _first_conv_with_batch_norm(h, w, b, step, shared, spec, stats_out)
        else:
            h = F.conv2d(
                h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), stride=stride, padding=1, groups=tasks
            )
            h = _batch_norm(h, i, step, tasks, shared, running, spec, mode, stats_out)
        h = _activate_and_downsample(h, spec, POOL_BY_GATHER and h.device.type == "cpu")
    features = h.reshape(n, tasks, -1).transpose(0, 1)  # [B, n, F], per-task flatten order
    weight, bias = fast["linear.weight"], fast["linear.bias"]
    return torch.baddbmm(bias.unsqueeze(1), features, weight.transpose(1, 2))


def _fold_first_batch_norm(x: Tensor) -> bool:
    """Where folding was measured faster (benchmarks/RESULTS.md): on the CPU, and on CUDA for
    Omniglot-sized images. On an H200 the patch covariance of 84x84 mini-ImageNet images (a
    tall, skinny matmul) made the graphed step 2x slower (82 -> 160 ms), so it is not folded."""
    return FOLD_FIRST_BATCH_NORM and (x.device.type == "cpu" or x.shape[-1] <= 32)


def _fold_tasks(x: Tensor) -> Tensor:
    """[B, n, C, H, W] -> [n, B*C, H, W]: the tasks folded into the channels."""
    tasks, n = x.shape[:2]
    return x.transpose(0, 1).reshape(n, tasks * x.shape[2], *x.shape[3:])


class FirstLayerInput(NamedTuple):
    """A batch of images with what the first stage needs from them, computed once per batch and
    reused by every inner step and forward pass (only the weights change between them).

    The first stage (3x3 conv, batch norm with batch statistics, 2x2 max-pool) runs as one
    matmul of the weights with the patches of every pooling window (`_first_stage`)."""

    images: Tensor
    """[B, n, C, H, W] as given."""
    folded: Tensor
    """[n, B*C, H, W] (`_fold_tasks`)."""
    windows: Tensor
    """[n, B, K, 4*Ho*Wo]: the K = 9 x C values of the 3x3 patch at each position of every
    2x2 pooling window, positions ordered (hi, wi, ho, wo): offset in the window, then the
    window (`_first_stage` says why)."""
    pooled_size: tuple[int, int]
    """(Ho, Wo) = (H // 2, W // 2), max_pool2d's output size."""
    patch_mean: Tensor
    """[B, K] mean of the patches of all H x W positions (batch norm's statistics)."""
    patch_covariance: Tensor
    """[B, K, K] their biased covariance."""
    patch_count: int


def first_layer_input(x: Tensor, spec: NetSpec) -> Tensor | FirstLayerInput:
    """`x` [B, n, C, H, W] prepared for `forward_tasks`'s matmul-and-pool first stage, where it
    applies: on the CPU with 2x2 max-pooling (measured there, benchmarks/RESULTS.md); otherwise
    `x` unchanged. On CUDA the convolution paths stay (not measured on a GPU)."""
    if not (FIRST_STAGE_AS_MATMUL and x.device.type == "cpu" and spec.downsample == "max_pool"):
        return x
    tasks, n, channels, height, width = x.shape
    folded = _fold_tasks(x)
    patches = F.unfold(folded, 3, padding=1)  # [n, tasks*K, H*W]
    mean, covariance, count = _patch_statistics(patches, tasks)
    ho, wo = height // 2, width // 2
    k = channels * 9
    grid = patches.view(n, tasks, k, height, width)[..., : 2 * ho, : 2 * wo]
    windows = grid.reshape(n, tasks, k, ho, 2, wo, 2).permute(0, 1, 2, 4, 6, 3, 5)
    windows = windows.reshape(n, tasks, k, 4 * ho * wo)
    return FirstLayerInput(x, folded, windows, (ho, wo), mean, covariance, count)


def _first_stage(
    x: FirstLayerInput,
    weight: Tensor,
    bias: Tensor,
    step: int,
    shared: Params,
    spec: NetSpec,
    stats_out: list[BatchNormStats] | None,
) -> Tensor:
    """conv0, batch norm with batch statistics and 2x2 max-pooling (before the activation,
    which commutes with it) of B tasks -> [n, B*F, Ho, Wo].

    Batch norm is folded into the weights (`_batch_norm_as_affine`); the convolution at the
    positions that pooling reads is one matmul with `x.windows`, giving y laid out
    [n*B, F, hi, wi, Q] (Q = Ho*Wo windows). Viewed as [n*B, Q, (F, hi), wi], that is a
    channels-last tensor whose 2x2 pooling windows are exactly (hi, wi): torch's
    max_pool2d_with_indices finds each window's maximum there with its own tie-breaking, and
    its channels-last kernel (vectorised over Q) is 14-19x faster on this CPU than the one for
    contiguous [n, B*F, 2Ho, 2Wo] activations (benchmarks/cpu_kernels.py). The pooled values
    are then gathered from y at those indices: gather's derivatives (scatter-add, gather) never
    touch y itself, whereas max_pool2d's second derivative builds and adds a zero tensor of y's
    size (measured: benchmarks/RESULTS.md). The shift is added after pooling (max(y + c) = max(y) + c).
    Against conv2d + batch norm + max_pool2d (ties included): tests/test_engine.py."""
    tasks, filters = weight.shape[:2]
    w = weight.reshape(tasks, filters, -1)
    scale, shift = _batch_norm_as_affine(
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
    return pooled.view(n, tasks * filters, ho, wo) + shift.reshape(1, -1, 1, 1)


def _batch_norm_as_affine(
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
    """Batch norm (batch statistics) of the first conv's output y = w . p + b as an affine map
    y -> scale * (w . p) + shift, per task and filter ([B, F] each).

    The first layer's input does not depend on any parameter, so the statistics of y follow
    from the patches' mean m and covariance S (computed from the images alone): mean = w . m + b,
    var = w S w^T. Every batch-norm derivative, first and second, is then taken on [B, F]
    tensors instead of the full-resolution activations (benchmarks/RESULTS.md)."""
    mean = (w @ patch_mean.unsqueeze(2)).squeeze(2) + bias  # [tasks, filters]
    var = ((w @ patch_covariance) * w).sum(2)  # biased, as batch norm normalises with
    a = min(step, spec.affine_sets - 1)
    scale = shared["bn0.weight"][a] * torch.rsqrt(var + BN_EPS)
    shift = (bias - mean) * scale + shared["bn0.bias"][a]
    if stats_out is not None:
        unbiased = var.detach() * (patch_count / max(patch_count - 1, 1))
        stats_out.append(BatchNormStats(0, step, mean.detach().mean(0), unbiased.mean(0)))
    return scale, shift


def _first_conv_with_batch_norm(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    step: int,
    shared: Params,
    spec: NetSpec,
    stats_out: list[BatchNormStats] | None,
) -> Tensor:
    """conv0 then batch norm with batch statistics, as ONE grouped convolution of the folded
    images `x` [n, B*C, H, W]: bn(conv(x, w, b)) = conv(x, scale * w, shift)
    (`_batch_norm_as_affine`). Used where `_first_stage` is not (CUDA; strided convs or
    average pooling); equals `_batch_norm` after `F.conv2d` up to rounding (tests)."""
    tasks, filters = weight.shape[:2]
    stride = 2 if spec.downsample == "stride" else 1
    patches = F.unfold(x, 3, padding=1, stride=stride)
    mean, covariance, count = _patch_statistics(patches, tasks)
    w = weight.reshape(tasks, filters, -1)
    scale, shift = _batch_norm_as_affine(
        w, bias, mean, covariance, count, step, shared, spec, stats_out
    )
    return F.conv2d(
        x,
        (w * scale.unsqueeze(2)).reshape(tasks * filters, *weight.shape[2:]),
        shift.reshape(-1),
        stride=stride,
        padding=1,
        groups=tasks,
    )


def _patch_statistics(patches: Tensor, tasks: int) -> tuple[Tensor, Tensor, int]:
    """Per task, the mean [tasks, K] and biased covariance [tasks, K, K] of the 3x3 patches
    `patches` [n, tasks*K, positions] (F.unfold of the folded images, zero padding included),
    and how many patches each task has (n x positions)."""
    n, folded = patches.shape[:2]
    k = folded // tasks
    patches = patches.view(n, tasks, k, -1).transpose(0, 1).transpose(2, 3).reshape(tasks, -1, k)
    mean = patches.mean(1)
    centered = patches - mean.unsqueeze(1)
    return mean, centered.transpose(1, 2) @ centered / patches.shape[1], patches.shape[1]


def forward_task(
    fast: Params,
    shared: Params,
    running: Params,
    x: Tensor,
    step: int,
    spec: NetSpec,
    mode: BNMode = "batch",
    stats_out: list[BatchNormStats] | None = None,
) -> Tensor:
    """Logits [n, N] of one task: unbatched weights, `x` is [n, C, H, W]."""
    stride = 2 if spec.downsample == "stride" else 1
    h = x.contiguous(memory_format=MEMORY_FORMAT)
    for i in range(spec.stages):
        h = F.conv2d(h, fast[f"conv{i}.weight"], fast[f"conv{i}.bias"], stride=stride, padding=1)
        h = _batch_norm(h, i, step, 1, shared, running, spec, mode, stats_out)
        h = _activate_and_downsample(h, spec)
    return F.linear(h.flatten(1), fast["linear.weight"], fast["linear.bias"])


def conv_flops_per_image(spec: NetSpec) -> float:
    """Multiply-adds x2 of one forward pass of one image (convs and the head; BN etc. ignored)."""
    flops, side, channels = 0.0, spec.image_size, spec.in_channels
    for _ in range(spec.stages):
        out_side = math.ceil(side / 2) if spec.downsample == "stride" else side
        flops += 2 * 9 * channels * spec.filters * out_side * out_side
        side = out_side if spec.downsample == "stride" else out_side // 2
        channels = spec.filters
    return flops + 2 * spec.feature_size * spec.n_way
