"""Episodes per second from the cache on one CPU core (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_data.py [--data-root /path/to/data] [--seconds 3]

Omniglot 20-way 1-shot (1 target per class) uses the real Omniglot from the data root, meta-batches
of 8 as in training. mini-ImageNet 5-way 5-shot with 15 targets uses generated images (64 training
classes x 100 images of 3x84x84; the cost per episode does not depend on the images per class)
written to and read back from a temporary cache, meta-batches of 2 as in training.
Target: >= 2000 Omniglot episodes/s, so sampling stays under 5% of an outer step. Measured:
benchmarks/RESULTS.md#cpu.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mamlpp.config import Config, DataConfig
from mamlpp.data import make_episodes
from mamlpp.data.cache import SplitImages, load_cache, write_cache
from mamlpp.data.episodes import EpisodeSampler

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


def episodes_per_second(sampler: EpisodeSampler, batch_size: int, seconds: float) -> tuple[float, float]:
    """(episodes per wall-clock second, episodes per CPU second of this process). On a shared
    machine the CPU-time rate is the fairer number: it does not count time other processes ran."""
    sampler.batch(range(batch_size))  # warm up (page cache, allocator)
    done, t = 0, 0
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        sampler.batch(range(t * batch_size, (t + 1) * batch_size))
        done, t = done + batch_size, t + 1
    return done / (time.perf_counter() - wall), done / (time.process_time() - cpu)


def report(label: str, rates: tuple[float, float]) -> None:
    wall, cpu = rates
    print(f"{label:<58} {wall:7.0f} episodes/s wall, {cpu:7.0f} per CPU-second ({1e6 / cpu:6.0f} us)")


def omniglot_sampler(data_root: Path) -> EpisodeSampler:
    cfg = Config(data=DataConfig(dataset="omniglot", n_way=20, k_shot=1, target_per_class=1))
    return make_episodes(cfg, "train", data_root)


def miniimagenet_sampler(tmp: Path) -> EpisodeSampler:
    """A generated mini-ImageNet-shaped cache written to `tmp` and read back (memory-mapped)."""
    os.environ["MAMLPP_CACHE"] = str(tmp)
    rng = np.random.default_rng(0)
    sets = {}
    for split, n in (("train", 64), ("val", 16), ("test", 20)):
        per_class = 100 if split == "train" else 20
        sets[split] = SplitImages.from_classes(
            [(f"n{c:08d}", rng.integers(0, 256, (per_class, 3, 84, 84), dtype=np.uint8)) for c in range(n)]
        )
    write_cache("miniimagenet", "bench", sets, "generated")
    cached = load_cache("miniimagenet", "bench")
    assert cached is not None
    cfg = Config(data=DataConfig(dataset="miniimagenet", n_way=5, k_shot=5, target_per_class=15))
    from mamlpp.data import TO_FLOAT

    return EpisodeSampler(cached["train"], "train", 0, 5, 5, 15, False, TO_FLOAT[cfg.data.dataset])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("MAMLPP_DATA", DEFAULT_ROOT)))
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, numpy {np.__version__}, 1 thread")
    rates = episodes_per_second(omniglot_sampler(args.data_root), 8, args.seconds)
    report("omniglot 20-way 1-shot, 1 target/class, batches of 8", rates)
    with tempfile.TemporaryDirectory() as tmp:
        rates = episodes_per_second(miniimagenet_sampler(Path(tmp)), 2, args.seconds)
    report("mini-imagenet 5-way 5-shot, 15 targets/class, batches of 2", rates)
    print("target: >= 2000 omniglot episodes/s")

if __name__ == "__main__":
    main()
