"""The CPU kernel facts behind the engine's choices (benchmarks/RESULTS.md), in one process.

    .venv/bin/python benchmarks/cpu_kernels.py

1. This CPU's fp32 matmul peak (a 2048^3 sgemm) and the floor it puts under an Omniglot 5-way
   1-shot MAML++ iteration: its convolutions alone (the analytic GFLOP of `mamlpp bench`) take
   at least GFLOP / peak seconds.
2. max_pool2d_with_indices on the folded engine's activations, contiguous vs channels-last.
3. Pooling inside a second-order derivative (as the inner loop uses it): F.max_pool2d vs
   `mamlpp.kernels.cpu.max_pool_by_gather`.

Milliseconds are medians of 20 calls after one warm-up; run it on an otherwise idle machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mamlpp.bench import analytic_gflop
from mamlpp.kernels import cpu
from mamlpp.kernels.cpu_memory import keep_freed_memory
from mamlpp.presets import get_preset


def median_ms(fn: Callable[[], object], calls: int = 20) -> float:
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def matmul_peak() -> None:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    gflops = 2 * 2048**3 / median_ms(lambda: a @ b, 5) / 1e6
    conv_gflop = analytic_gflop(get_preset("omniglot_5way_1shot_mamlpp").config)
    print(f"sgemm 2048^3: {gflops:.0f} GFLOP/s ({torch.get_num_threads()} threads)")
    print(f"Omniglot 5-way 1-shot: {conv_gflop:.1f} GFLOP/iteration -> convolutions alone take "
          f">= {conv_gflop / gflops:.3f} s at that rate")  # fmt: skip


def pooling_layouts(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape)
    last = x.contiguous(memory_format=torch.channels_last)
    contiguous = median_ms(lambda: F.max_pool2d_with_indices(x, (2, 2)))
    channels_last = median_ms(lambda: F.max_pool2d_with_indices(last, (2, 2)))
    print(f"max_pool2d_with_indices {list(shape)}: contiguous {contiguous:.2f} ms, "
          f"channels-last {channels_last:.2f} ms ({contiguous / channels_last:.1f}x)")  # fmt: skip


def pooling_second_order(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape)
    scale = torch.randn(shape[1], 1, 1, requires_grad=True)
    probe = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2)

    def second(pool: Callable[[torch.Tensor], torch.Tensor]) -> None:
        out = pool(x * scale)
        (first,) = torch.autograd.grad(((out * probe) ** 2).sum(), scale, create_graph=True)
        first.pow(2).sum().backward()

    pools = {"F.max_pool2d": lambda h: F.max_pool2d(h, 2), "gather": cpu.max_pool_by_gather}
    ms = {name: median_ms(lambda pool=pool: second(pool)) for name, pool in pools.items()}
    print(f"pooling in a second-order derivative {list(shape)}: "
          + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()))  # fmt: skip


if __name__ == "__main__":
    keep_freed_memory()  # as `mamlpp` does
    matmul_peak()
    for shape in [(5, 512, 28, 28), (5, 512, 14, 14)]:
        pooling_layouts(shape)
    for shape in [(5, 512, 14, 14), (5, 512, 7, 7)]:
        pooling_second_order(shape)
