"""Sampling cost on one CPU core: the device sampler against a host sampler (a benchmark, not a
test).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_data.py [--data-root /path/to/data] [--seconds 3]

Each row times meta-batches of the given tasks from the cache, with the host sampler
(tests/support/host_sampler.py: episodes planned one at a time, numpy gathers) and with
`make_episodes(..., device="cpu")` (episodes of a batch planned at once, one torch gather and one
float conversion); both give the same tasks bit for bit (tests/test_data_device.py). Omniglot
rows use the real Omniglot under the data root (--data-root, else $MAMLPP_DATA, else ./data):
training batches of 8 tasks (rotated classes), and a 600-task validation pass in chunks of 8 (the
default schedule.eval_batch_size) or as one batch of 600. mini-ImageNet 5-way 5-shot with 15
targets uses generated images (64 training classes x 100 images of 3x84x84; the cost per episode
does not depend on the images per class) written to and read back from a temporary cache, batches
of 2 as in training. Times are CPU seconds of this process per batch (fairer than wall time on a
shared machine: they do not count time other processes ran). On a GPU: benchmarks/gpu_data.py.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from mamlpp.config import Config, DataConfig
from mamlpp.data import TO_FLOAT, make_episodes, resolve_data_root
from mamlpp.data.batch import TaskBatch
from mamlpp.data.cache import SplitImages, load_cache, write_cache
from mamlpp.data.episodes import EpisodeSampler
from tests.support.host_sampler import HostSampler

Batches = Callable[[Sequence[int]], TaskBatch]


def ms_per_call(batch: Batches, chunks: list[range], seconds: float) -> tuple[float, float]:
    """(CPU ms, wall ms) per pass over `chunks`, repeated for at least `seconds` of wall time."""
    for chunk in chunks[:2]:
        batch(chunk)  # warm up (page cache, allocator)
    passes = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while passes == 0 or time.perf_counter() - wall < seconds:
        for chunk in chunks:
            batch(chunk)
        passes += 1
    return (
        (time.process_time() - cpu) * 1e3 / passes,
        (time.perf_counter() - wall) * 1e3 / passes,
    )


def compare(
    label: str, sampler: EpisodeSampler, dataset: str, chunks: list[range], seconds: float,
    per_batch: bool = True,
) -> None:  # fmt: skip
    """One row: CPU ms per batch (per_batch) or per pass over all chunks, host vs device."""
    host = HostSampler(sampler, dataset)
    old = ms_per_call(host.batch, chunks, seconds)
    new = ms_per_call(sampler.batch, chunks, seconds)
    per = len(chunks) if per_batch else 1
    tasks = sum(len(c) for c in chunks)
    print(
        f"{label:<53} {'batch' if per_batch else 'pass':>5}: host {old[0] / per:7.2f} ms, "
        f"device(cpu) {new[0] / per:7.2f} ms, x{old[0] / new[0]:4.2f} ({1e3 * new[0] / tasks:4.0f} "
        f"us/task; wall {old[1] / per:.2f} -> {new[1] / per:.2f} ms)"
    )


def omniglot(data_root: Path, n_way: int, split: str) -> EpisodeSampler:
    cfg = Config(data=DataConfig(dataset="omniglot", n_way=n_way, k_shot=1, target_per_class=1))
    return make_episodes(cfg, split, data_root)  # type: ignore[arg-type]


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
    return EpisodeSampler(cached["train"], "train", 0, 5, 5, 15, False, TO_FLOAT["miniimagenet"])


def batches(size: int, count: int) -> list[range]:
    return [range(t * size, (t + 1) * size) for t in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    root = resolve_data_root(args.data_root)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, numpy {np.__version__}, 1 thread; CPU ms")
    for n_way in (5, 20):
        train = omniglot(root, n_way, "train")
        compare(f"omniglot {n_way}-way 1-shot train, B=8", train, "omniglot", batches(8, 20), args.seconds)
    val = omniglot(root, 5, "val")
    for size in (8, 600):
        label = f"omniglot 5-way 1-shot val, 600 tasks in batches of {size}"
        compare(label, val, "omniglot", batches(size, 600 // size), args.seconds, per_batch=False)
    with tempfile.TemporaryDirectory() as tmp:
        mini = miniimagenet_sampler(Path(tmp))
        compare("mini-imagenet 5-way 5-shot 15 targets train, B=2", mini, "miniimagenet", batches(2, 20), args.seconds)


if __name__ == "__main__":
    main()
