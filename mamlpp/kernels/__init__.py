"""Speed paths for the engine, chosen once per learner from the device and the network's shape.

The engine's model (`mamlpp.engine.model`) defines the plain paths and the `Kernels` interface;
this package builds faster ones (`cpu`, `cuda`, `folded_bn` for both; `triton_bn` on request) and
`choose` picks them.
Every choice is exact against the plain path in float64 (tests/test_engine.py). The CPU's
task groups on threads (`task_threads`) and malloc settings (`cpu_memory`) live here too.

`KernelOptions` turns each speed path off for A/B benchmarks (benchmarks/ab_switch.py); the
defaults are what was measured fastest (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from mamlpp.engine.model import PLAIN, BatchNormKernel, Kernels, NetSpec, fold_images, max_pool
from mamlpp.errors import MamlppError
from mamlpp.kernels import cpu, cuda, folded_bn


@dataclass(frozen=True)
class KernelOptions:
    """Which speed paths may be used; each True one applies where `choose` says."""

    fold_first_batch_norm: bool = True
    """The first layer's batch norm folded into its convolution (`folded_bn`)."""
    first_stage_as_matmul: bool = True
    """CPU, max-pooling: the first stage as one matmul with patches prepared once per batch."""
    pool_by_gather: bool = True
    """CPU: max-pooling as a gather at the maxima of max_pool2d's channels-last kernel."""
    task_threads: bool = True
    """CPU: the meta-batch's tasks in groups on parallel threads (`task_threads`)."""
    batch_norm: Literal["fused", "elementwise", "triton"] = "fused"
    """torch's fused batch-norm kernel, the elementwise one (benchmarking alternative), or the
    Triton kernels with fused backward and double backward (`triton_bn`; CUDA, or the CPU under
    TRITON_INTERPRET=1; not measured on a GPU yet: benchmarks/triton_bn_bench.py)."""
    channels_last: bool = False
    """Activations in the channels-last layout (benchmarking alternative)."""
    split_affine_sets: bool = True
    """CUDA: the batch-norm scale/shift sets split once per pass (`Kernels.split_affine`)."""


DEFAULT = KernelOptions()


def choose(
    device: torch.device, spec: NetSpec, options: KernelOptions = DEFAULT, tf32_matmul: bool = False
) -> Kernels:
    """The speed paths for `spec`'s network on `device` (with `tf32_matmul`, the config's
    choice, its steps run under `cuda.tf32_matmuls` on CUDA):

    - CPU: max-pooling by gather; the first stage as a matmul with prepared patches when the
      network max-pools, else the first batch norm folded into the convolution.
    - CUDA: the first batch norm folded for images up to `cuda.FOLD_FIRST_BATCH_NORM_MAX_SIDE`;
      the batch-norm scale/shift sets split once per pass (fewer kernels: a GPU iteration is
      bound by its launches; on the CPU it would change the summation order of the README's
      numbers for no measured gain).
    - anywhere else: the plain paths.

    The options' batch-norm kernel replaces torch's fused one in the stages that are not folded
    (`triton_bn`'s unavailability is a `MamlppError`).
    """
    on_cpu = device.type == "cpu"
    pool = cpu.max_pool_by_gather if on_cpu and options.pool_by_gather else max_pool
    kernels = PLAIN
    if on_cpu and options.first_stage_as_matmul and spec.downsample == "max_pool":
        kernels = Kernels("cpu-matmul", cpu.prepare_patch_windows, cpu.first_stage_matmul, pool)
    elif options.fold_first_batch_norm and (
        on_cpu or (device.type == "cuda" and spec.image_size <= cuda.FOLD_FIRST_BATCH_NORM_MAX_SIDE)
    ):
        name = f"{device.type}-folded-bn"
        kernels = Kernels(name, fold_images, folded_bn.first_stage_with(pool), pool)
    elif pool is not max_pool:
        kernels = Kernels(f"{device.type}-gather-pool", fold_images, None, pool)
    if options.batch_norm == "elementwise" or options.channels_last:
        kernels = Kernels(
            kernels.name + "+variants",
            kernels.prepare,
            kernels.first_stage,
            kernels.max_pool,
            cpu.batch_norm_elementwise if options.batch_norm == "elementwise" else kernels.batch_norm,
            torch.channels_last if options.channels_last else kernels.memory_format,
        )
    if options.batch_norm == "triton":
        kernels = replace(kernels, name=kernels.name + "+triton-bn", batch_norm=triton_batch_norm(device))
    if options.split_affine_sets and device.type == "cuda":
        kernels = replace(kernels, split_affine=True)
    if tf32_matmul and device.type == "cuda":
        kernels = replace(kernels, name=kernels.name + "+tf32", precision=cuda.tf32_matmuls)
    return kernels


def triton_batch_norm(device: torch.device) -> BatchNormKernel:
    """`triton_bn.batch_norm_triton`, or a `MamlppError` saying why it cannot run on `device`."""
    try:
        from mamlpp.kernels import triton_bn
    except ImportError as e:
        raise MamlppError(
            f"KernelOptions(batch_norm='triton') needs Triton, which cannot be imported ({e}): "
            "install it (pip install triton) or use batch_norm='fused'"
        ) from e
    if not triton_bn.runs_on(device):
        mode = "interpreted" if triton_bn.INTERPRETED else "compiled"
        raise MamlppError(
            f"KernelOptions(batch_norm='triton') cannot run on {device}: its Triton kernels run "
            "compiled on CUDA devices, or interpreted on the CPU (TRITON_INTERPRET=1 set before "
            f"Triton is first imported), and here they are {mode}; "
            "use batch_norm='fused' instead"
        )
    return triton_bn.batch_norm_triton
