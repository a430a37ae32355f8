"""Operators per MAML++ outer iteration, counted on the CPU: a proxy for the GPU's kernel launches
(each aten operator on a CUDA tensor launches about one kernel), which bound a GPU iteration at
the paper's small shapes (benchmarks/RESULTS.md#gpu). Counts every aten operator the iteration
dispatches (forward, the second-order backward, Adam), with the CPU's task threads off so that
every operator runs on this thread, and the Triton batch norm's kernel launches beside them.
The kernels are the ones `mamlpp.kernels.choose` picks for the CPU or for CUDA (run here on CPU
tensors: they are device-agnostic but for the Triton batch norm, which runs interpreted).

    TRITON_INTERPRET=1 PYTHONPATH=. .venv/bin/python benchmarks/op_count.py [PRESET ...]

Per preset (default: the three paper shapes' MAML++), the total and the top operators, for the
default kernels and for `KernelOptions(batch_norm="triton")` (under Triton's interpreter: slow,
but the count is what matters here). Results: benchmarks/RESULTS.md (appendix, sixth session).
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mamlpp.bench import SHAPES, random_batch
from mamlpp.engine.learner import MetaLearner
from mamlpp.kernels import KernelOptions
from mamlpp.presets import get_preset


class CountOps(TorchDispatchMode):
    """Counts the aten operators dispatched while active (views and metadata included)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.paused = False
        """Set inside a Triton launch: the interpreter's own tensor copies are no GPU work."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not self.paused:
            self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def count(preset: str, options: KernelOptions, as_on: str = "cpu") -> tuple[Counter[str], int]:
    """The operators of one outer iteration at epoch 0 (second order, every MSL step), after
    one untimed iteration, with the kernels `choose` picks for device `as_on` (they run on any
    device); and the Triton kernel launches among them."""
    from mamlpp.kernels import choose, triton_bn

    config = get_preset(preset).config
    learner = MetaLearner(config, "cpu", kernel_options=options)
    interpreted = options.batch_norm == "triton" and as_on != "cpu"  # chosen as on CUDA, run here
    fused = replace(options, batch_norm="fused") if interpreted else options
    chosen = choose(torch.device(as_on), learner.spec, fused, config.tf32_matmul)
    if interpreted:
        chosen = replace(chosen, batch_norm=triton_bn.batch_norm_triton)
    learner.kernels = replace(chosen, precision=learner.kernels.precision)
    batch = random_batch(config, torch.Generator().manual_seed(0))
    learner.train_step(batch, 0)
    counter = CountOps()
    launches = {"n": 0}
    original = triton_bn._one_launch_at_a_time

    @contextlib.contextmanager
    def counted() -> Iterator[None]:
        launches["n"] += 1
        counter.paused = True
        try:
            with original():
                yield
        finally:
            counter.paused = False

    triton_bn._one_launch_at_a_time = counted  # type: ignore[assignment]
    try:
        with counter:
            learner.train_step(batch, 0)
    finally:
        triton_bn._one_launch_at_a_time = original  # type: ignore[assignment]
    return counter.ops, launches["n"]


# views and metadata launch no kernel on a GPU
NO_KERNEL = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "unsqueeze", "squeeze",
             "select", "slice", "as_strided", "detach", "alias", "_reshape_alias", "reshape",
             "unbind", "split", "split_with_sizes", "chunk", "empty", "empty_like", "empty_strided",
             "lift_fresh", "_to_copy_noop", "is_same_size", "sym_size", "sym_stride", "sym_numel"}  # fmt: skip


def main(presets: list[str]) -> None:
    for preset in presets:
        for name, options, as_on in (
            ("the CPU's kernels", KernelOptions(task_threads=False), "cpu"),
            ("CUDA's kernels", KernelOptions(task_threads=False), "cuda"),
            ("CUDA's kernels, split BN sets off", KernelOptions(task_threads=False, split_affine_sets=False), "cuda"),
            ("CUDA's kernels + Triton batch norm", KernelOptions(task_threads=False, batch_norm="triton"), "cuda"),
        ):
            ops, launches = count(preset, options, as_on)
            kernels = sum(n for op, n in ops.items() if op not in NO_KERNEL) + launches
            top = ", ".join(f"{op} {n}" for op, n in ops.most_common(8))
            print(f"{preset} {name}: {sum(ops.values())} aten operators, ~{kernels} kernel-launching "
                  f"(Triton launches {launches}); most: {top}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:] or [SHAPES[s] for s in ("omniglot-5way-1shot", "omniglot-20way-1shot")])
