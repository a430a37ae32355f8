"""Seconds per outer iteration of S seeds trained as one folded step (`mamlpp.engine.seeds`)
against one seed, and whether the joint step matches separate learners on this device.

    .venv/bin/python benchmarks/seeds_throughput.py omniglot_20way_1shot_mamlpp cuda 2,3,4

For each S: the median seconds of one joint iteration (MAML++ at epoch 0: second order, every
MSL step computed) of S seeds (`mamlpp.bench.time_engine`), eager and, on CUDA, replayed as a
CUDA graph (`GraphedSeedStep`),
and the speed-up per seed-iteration over S=1 (S x t(1) / t(S)). Then one float64 check: two
seeds together vs two separate learners after 2 steps (max |difference| of the parameters).
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import torch

from mamlpp.bench import random_batch, time_engine
from mamlpp.data.batch import TaskBatch
from mamlpp.engine.learner import MetaLearner
from mamlpp.engine.seeds import SeedStack
from mamlpp.kernels import KernelOptions
from mamlpp.presets import get_preset


def exactness(preset: str, device: str) -> float:
    config = get_preset(preset).config
    configs = [replace(config, seed=s) for s in (0, 1)]
    options = KernelOptions(task_threads=False)
    stack = SeedStack(configs, device, torch.float64, options)
    singles = [MetaLearner(c, device, torch.float64, options) for c in configs]
    generator = torch.Generator().manual_seed(1)
    for epoch in range(2):
        batches: list[TaskBatch] = [random_batch(config, generator) for _ in configs]
        stack.train_step(batches, epoch)
        for single, batch in zip(singles, batches, strict=True):
            single.train_step(batch, epoch)
    worst = 0.0
    for s, single in enumerate(singles):
        ours = stack.state_dict(s)["meta_parameters"]
        for k, v in single.meta_parameters().items():
            worst = max(worst, (ours[k] - v.detach().cpu()).abs().max().item())
    return worst


def main(preset: str, device: str, seed_counts: list[int]) -> None:
    config = replace(get_preset(preset).config, engine="folded")
    for graphed in (False, True) if device.startswith("cuda") else (False,):
        base = 0.0
        for s in seed_counts:  # S=1 comes first
            per_seed = time_engine(config, device, 10, 3, cuda_graph=graphed, seeds=s)
            base = base or per_seed
            kind = "graph" if graphed else "eager"
            print(f"{preset} {device} {kind} S={s}: {per_seed * s * 1e3:.1f} ms/iteration, "
                  f"{base / per_seed:.2f}x per seed-iteration vs S=1", flush=True)  # fmt: skip
    print(f"float64, 2 seeds x 2 steps, max |together - apart| = {exactness(preset, device):.2e}")


if __name__ == "__main__":
    counts = [int(s) for s in (sys.argv[3] if len(sys.argv) > 3 else "2,3,4").split(",")]
    counts = [1, *(c for c in counts if c != 1)]
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "cuda", counts)
