"""The Triton batch norm (`KernelOptions(batch_norm="triton")`, mamlpp/kernels/triton_bn.py)
against the default (torch's fused kernel) on a GPU: ms per MAML++ outer iteration of the three
paper shapes, eager and as a CUDA graph, and float32's distance to float64 with each.

    PYTHONPATH=. python3 benchmarks/triton_bn_bench.py             # CUDA, about a minute on an H200
    PYTHONPATH=. python3 benchmarks/triton_bn_bench.py --dry-run   # CPU, Triton's interpreter

Prints, per shape and mode, the default's and the Triton path's ms per iteration (median of
ITERATIONS after WARMUP, epoch 0: every MSL step computed, second order) and default / triton
(> 1: the Triton path is faster); then, for Omniglot 20-way 1-shot, the largest relative gap of
float32's losses over 4 graphed updates to float64's, with either kernel. Eager timings include
Triton's launch overhead on the host, which a CUDA graph removes.

`--dry-run` runs the same code on the CPU with a tiny config under Triton's interpreter (it sets
TRITON_INTERPRET=1 before Triton is imported), eager only (tests/test_triton_bn.py).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import replace

import torch

from mamlpp.bench import SHAPES, random_batch, time_engine
from mamlpp.config import Config, apply_overrides
from mamlpp.engine.learner import MetaLearner
from mamlpp.kernels import KernelOptions
from mamlpp.presets import get_preset

ITERATIONS, WARMUP = 10, 3
KERNELS = {"default": KernelOptions(), "triton": KernelOptions(batch_norm="triton")}
DRY_OVERRIDES = ["model.filters=4", "inner.steps=1", "inner.eval_steps=1", "outer.meta_batch_size=2"]
"""The dry run's tiny network."""


def speed(device: str, shapes: Sequence[str], overrides: Sequence[str], iterations: int, warmup: int) -> None:
    """ms per outer iteration with either kernel, eager and (on CUDA) graphed, and their ratio."""
    modes = [False, True] if device == "cuda" else [False]
    for shape in shapes:
        config = replace(apply_overrides(get_preset(SHAPES[shape]).config, list(overrides)), engine="folded")
        for graphed in modes:
            ms = {
                name: 1e3 * time_engine(config, device, iterations, warmup, cuda_graph=graphed, kernel_options=options)
                for name, options in KERNELS.items()
            }
            mode = "graph" if graphed else "eager"
            print(
                f"[speed] {shape:24s} {mode}: default {ms['default']:7.2f} ms, triton {ms['triton']:7.2f} ms, "
                f"default/triton {ms['default'] / ms['triton']:.2f}",
                flush=True,
            )


def float32_gaps(device: str, overrides: Sequence[str], updates: int = 4) -> dict[str, float]:
    """Largest relative gap of float32's losses over `updates` updates (graphed on CUDA) to the
    default kernels' float64 losses, with each kernel; Omniglot 20-way 1-shot, same init."""
    config = apply_overrides(get_preset("omniglot_20way_1shot_mamlpp").config, list(overrides))
    generator = torch.Generator().manual_seed(2)
    batches = [random_batch(config, generator) for _ in range(updates)]
    reference = _losses(config, device, torch.float64, KERNELS["default"], batches)
    gaps = {}
    for name, options in KERNELS.items():
        values = _losses(config, device, torch.float32, options, batches)
        gaps[name] = max(abs(x - y) / abs(y) for x, y in zip(values, reference, strict=True))
        print(f"[float32] {name}: max relative loss gap to float64 over {updates} updates {gaps[name]:.1e}", flush=True)
    return gaps


def _losses(config: Config, device: str, dtype: torch.dtype, options: KernelOptions, batches: list) -> list[float]:
    graphed = device == "cuda"
    learner = MetaLearner(config, device, dtype, kernel_options=options, capturable=graphed)
    step = learner.train_step
    if graphed:
        from mamlpp.engine.cuda_graph import GraphedTrainStep

        step = GraphedTrainStep(learner)
    return [step(b.to(device), 0).loss for b in batches]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny config, Triton's interpreter")
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before mamlpp.kernels imports Triton
        speed("cpu", ["omniglot-5way-1shot"], DRY_OVERRIDES, iterations=1, warmup=0)
        float32_gaps("cpu", DRY_OVERRIDES, updates=2)
        return
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device (or --dry-run)")
    print(f"[device] {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    speed("cuda", list(SHAPES), [], ITERATIONS, WARMUP)
    float32_gaps("cuda", [])


if __name__ == "__main__":
    main()
