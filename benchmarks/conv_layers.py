"""The folded engine's convolutions alone on the CPU: ms and GFLOP/s per layer shape.

    .venv/bin/python benchmarks/conv_layers.py

Omniglot 5-way 1-shot shapes (5 images, 8 tasks folded into 8 x 64 channels, groups = 8), float32
and bfloat16, forward and backward (input and weight gradients); plus the same FLOPs as one
ungrouped convolution with a shared weight, for reference. Run it on an idle machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def seconds(f: Callable[[], object], n: int = 20) -> float:
    for _ in range(3):
        f()
    start = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - start) / n


def layer_row(dtype: torch.dtype, side: int, cin: int) -> str:
    x = torch.randn(5, 8 * cin, side, side, dtype=dtype, requires_grad=True)
    w = torch.randn(512, cin, 3, 3, dtype=dtype, requires_grad=True)
    flops = 5 * 8 * side * side * 9 * cin * 64 * 2
    fwd = seconds(lambda: F.conv2d(x, w, padding=1, groups=8).detach())
    out = F.conv2d(x, w, padding=1, groups=8)
    grad = torch.randn_like(out)
    bwd = seconds(lambda: torch.autograd.grad(out, [x, w], grad, retain_graph=True))
    xs = torch.randn(40, cin, side, side, dtype=dtype)
    ws = torch.randn(64, cin, 3, 3, dtype=dtype)
    shared = seconds(lambda: F.conv2d(xs, ws, padding=1))
    return (
        f"{str(dtype):15} {side:2}x{side:<2} {cin:2}->64 ch: grouped forward {fwd * 1e3:5.2f} ms "
        f"({flops / fwd / 1e9:4.0f} GFLOP/s), backward {bwd * 1e3:5.2f} ms "
        f"({2 * flops / bwd / 1e9:4.0f} GFLOP/s); shared-weight forward {shared * 1e3:5.2f} ms"
    )


def main() -> None:
    from mamlpp.kernels.cpu_memory import keep_freed_memory

    keep_freed_memory()  # as `mamlpp` does
    for dtype in (torch.float32, torch.bfloat16):
        for side, cin in ((28, 1), (14, 64), (7, 64), (3, 64)):
            print(layer_row(dtype, side, cin), flush=True)


if __name__ == "__main__":
    main()
