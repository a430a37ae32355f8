"""The data-on-device check for a GPU session: are the device sampler's batches the host
sampler's, bit for bit, and how much faster is sampling on the GPU than sampling on the host and
copying, alone and inside a training iteration? Writes what it measured to stdout and to
$OUT/gpu_data.txt (the device tool brings that file back). About a minute on an H200.

    PYTHONPATH=. python3 benchmarks/gpu_data.py               # everything
    PYTHONPATH=. python3 benchmarks/gpu_data.py exact sample  # a subset: exact, sample, step

`exact` and `sample` use Omniglot under $MAMLPP_DATA (the official zips; carry them and the cache
as benchmarks/gpu_check.py describes) and the synthetic data; rows whose data is missing say so
and are skipped. "host" is `make_episodes(..., device="cpu")` (bit-identical to the sampler before
the images moved to the device) followed by `.to("cuda")`, what a run did per iteration before;
"device" is `make_episodes(..., device="cuda")`. Each batch is followed by a synchronisation, as a
training iteration reads its loss.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
from gpu_session import run_parts, session_log

from mamlpp.config import Config
from mamlpp.data import make_episodes
from mamlpp.data.batch import TaskBatch
from mamlpp.data.episodes import EpisodeSampler
from mamlpp.errors import MamlppError
from mamlpp.presets import get_preset, synthetic_config

say = session_log("gpu_data.txt")
CUDA = torch.device("cuda")


def configs() -> dict[str, Config]:
    return {
        "omniglot 5-way 1-shot": get_preset("omniglot_5way_1shot_mamlpp").config,
        "omniglot 20-way 1-shot": get_preset("omniglot_20way_1shot_mamlpp").config,
        "synthetic 5-way 1-shot": synthetic_config(),
    }


def samplers(config: Config, split: str) -> tuple[EpisodeSampler, EpisodeSampler] | None:
    try:
        host = make_episodes(config, split)  # type: ignore[arg-type]
        return host, make_episodes(config, split, device=CUDA)  # type: ignore[arg-type]
    except MamlppError as e:
        say(f"  skipped ({e})")
        return None


def exact() -> None:
    """Device batches brought back to the CPU equal the host batches exactly."""
    for name, config in configs().items():
        for split in ("train", "val", "test"):
            pair = samplers(config, split)
            if pair is None:
                break
            host, device = pair
            same = True
            for indices in (range(8), [0, 5000, 123456], range(600)):
                a, b = host.batch(indices), device.batch(indices)
                same &= all(x.device.type == CUDA.type for x in b)
                same &= all(torch.equal(x, y.cpu()) for x, y in zip(a, b, strict=True))
            say(f"[exact] {name} {split}: device batches == host batches: {same}")


def ms_per_batch(make: Callable[[range], TaskBatch], chunks: list[range], repeats: int = 3) -> float:
    for chunk in chunks[:3]:
        make(chunk)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for chunk in chunks:
            make(chunk)
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) * 1e3 / len(chunks))
    return best


def sample() -> None:
    """Wall ms per batch: host sampling + copy against device sampling."""
    for name, config in configs().items():
        for split, size, count in (("train", 8, 100), ("val", 8, 75), ("val", 600, 1)):
            pair = samplers(config, split)
            if pair is None:
                break
            host, device = pair
            chunks = [range(t * size, (t + 1) * size) for t in range(count)]
            old = ms_per_batch(lambda c, host=host: host.batch(c).to(CUDA, torch.float32), chunks)
            new = ms_per_batch(device.batch, chunks)
            say(
                f"[sample] {name} {split} batches of {size:>3}: host+copy {old:7.3f} ms, "
                f"device {new:7.3f} ms, x{old / new:5.2f}"
            )


def step() -> None:
    """Wall ms per training iteration (the CUDA-graph step, as a run trains) fed by each sampler."""
    from mamlpp.engine import cuda_graph
    from mamlpp.engine.learner import MetaLearner

    for name, config in configs().items():
        pair = samplers(config, "train")
        if pair is None:
            continue
        b = config.outer.meta_batch_size
        for label, sampler in zip(("host+copy", "device"), pair, strict=True):
            torch.manual_seed(config.seed)
            capturable = cuda_graph.applies(config, CUDA)
            learner = MetaLearner(config, str(CUDA), capturable=capturable)
            train_step = cuda_graph.training_step(learner)
            for t in range(20):
                train_step(sampler.batch(range(t * b, (t + 1) * b)), 0)
            torch.cuda.synchronize()
            start, n = time.perf_counter(), 200
            for t in range(20, 20 + n):
                train_step(sampler.batch(range(t * b, (t + 1) * b)), 0)  # reads the loss: syncs
            torch.cuda.synchronize()
            say(f"[step] {name}: {label:>9} sampler, {(time.perf_counter() - start) * 1e3 / n:6.2f} ms per iteration")


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_data.py needs a CUDA GPU")
    say(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    steps = {"exact": exact, "sample": sample, "step": step}
    run_parts(steps, sys.argv[1:], say)


if __name__ == "__main__":
    main()
