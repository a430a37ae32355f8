"""The Triton batch-norm kernels (`mamlpp.kernels.triton_bn`) against torch in float64, run on
the CPU by Triton's interpreter: the forward against torch's fused kernel, the first and second
derivatives against finite differences (gradcheck, gradgradcheck) and against torch's autograd,
and a learner's second-order meta-gradients against the default kernels; their compilation for
a GPU; the GPU benchmark's dry run. Skipped, with the reason, where Triton cannot be imported."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
import torch

import mamlpp.kernels
from mamlpp.engine import model
from mamlpp.engine.learner import MetaLearner
from mamlpp.errors import MamlppError
from mamlpp.kernels import KernelOptions, choose
from mamlpp.presets import synthetic_config
from tests.support.tiny import random_batch

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tb() -> ModuleType:
    """`triton_bn` with its kernels interpreted (tests/conftest.py sets TRITON_INTERPRET=1 for
    the session: Triton reads it when a kernel is decorated, its own library's included)."""
    try:
        module = importlib.import_module("mamlpp.kernels.triton_bn")
    except ImportError as e:
        pytest.skip(f"Triton cannot be imported ({e}): the Triton batch-norm kernels are untested")
    if not module.INTERPRETED:
        pytest.fail("Triton was imported without TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    return module


def _inputs(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = F64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*shape, generator=g, dtype=dtype) * 2 + 0.5
    weight = torch.randn(shape[1], generator=g, dtype=dtype)
    bias = torch.randn(shape[1], generator=g, dtype=dtype)
    return h, weight, bias


# M = N*H*W per channel: 245, 4 (H = W = 1), 1587 (more than one block of 1024, not a multiple)
SHAPES = [(5, 3, 7, 7), (4, 2, 1, 1), (3, 2, 23, 23)]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_equals_torch_fused_kernel(tb: ModuleType, shape: tuple[int, ...]) -> None:
    h, weight, bias = _inputs(shape)
    for ours, torchs in zip(tb.batch_norm_triton(h, weight, bias), model.batch_norm_fused(h, weight, bias)):
        torch.testing.assert_close(ours, torchs, rtol=0, atol=1e-12)
    out, mean, var = tb.batch_norm_triton(*_inputs(shape, dtype=torch.float32))
    torch.testing.assert_close(out, model.batch_norm_fused(*_inputs(shape, dtype=torch.float32))[0])
    assert not mean.requires_grad and not var.requires_grad


def test_non_contiguous_input_and_too_few_values(tb: ModuleType) -> None:
    h, weight, bias = _inputs((4, 6, 3, 3))
    channels_last = h.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        tb.batch_norm_triton(channels_last, weight, bias)[0], tb.batch_norm_triton(h, weight, bias)[0]
    )
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        tb.batch_norm_triton(h[:1, :, :1, :1], weight, bias)


def test_gradcheck_and_gradgradcheck(tb: ModuleType) -> None:
    """First and second derivatives of the output in (h, weight, bias) against finite
    differences (float64): the backward kernel, and the double-backward kernel with every
    cotangent present."""
    inputs = tuple(t.requires_grad_() for t in _inputs((3, 2, 2, 2)))

    def out(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return tb.batch_norm_triton(h, weight, bias)[0]

    assert torch.autograd.gradcheck(out, inputs)
    assert torch.autograd.gradgradcheck(out, inputs)


@pytest.mark.parametrize("shape", [(4, 3, 1, 1), (3, 2, 23, 23)])
@pytest.mark.parametrize("cotangents", ["xwb", "x", "w", "b", "wb"])
def test_double_backward_equals_torch_autograd(tb: ModuleType, shape: tuple[int, ...], cotangents: str) -> None:
    """The vector-Jacobian product of the backward (gy, h, w) -> (gx, gw, gb), for cotangents
    of any subset of (gx, gw, gb) (the others absent, as autograd passes them), equals
    torch's autograd through F.batch_norm's backward."""
    g = torch.Generator().manual_seed(1)
    gy0 = torch.randn(*shape, generator=g, dtype=F64)
    cot = {"x": torch.randn(*shape, generator=g, dtype=F64), "w": torch.randn(shape[1], generator=g, dtype=F64)}
    cot["b"] = torch.randn(shape[1], generator=g, dtype=F64)
    results = []
    for kernel in (model.batch_norm_fused, tb.batch_norm_triton):
        h, weight, bias = (t.requires_grad_() for t in _inputs(shape))
        gy = gy0.clone().requires_grad_()
        out = kernel(h, weight, bias)[0]
        gx, gw, gb = torch.autograd.grad(out, (h, weight, bias), gy, create_graph=True)
        first = dict(zip("xwb", (gx, gw, gb)))
        loss = sum((first[k] * cot[k]).sum() for k in cotangents)
        second = torch.autograd.grad(loss, (gy, h, weight), allow_unused=True)
        results.append([torch.zeros_like(t) if d is None else d for d, t in zip(second, (gy, h, weight))])
    for torchs, ours in zip(*results):
        torch.testing.assert_close(ours, torchs, rtol=0, atol=1e-11)


def test_learner_meta_gradients_equal_the_default_kernels(tb: ModuleType) -> None:
    """A MAML++ learner's second-order meta-gradients and running statistics are the same with
    the Triton batch norm as with the default kernels (float64; the CPU's task threads launch
    the interpreted kernels one at a time)."""
    c = synthetic_config()
    c = replace(c, inner=replace(c.inner, order="second"), outer=replace(c.outer, meta_batch_size=2))
    batch = random_batch(c, 2)
    out = {}
    for kernel in ("fused", "triton"):
        options = KernelOptions(batch_norm=kernel)  # type: ignore[arg-type]
        learner = MetaLearner(c, dtype=F64, kernel_options=options)
        assert ("triton-bn" in learner.kernels.name) == (kernel == "triton")
        meta = learner.meta_parameters()
        grads = torch.autograd.grad(learner.meta_loss(batch, 0).loss, list(meta.values()), allow_unused=True)
        learner.train_step(batch, 0)
        out[kernel] = (dict(zip(meta, grads)), learner.running["bn2.running_var"].clone())
    for k, g in out["fused"][0].items():
        assert g is not None or out["triton"][0][k] is None, k
        if g is not None:
            torch.testing.assert_close(out["triton"][0][k], g, rtol=0, atol=1e-12)
    torch.testing.assert_close(out["triton"][1], out["fused"][1], rtol=0, atol=1e-12)


def test_asking_where_it_cannot_run_is_a_clear_error(tb: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = MetaLearner(synthetic_config()).spec
    monkeypatch.setattr(tb, "INTERPRETED", False)  # compiled kernels: CUDA only
    with pytest.raises(MamlppError, match="cannot run on cpu.*compiled.*batch_norm='fused'"):
        choose(torch.device("cpu"), spec, KernelOptions(batch_norm="triton"))


def test_asking_without_triton_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs also where Triton is missing: an import that fails is a MamlppError naming it."""
    spec = MetaLearner(synthetic_config()).spec
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    monkeypatch.delitem(sys.modules, "mamlpp.kernels.triton_bn", raising=False)
    monkeypatch.delattr(mamlpp.kernels, "triton_bn", raising=False)
    with pytest.raises(MamlppError, match="needs Triton, which cannot be imported.*pip install triton"):
        choose(torch.device("cpu"), spec, KernelOptions(batch_norm="triton"))
    assert "triton-bn" not in choose(torch.device("cpu"), spec).name


COMPILE_FOR_HOPPER = """
import inspect, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mamlpp.kernels import triton_bn as tb

assert not tb.INTERPRETED
for dtype in ("fp32", "fp64"):
    for kernel, constexprs in [
        (tb._forward_kernel, {"EPS": 1e-5, "BLOCK": 1024}),
        (tb._backward_kernel, {"BLOCK": 64}),
        (tb._double_backward_kernel, {"HAS_GGX": True, "HAS_GGW": True, "HAS_GGB": True, "BLOCK": 1024}),
        (tb._double_backward_kernel, {"HAS_GGX": False, "HAS_GGW": True, "HAS_GGB": False, "BLOCK": 16}),
    ]:
        names = inspect.signature(kernel.fn).parameters
        signature = {n: "constexpr" if n in constexprs else "i32" if n in ("M", "HW", "CHW") else "*" + dtype for n in names}
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"]
        print(dtype, kernel.fn.__name__, "ok")
"""


def test_the_kernels_compile_for_a_hopper_gpu(tb: ModuleType) -> None:
    """The interpreter checks no types: each kernel, float32 and float64, is compiled to a
    cubin for sm_90 (H100/H200) by this Triton's compiler and the ptxas it ships, no GPU
    needed. In a fresh process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_FOR_HOPPER], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if "ImportError" in done.stderr and "backends" in done.stderr:
        pytest.skip(f"this Triton cannot compile for CUDA here: {done.stderr.splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" ok") == 8


def test_the_benchmark_runs_dry_on_the_cpu(tb: ModuleType) -> None:
    """benchmarks/triton_bn_bench.py's code on a tiny config under the interpreter, so a GPU
    session never finds a broken script."""
    done = subprocess.run(
        [sys.executable, "benchmarks/triton_bn_bench.py", "--dry-run"], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "default/triton" in done.stdout and done.stdout.count("[float32]") == 2
