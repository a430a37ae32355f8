"""CUDA speed paths. On a GPU an outer iteration is launch-bound, so the main speed path is the
whole iteration recorded as a CUDA graph (`mamlpp.engine.cuda_graph`); of the kernels, only the
first layer's batch norm folded into its convolution applies here, and only for Omniglot-sized
images: for 84x84 mini-ImageNet images the patch covariance (a tall, skinny matmul) made the
graphed step slower on an H200 (benchmarks/RESULTS.md#gpu).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

FOLD_FIRST_BATCH_NORM_MAX_SIDE = 32
"""Largest image side for which the first layer's batch norm is folded on CUDA."""


@contextlib.contextmanager
def tf32_matmuls() -> Iterator[None]:
    """float32 matmuls in TF32 while inside (`config.tf32_matmul`), torch's previous setting
    restored afterwards. torch reads the flag when it launches a kernel, so a CUDA graph
    recorded inside keeps TF32 kernels on every replay."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
