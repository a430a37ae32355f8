"""Interleaved A/B of the engine's speed paths (boolean fields of `mamlpp.kernels.KernelOptions`),
in one process.

    .venv/bin/python benchmarks/ab_switch.py fold_first_batch_norm omniglot_5way_1shot_mamlpp 6
    .venv/bin/python benchmarks/ab_switch.py first_stage_as_matmul,pool_by_gather omniglot_5way_1shot_mamlpp 8
    .venv/bin/python benchmarks/ab_switch.py task_threads omniglot_5way_1shot_mamlpp 8

Each of ROUNDS rounds times the switches off, on, on, off; each timing is 2 MAML++ train_step
calls at epoch 0 (after 1 untimed call) on random images of the preset's shape. Prints the
medians and every round's seconds per iteration, and the median over rounds of off / on (a
paired ratio: a drift of this VM's speed within a round cancels). Run it on an otherwise idle
machine.
"""

from __future__ import annotations

import sys
import time
from dataclasses import fields

import torch

from mamlpp.bench import random_batch
from mamlpp.engine.learner import MetaLearner
from mamlpp.kernels import KernelOptions
from mamlpp.kernels.cpu_memory import keep_freed_memory
from mamlpp.presets import get_preset


def main(switch: str, preset: str, rounds: int) -> None:
    keep_freed_memory()  # as `mamlpp` does
    # several switches are turned off and on together
    names = switch.split(",")
    booleans = [f.name for f in fields(KernelOptions) if isinstance(f.default, bool)]
    if unknown := [n for n in names if n not in booleans]:
        raise SystemExit(f"not a speed-path switch: {unknown}; choose from {booleans}")
    config = get_preset(preset).config
    learners = {
        value: MetaLearner(config, device="cpu", kernel_options=KernelOptions(**dict.fromkeys(names, value)))
        for value in (False, True)
    }
    batch = random_batch(config, torch.Generator().manual_seed(0))

    def timed(value: bool) -> float:
        learner = learners[value]
        learner.train_step(batch, 0)
        start = time.perf_counter()
        for _ in range(2):
            learner.train_step(batch, 0)
        return (time.perf_counter() - start) / 2

    times: dict[bool, list[float]] = {False: [], True: []}
    ratios = []
    for _ in range(rounds):
        # off, on, on, off: a drift of the VM's speed within the round cancels in the ratio
        first_off, first_on, second_on, second_off = (timed(v) for v in (False, True, True, False))
        off, on = (first_off + second_off) / 2, (first_on + second_on) / 2
        times[False].append(off)
        times[True].append(on)
        ratios.append(off / on)
    for value, seconds in times.items():
        print(f"{switch}={value!s:5} median {_median(seconds):.3f} s/iter  rounds {[round(s, 3) for s in seconds]}")
    print(f"speed-up (off / on within each round): median {_median(ratios):.3f}x, rounds {[round(r, 3) for r in ratios]}")


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "omniglot_5way_1shot_mamlpp",
         int(sys.argv[3]) if len(sys.argv) > 3 else 6)  # fmt: skip
