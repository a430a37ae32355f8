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
  statistics, and the head is one batched matmul. Few, large kernels, and second-order
  gradients stay plain autograd (no vmap).

``forward_tasks`` takes its speed paths from a ``Kernels`` value (how the images are prepared
once per batch, the first stage, max-pooling, the batch-norm kernel). This module defines the
interface and the plain paths; ``mamlpp.kernels`` builds the fast ones and chooses them once
per learner from the device and the network's shape. The model never imports a kernel.

Several seeds trained together (`mamlpp.engine.seeds`) stack every meta-parameter with a leading
seed dimension: the fast weights then hold seed s's tasks at [s*B, (s+1)*B), and the batch-norm
tensors given as [S, sets, F] give each seed's tasks their seed's scale/shift (and statistics),
with batch statistics returned per seed ([S, F]). Plain [sets, F] tensors take the single-run
path unchanged.

Batch statistics are computed functionally and *returned* (``BatchNormStats``), never written
into buffers inside the forward; the learner applies them to the running statistics afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from mamlpp.config import Config

Params = Mapping[str, Tensor]
BNMode = Literal["batch", "running"]
LEAKY_SLOPE = 0.01
BN_EPS = 1e-5
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
    def final_side(self) -> int:
        """Side of the last stage's feature maps."""
        side = self.image_size
        for _ in range(self.stages):
            # 3x3 conv, padding 1: stride 2 gives ceil(side/2); max/avg pool 2x2 gives floor.
            side = math.ceil(side / 2) if self.downsample == "stride" else side // 2
        return side

    @property
    def feature_size(self) -> int:
        """Features the linear head sees: the flattened maps, or with stride-2 convs one global
        average per map (the strided network of the authors' code average-pools each map to 1x1
        before its linear layer: meta_neural_network_architectures.py:608-609 at 86964701)."""
        if self.downsample == "stride":
            return self.filters
        return self.filters * self.final_side * self.final_side

    @property
    def adapted_names(self) -> list[str]:
        names = [f"conv{i}.{k}" for i in range(self.stages) for k in ("weight", "bias")]
        return names + ["linear.weight", "linear.bias"]


class BatchNormStats(NamedTuple):
    """Batch statistics of one forward pass at one BN layer, averaged over the tasks."""

    layer: int
    step: int
    mean: Tensor  # [F], or [S, F] per seed (`seed_count`)
    var: Tensor  # unbiased, as torch's running-variance update uses


def init_params(spec: NetSpec, generator: torch.Generator) -> dict[str, Tensor]:
    """Xavier-uniform conv/linear weights, zero biases; BN scale 1, shift 0 (as the authors' code:
    meta_neural_network_architectures.py:62-66, 115-118, 182-192 at 86964701)."""
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


def activate(h: Tensor, spec: NetSpec) -> Tensor:
    return F.leaky_relu(h, LEAKY_SLOPE) if spec.activation == "leaky_relu" else F.softplus(h)


def max_pool(h: Tensor) -> Tensor:
    """2x2 max-pooling (torch's kernel): the plain path."""
    return F.max_pool2d(h, 2)


def activate_and_downsample(
    h: Tensor, spec: NetSpec, pool: Callable[[Tensor], Tensor] = max_pool
) -> Tensor:
    """activation then downsampling. Max-pooling commutes with an increasing activation, so it
    runs first and the activation (and its first and second derivatives) touch 4x fewer values.
    `pool`: the max-pooling kernel (`Kernels.max_pool`)."""
    if spec.downsample == "max_pool":
        return activate(pool(h), spec)
    if spec.downsample == "avg_pool":
        return F.avg_pool2d(activate(h, spec), 2)
    return activate(h, spec)  # "stride": the conv already halved the resolution


def batch_norm(
    h: Tensor,
    layer: int,
    step: int,
    tasks: int,
    params: Params,
    running: Params,
    spec: NetSpec,
    mode: BNMode,
    stats_out: list[BatchNormStats] | None,
    kernel: BatchNormKernel | None = None,
) -> Tensor:
    """Batch norm of layer `layer` at inner step `step` over `tasks` folded tasks: the step's
    scale/shift set, and either the running statistics of the step's set or the batch
    statistics (computed by `kernel`, default `batch_norm_fused`, and appended to `stats_out`)."""
    a = min(step, spec.affine_sets - 1)
    weight = per_task(affine_set(params, f"bn{layer}.weight", a), tasks)
    bias = per_task(affine_set(params, f"bn{layer}.bias", a), tasks)
    if mode == "running":
        s = min(step, spec.stat_sets - 1)
        mean = per_task(bn_set(running[f"bn{layer}.running_mean"], s), tasks)
        var = per_task(bn_set(running[f"bn{layer}.running_var"], s), tasks)
        return F.batch_norm(h, mean, var, weight, bias, training=False, eps=BN_EPS)
    out, mean, var = (kernel or batch_norm_fused)(h, weight, bias)
    if stats_out is not None:
        seeds = seed_count(params[f"bn{layer}.weight"])
        stats_out.append(
            BatchNormStats(
                layer, step, task_average(mean, tasks, seeds), task_average(var, tasks, seeds)
            )
        )
    return out


def split_affine_sets(params: Params) -> dict[str, Tensor]:
    """`params` and, for each batch-norm scale/shift, its sets as entries ``bn<i>.weight[a]``,
    split once (`torch.unbind`) for a whole pass: each set's gradient then lands in one slice of
    one stack in the backward, instead of one zero-filled full-size copy per use (`select`'s
    backward); the same sums, fewer kernels (benchmarks/op_count.py). `affine_set` reads them."""
    out = dict(params)
    for key, value in params.items():
        if key.startswith("bn") and key.endswith((".weight", ".bias")):
            sets = value.unbind(0 if value.dim() == 2 else 1)
            out.update({f"{key}[{a}]": t for a, t in enumerate(sets)})
    return out


def affine_set(params: Params, name: str, index: int) -> Tensor:
    """Set `index` of the batch-norm scale/shift `name` ([F], or [S, F] per seed): the split
    entry `split_affine_sets` made, else selected from the whole tensor (`bn_set`)."""
    split = params.get(f"{name}[{index}]")
    return split if split is not None else bn_set(params[name], index)


def bn_set(t: Tensor, index: int) -> Tensor:
    """Set `index` of a batch-norm tensor: [sets, F] -> [F], or of one stacked per seed
    (`mamlpp.engine.seeds`) [S, sets, F] -> [S, F]."""
    return t[index] if t.dim() == 2 else t[:, index]


def seed_count(bn_tensor: Tensor) -> int | None:
    """S for a batch-norm tensor stacked per seed ([S, sets, F]), None for a plain one."""
    return None if bn_tensor.dim() == 2 else bn_tensor.shape[0]


def per_task(v: Tensor, tasks: int) -> Tensor:
    """A batch-norm vector for each of `tasks` folded tasks, [tasks*F]: from [F], the same for
    every task; from [S, F] (one per seed), seed s's for its tasks/S consecutive tasks."""
    if v.dim() == 1:
        return v.repeat(tasks)
    return seed_rows(v, tasks // v.shape[0]).reshape(-1)


def seed_rows(v: Tensor, per_seed: int) -> Tensor:
    """[S, ...] -> [S*per_seed, ...]: each seed's slice once for each of its tasks (expand and
    reshape, as repeat_interleave, but never reading a size back from the device, so a CUDA
    graph can record it)."""
    seeds = v.shape[0]
    return v.unsqueeze(1).expand(seeds, per_seed, *v.shape[1:]).reshape(seeds * per_seed, *v.shape[1:])


def task_average(v: Tensor, tasks: int, seeds: int | None) -> Tensor:
    """Per-task statistics ([tasks*F] or [tasks, F]) averaged over the tasks -> [F], or over
    each seed's tasks/S consecutive tasks -> [S, F]."""
    if seeds is None:
        return v.view(tasks, -1).mean(0)
    return v.view(seeds, tasks // seeds, -1).mean(1)


def batch_norm_fused(h: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Batch norm with batch statistics -> (output, batch mean, unbiased batch variance), by
    torch's fused kernel. With momentum 1 its "running" buffers (fresh local tensors, not the
    model's) receive this pass's mean and unbiased variance; they are detached (they only feed
    the running statistics)."""
    mean = torch.zeros(h.shape[1], device=h.device, dtype=h.dtype)
    var = torch.ones(h.shape[1], device=h.device, dtype=h.dtype)
    out = F.batch_norm(h, mean, var, weight, bias, training=True, momentum=1.0, eps=BN_EPS)
    return out, mean, var


# ---------------------------------------------------------------------- speed-path interface


@dataclass(frozen=True)
class FoldedImages:
    """A batch of images prepared for `forward_tasks` once per batch (reused by every inner
    step and forward pass: only the weights change between them). Kernels may extend it with
    what their first stage needs (e.g. the images' patches)."""

    images: Tensor
    """[B, n, C, H, W] as given."""
    folded: Tensor
    """[n, B*C, H, W]: the tasks folded into the channels (`fold_tasks`)."""


class BatchNormKernel(Protocol):
    def __call__(self, h: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(output, batch mean, unbiased batch variance), the statistics detached."""
        ...


class FirstStage(Protocol):
    def __call__(
        self,
        x: FoldedImages,
        weight: Tensor,
        bias: Tensor,
        step: int,
        shared: Params,
        spec: NetSpec,
        stats_out: list[BatchNormStats] | None,
    ) -> Tensor:
        """The whole first stage of B tasks with batch statistics (conv0, batch norm,
        activation, downsampling) -> [n, B*F, H', W']."""
        ...


def fold_images(x: Tensor, spec: NetSpec) -> FoldedImages:
    """The plain preparation: the images and their folded view."""
    return FoldedImages(x, fold_tasks(x))


@dataclass(frozen=True)
class Kernels:
    """The speed paths `forward_tasks` takes. Each computes what the plain path computes (up to
    rounding; tests/test_engine.py); `mamlpp.kernels.choose` picks them once per learner."""

    name: str = "plain"
    prepare: Callable[[Tensor, NetSpec], FoldedImages] = fold_images
    """Images [B, n, C, H, W] -> what `forward_tasks` takes, once per batch."""
    first_stage: FirstStage | None = None
    """The first stage with batch statistics; None: conv, `batch_norm`, activation, pooling."""
    max_pool: Callable[[Tensor], Tensor] = max_pool
    batch_norm: BatchNormKernel = batch_norm_fused
    memory_format: torch.memory_format = torch.contiguous_format
    """Activation layout of the folded forward."""
    split_affine: bool = False
    """Split the batch-norm scale/shift sets once per pass (`split_affine_sets`): the same
    sums, fewer kernels, but another summation order of their gradients."""
    precision: Callable[[], AbstractContextManager[object]] = nullcontext
    """The numerical settings a whole step (forward and backward) runs under, e.g. TF32 matmuls
    on CUDA; the learners enter it around `outer_step` and `evaluate`."""


PLAIN = Kernels()


def forward_tasks(
    fast: Params,
    shared: Params,
    running: Params,
    x: Tensor | FoldedImages,
    step: int,
    spec: NetSpec,
    mode: BNMode = "batch",
    stats_out: list[BatchNormStats] | None = None,
    kernels: Kernels = PLAIN,
) -> Tensor:
    """Logits [B, n, N] of B tasks. `fast` holds task-batched adapted weights (leading dim B),
    `shared` the BN scale/shift, `x` is [B, n, C, H, W] images or those images prepared once
    per batch by `kernels.prepare`."""
    prepared = x if isinstance(x, FoldedImages) else kernels.prepare(x, spec)
    tasks, n = prepared.images.shape[:2]
    h = prepared.folded.contiguous(memory_format=kernels.memory_format)
    stride = 2 if spec.downsample == "stride" else 1
    for i in range(spec.stages):
        w, b = fast[f"conv{i}.weight"], fast[f"conv{i}.bias"]
        if i == 0 and mode == "batch" and kernels.first_stage is not None:
            h = kernels.first_stage(prepared, w, b, step, shared, spec, stats_out)
            continue
        h = F.conv2d(
            h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), stride=stride, padding=1, groups=tasks
        )
        h = batch_norm(h, i, step, tasks, shared, running, spec, mode, stats_out, kernels.batch_norm)
        h = activate_and_downsample(h, spec, kernels.max_pool)
    h = global_average(h, spec)
    features = h.reshape(n, tasks, -1).transpose(0, 1)  # [B, n, F], per-task flatten order
    weight, bias = fast["linear.weight"], fast["linear.bias"]
    return torch.baddbmm(bias.unsqueeze(1), features, weight.transpose(1, 2))


def fold_tasks(x: Tensor) -> Tensor:
    """[B, n, C, H, W] -> [n, B*C, H, W]: the tasks folded into the channels."""
    tasks, n = x.shape[:2]
    return x.transpose(0, 1).reshape(n, tasks * x.shape[2], *x.shape[3:])


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
    h = x
    for i in range(spec.stages):
        h = F.conv2d(h, fast[f"conv{i}.weight"], fast[f"conv{i}.bias"], stride=stride, padding=1)
        h = batch_norm(h, i, step, 1, shared, running, spec, mode, stats_out)
        h = activate_and_downsample(h, spec)
    return F.linear(global_average(h, spec).flatten(1), fast["linear.weight"], fast["linear.bias"])


def global_average(h: Tensor, spec: NetSpec) -> Tensor:
    """The strided network's last maps [n, C, H, W] averaged to [n, C, 1, 1] (`feature_size`);
    the pooled networks' maps unchanged."""
    return h.mean((2, 3), keepdim=True) if spec.downsample == "stride" else h


def conv_flops_per_image(spec: NetSpec) -> float:
    """Multiply-adds x2 of one forward pass of one image (convs and the head; BN etc. ignored)."""
    flops, side, channels = 0.0, spec.image_size, spec.in_channels
    for _ in range(spec.stages):
        out_side = math.ceil(side / 2) if spec.downsample == "stride" else side
        flops += 2 * 9 * channels * spec.filters * out_side * out_side
        side = out_side if spec.downsample == "stride" else out_side // 2
        channels = spec.filters
    return flops + 2 * spec.feature_size * spec.n_way
