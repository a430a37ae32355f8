"""Interleaved A/B of boolean engine switches (in `mamlpp.model`, or `module.NAME` for another
module of mamlpp), in one process.

    .venv/bin/python benchmarks/ab_switch.py FOLD_FIRST_BATCH_NORM omniglot_5way_1shot_mamlpp 6
    .venv/bin/python benchmarks/ab_switch.py FIRST_STAGE_AS_MATMUL,POOL_BY_GATHER omniglot_5way_1shot_mamlpp 8
    .venv/bin/python benchmarks/ab_switch.py task_threads.ENABLED omniglot_5way_1shot_mamlpp 8

Alternates the switch off/on for ROUNDS rounds; each round times 2 MAML++ train_step calls at
epoch 0 (after 1 untimed call) on random images of the preset's shape, and prints the median
and every round's seconds per iteration. Interleaving cancels most of the slow drift of this
VM's speed; run it on an otherwise idle machine.
"""

from __future__ import annotations

import importlib
import sys
import time
from types import ModuleType

import torch

from mamlpp.bench import random_batch
from mamlpp.cpu_memory import keep_freed_memory
from mamlpp.learner import MetaLearner
from mamlpp.presets import get_preset


def main(switch: str, preset: str, rounds: int) -> None:
    keep_freed_memory()  # as `mamlpp` does
    # several switches are turned off and on together
    switches = [_switch(name) for name in switch.split(",")]
    config = get_preset(preset).config
    learner = MetaLearner(config, device="cpu")
    batch = random_batch(config, torch.Generator().manual_seed(0))
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for value in (False, True):
            for module, name in switches:
                setattr(module, name, value)
            learner.train_step(batch, 0)
            start = time.perf_counter()
            for _ in range(2):
                learner.train_step(batch, 0)
            times[value].append((time.perf_counter() - start) / 2)
    for value, seconds in times.items():
        median = sorted(seconds)[len(seconds) // 2]
        print(f"{switch}={value!s:5} median {median:.3f} s/iter  rounds {[round(s, 3) for s in seconds]}")


def _switch(qualified: str) -> tuple[ModuleType, str]:
    """NAME -> (mamlpp.model, NAME); module.NAME -> (mamlpp.module, NAME)."""
    module_name, _, name = qualified.rpartition(".")
    module = importlib.import_module(f"mamlpp.{module_name or 'model'}")
    if not isinstance(getattr(module, name, None), bool):
        raise SystemExit(f"{module.__name__}.{name} is not a boolean switch")
    return module, name


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "omniglot_5way_1shot_mamlpp",
         int(sys.argv[3]) if len(sys.argv) > 3 else 6)  # fmt: skip
