"""Batch norm with batch statistics in Triton, a `model.BatchNormKernel` whose forward, backward
and double backward are one fused kernel each (`KernelOptions(batch_norm="triton")`).

Per channel c of contiguous h [N, C, H, W], over its M = N*H*W values x:

    mean = sum(x) / M,  var = sum((x - mean)^2) / M,  r = 1 / sqrt(var + BN_EPS)
    xhat = (x - mean) * r,  y = w * xhat + b

Backward, for the output's cotangent gy (the standard formulas):

    gb = sum(gy),  gw = sum(gy * xhat),  gx = w * r * (gy - gb / M - xhat * gw / M)

The backward is itself an autograd function of (gy, x, w), so second-order MAML++ can
differentiate through it. Its double backward, for cotangents (ggx, ggw, ggb) of (gx, gw, gb),
with the channel means gbar = mean(gy), m = mean(gy * xhat), mu = mean(ggx),
q = mean(ggx * xhat), p = mean(ggx * gy), and alpha = -w r m, beta = ggw - w r q:

    d/dgy = w r ggx + beta * xhat + (ggb - w r mu)
    d/dw  = r M (p - gbar mu - m q)
    d/dx  = r (alpha ggx + beta gy - (alpha mu + beta gbar)
               - xhat (alpha q + beta m + w r (p - gbar mu - m q)))

(d/dx: gx and gw depend on x through xhat, whose Jacobian-transpose is the batch-norm backward
with w = 1, u -> r (u - mean(u) - xhat mean(u xhat)), here applied to u = alpha ggx + beta gy;
gx also through its factor r, with dr/dx = -r^2 xhat / M.) Third derivatives are not provided.

Each kernel runs one program per channel (C programs) that loops over the channel's values in
blocks of up to MAX_BLOCK: one pass for each reduction, then one pass writing the elementwise
results, so every value is read from memory two or three times; simple rather than the fastest
reduction for large M (a mini-ImageNet channel's M = N*84*84 is one program's loop).
Statistics accumulate in the input's dtype (float32 or float64). Exact against torch's kernels
and autograd (float64; tests/test_triton_bn.py); its speed on a GPU: benchmarks/triton_bn_bench.py.

The kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter when
TRITON_INTERPRET=1 is set before Triton is first imported (it decorates its own library's
kernels then too; `INTERPRETED`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from mamlpp.engine.model import BN_EPS

MAX_BLOCK = 1024
"""Values of a channel each program loads per step of its loops (fewer for small M)."""


@triton.jit
def _channel_block(c, start, M, HW, CHW, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
    """Offsets of channel c's values start .. start+BLOCK-1 (in (n, h, w) order) in a
    contiguous [N, C, H, W] tensor, and the mask of those < M."""
    i = start + tl.arange(0, BLOCK)
    n = (i // HW).to(tl.int64)
    return n * CHW + c * HW + (i - n * HW), i < M


@triton.jit
def _forward_kernel(  # type: ignore[no-untyped-def]
    x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, unbiased_ptr,
    M, HW, CHW, EPS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """y, and per channel mean, r and the unbiased variance: two reduction passes (mean, then
    the squared deviations from it), one writing y."""
    c = tl.program_id(0).to(tl.int64)
    dtype = y_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK], dtype=dtype)
    for start in range(0, M, BLOCK):
        offs, mask = _channel_block(c, start, M, HW, CHW, BLOCK)
        acc += tl.load(x_ptr + offs, mask=mask, other=0.0)
    mean = tl.sum(acc, 0) / M
    acc = tl.zeros([BLOCK], dtype=dtype)
    for start in range(0, M, BLOCK):
        offs, mask = _channel_block(c, start, M, HW, CHW, BLOCK)
        d = tl.where(mask, tl.load(x_ptr + offs, mask=mask, other=0.0) - mean, 0.0)
        acc += d * d
    squares = tl.sum(acc, 0)
    rstd = 1.0 / tl.sqrt(squares / M + tl.full([], EPS, dtype))  # EPS exact in float64
    scale = tl.load(w_ptr + c) * rstd
    bias = tl.load(b_ptr + c)
    for start in range(0, M, BLOCK):
        offs, mask = _channel_block(c, start, M, HW, CHW, BLOCK)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        tl.store(y_ptr + offs, (x - mean) * scale + bias, mask=mask)
    tl.store(mean_ptr + c, mean)
    tl.store(rstd_ptr + c, rstd)
    tl.store(unbiased_ptr + c, squares / (M - 1))


@triton.jit
def _backward_kernel(  # type: ignore[no-untyped-def]
    gy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, gx_ptr, gw_ptr, gb_ptr,
    M, HW, CHW, BLOCK: tl.constexpr,
):  # fmt: skip
    """gx, gw, gb: one pass for sum(gy) and sum(gy * xhat), one writing gx."""
    c = tl.program_id(0).to(tl.int64)
    dtype = gx_ptr.dtype.element_ty
    mean = tl.load(mean_ptr + c)
    rstd = tl.load(rstd_ptr + c)
    sum_gy = tl.zeros([BLOCK], dtype=dtype)
    sum_gy_xhat = tl.zeros([BLOCK], dtype=dtype)
    for start in range(0, M, BLOCK):
        offs, mask = _channel_block(c, start, M, HW, CHW, BLOCK)
        gy = tl.load(gy_ptr + offs, mask=mask, other=0.0)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        sum_gy += gy
        sum_gy_xhat += gy * ((x - mean) * rstd)
    gb = tl.sum(sum_gy, 0)
    gw = tl.sum(sum_gy_xhat, 0)
    tl.store(gb_ptr + c, gb)
    tl.store(gw_ptr + c, gw)
    scale = tl.load(w_ptr + c) * rstd
    gy_mean = gb / M
    gy_xhat_mean = gw / M
    for start in range(0, M, BLOCK):
        offs, mask = _channel_block(c, start, M, HW, CHW, BLOCK)
        gy = tl.load(gy_ptr + offs, mask=mask, other=0.0)
        xhat = (tl.load(x_ptr + offs, mask=mask, other=0.0) - mean) * rstd
        tl.store(gx_ptr + offs, scale * (gy - gy_mean - xhat * gy_xhat_mean), mask=mask)


@triton.jit
def _double_backward_kernel(  # type: ignore[no-untyped-def]
    gy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, ggx_ptr, ggw_ptr, ggb_ptr,
    ggy_ptr, dx_ptr, dw_ptr,
    M, HW, CHW, HAS_GGX: tl.constexpr, HAS_GGW: tl.constexpr, HAS_GGB: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """The backward's vector-Jacobian product (module docstring): one pass for the five channel
    sums, one writing d/dgy and d/dx. A cotangent that is absent (HAS_* False) counts as zero."""
    c = tl.program_id(0).to(tl.int64)
    dtype = dx_ptr.dtype.element_ty
    mean = tl.load(mean_ptr + c)
    rstd = tl.load(rstd_ptr + c)
    sum_gy = tl.zeros([BLOCK], dtype=dtype)
    sum_gy_xhat = tl.zeros([BLOCK], dtype=dtype)
    sum_ggx = tl.zeros([BLOCK], dtype=dtype)
    sum_ggx_xhat = tl.zeros([BLOCK], dtype=dtype)
    sum_ggx_gy = tl.zeros([BLOCK], dtype=dtype)
    for start in range(0, M, BLOCK):
        offs, mask = _channel_block(c, start, M, HW, CHW, BLOCK)
        gy = tl.load(gy_ptr + offs, mask=mask, other=0.0)
        xhat = (tl.load(x_ptr + offs, mask=mask, other=0.0) - mean) * rstd
        sum_gy += gy
        sum_gy_xhat += gy * xhat
        if HAS_GGX:
            ggx = tl.load(ggx_ptr + offs, mask=mask, other=0.0)
            sum_ggx += ggx
            sum_ggx_xhat += ggx * xhat
            sum_ggx_gy += ggx * gy
    gbar = tl.sum(sum_gy, 0) / M
    m = tl.sum(sum_gy_xhat, 0) / M
    mu = tl.sum(sum_ggx, 0) / M
    q = tl.sum(sum_ggx_xhat, 0) / M
    p = tl.sum(sum_ggx_gy, 0) / M
    ggw = tl.load(ggw_ptr + c) if HAS_GGW else 0.0
    ggb = tl.load(ggb_ptr + c) if HAS_GGB else 0.0
    wr = tl.load(w_ptr + c) * rstd
    centred = p - gbar * mu - m * q
    tl.store(dw_ptr + c, rstd * M * centred)
    alpha = -wr * m
    beta = ggw - wr * q
    dx_shift = alpha * mu + beta * gbar
    dx_xhat = alpha * q + beta * m + wr * centred
    dgy_shift = ggb - wr * mu
    for start in range(0, M, BLOCK):
        offs, mask = _channel_block(c, start, M, HW, CHW, BLOCK)
        gy = tl.load(gy_ptr + offs, mask=mask, other=0.0)
        xhat = (tl.load(x_ptr + offs, mask=mask, other=0.0) - mean) * rstd
        dgy = beta * xhat + dgy_shift
        dx = beta * gy - dx_shift - xhat * dx_xhat
        if HAS_GGX:
            ggx = tl.load(ggx_ptr + offs, mask=mask, other=0.0)
            dgy += wr * ggx
            dx += alpha * ggx
        tl.store(ggy_ptr + offs, dgy, mask=mask)
        tl.store(dx_ptr + offs, rstd * dx, mask=mask)


INTERPRETED = not isinstance(_forward_kernel, triton.runtime.JITFunction)
"""Whether the kernels run under Triton's interpreter (on CPU tensors) rather than compiled."""


_INTERPRETER_LOCK = threading.Lock()


def _one_launch_at_a_time() -> contextlib.AbstractContextManager[object]:
    """Interpreted, one kernel runs at a time (the CPU's task threads launch concurrently, and
    the interpreter patches `triton.language` while a kernel runs); compiled, no lock."""
    return _INTERPRETER_LOCK if INTERPRETED else contextlib.nullcontext()


def runs_on(device: torch.device) -> bool:
    """Whether the kernels can run on `device`: compiled on CUDA, interpreted on the CPU."""
    return device.type == ("cpu" if INTERPRETED else "cuda")


def _launch_shape(x: Tensor) -> tuple[tuple[int], int, int, int, int]:
    """(grid, M, H*W, C*H*W, BLOCK) for contiguous [N, C, H, W] `x`."""
    n, c, height, width = x.shape
    m = n * height * width
    return (c,), m, height * width, c * height * width, min(MAX_BLOCK, triton.next_power_of_2(m))


class _BatchNorm(torch.autograd.Function):
    """(h, weight, bias) -> (out, mean, unbiased var); backward by `_BatchNormBackward`."""

    @staticmethod
    def forward(ctx: FunctionCtx, h: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        grid, m, hw, chw, block = _launch_shape(h)
        out = torch.empty_like(h)
        mean, rstd, unbiased = (h.new_empty(h.shape[1]) for _ in range(3))
        with _one_launch_at_a_time():
            _forward_kernel[grid](h, weight, bias, out, mean, rstd, unbiased, m, hw, chw, BN_EPS, block)
        ctx.save_for_backward(h, weight, mean, rstd)
        ctx.mark_non_differentiable(mean, unbiased)
        return out, mean, unbiased

    @staticmethod
    def backward(ctx: Any, gy: Tensor, _mean: Tensor, _var: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h, weight, mean, rstd = ctx.saved_tensors
        gx, gw, gb = _BatchNormBackward.apply(gy.contiguous(), h, weight, mean, rstd)
        return gx, gw, gb


class _BatchNormBackward(torch.autograd.Function):
    """(gy, x, w; the forward's mean and r) -> (gx, gw, gb), differentiable once more in
    (gy, x, w); mean and r are x's statistics, so d/dx counts their dependence on x."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, gy: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        grid, m, hw, chw, block = _launch_shape(x)
        gx = torch.empty_like(x)
        gw, gb = torch.empty_like(weight), torch.empty_like(weight)
        with _one_launch_at_a_time():
            _backward_kernel[grid](gy, x, weight, mean, rstd, gx, gw, gb, m, hw, chw, block)
        ctx.save_for_backward(gy, x, weight, mean, rstd)
        ctx.set_materialize_grads(False)
        return gx, gw, gb

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, ggx: Tensor | None, ggw: Tensor | None, ggb: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        if ggx is None and ggw is None and ggb is None:
            return None, None, None, None, None
        gy, x, weight, mean, rstd = ctx.saved_tensors
        grid, m, hw, chw, block = _launch_shape(x)
        dgy, dx = torch.empty_like(x), torch.empty_like(x)
        dw = torch.empty_like(weight)
        ggx = None if ggx is None else ggx.contiguous()
        with _one_launch_at_a_time():
            _double_backward_kernel[grid](
                gy, x, weight, mean, rstd,
                x if ggx is None else ggx, weight if ggw is None else ggw, weight if ggb is None else ggb,
                dgy, dx, dw, m, hw, chw, ggx is not None, ggw is not None, ggb is not None, block,
            )  # fmt: skip
        return dgy, dx, dw, None, None


def batch_norm_triton(h: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`model.BatchNormKernel` by the Triton kernels: (output, batch mean, unbiased batch
    variance), the statistics detached; `h` [N, C, H, W] is made contiguous first."""
    if h.dim() != 4 or h.shape[0] * h.shape[2] * h.shape[3] < 2:
        raise ValueError(
            f"batch norm needs [N, C, H, W] with more than 1 value per channel, got {list(h.shape)}"
        )
    out, mean, var = _BatchNorm.apply(h.contiguous(), weight.contiguous(), bias.contiguous())
    return out, mean, var
