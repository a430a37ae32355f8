"""The one GPU session's script: correctness on CUDA, then speed. Writes what it measured to
stdout and to $OUT/gpu_results.txt (the device tool brings that file back).

    PYTHONPATH=. python3 benchmarks/gpu_check.py
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from mamlpp import model
from mamlpp.bench import SHAPES, BenchRow, analytic_gflop, format_rows, random_batch, time_engine
from mamlpp.learner import MetaLearner
from mamlpp.presets import get_preset, synthetic_config

OUT = Path(os.environ.get("OUT", "."))
LOG = open(OUT / "gpu_results.txt", "w")


def say(*parts: object) -> None:
    text = " ".join(str(p) for p in parts)
    print(text, flush=True)
    LOG.write(text + "\n")
    LOG.flush()


def check_folded_equals_loop_on_cuda() -> None:
    c = synthetic_config()
    batch = random_batch(replace(c, outer=replace(c.outer, meta_batch_size=3)), torch.Generator().manual_seed(0))
    grads = {}
    for engine in ("folded", "loop"):
        learner = MetaLearner(replace(c, engine=engine), device="cuda", dtype=torch.float64)
        loss = learner.meta_loss(batch, 0).loss
        grads[engine] = torch.autograd.grad(loss, list(learner.meta_parameters().values()))
    gap = max((a - b).abs().max().item() for a, b in zip(grads["folded"], grads["loop"]))
    say(f"[check] float64 CUDA folded vs loop: max |grad difference| = {gap:.2e}")


def check_graph_equals_eager() -> None:
    """Graphed vs eager losses, with cuDNN's TF32 convolutions on (torch's default) and off: if
    the gap closes without TF32, it is rounding from different conv algorithms, not a bug."""
    for tf32 in (True, False):
        torch.backends.cudnn.allow_tf32 = tf32
        say(f"[check] cudnn.allow_tf32={tf32}")
        _compare_graph_and_eager()
    torch.backends.cudnn.allow_tf32 = True


def _compare_graph_and_eager() -> None:
    from mamlpp.cuda_graph import GraphedTrainStep

    c = get_preset("omniglot_20way_1shot_mamlpp").config
    gen = torch.Generator().manual_seed(1)
    batches = [random_batch(c, gen) for _ in range(4)]
    eager = MetaLearner(c, device="cuda")
    graphed_learner = MetaLearner(c, device="cuda")
    graphed = GraphedTrainStep(graphed_learner)
    a = [eager.train_step(b, 0).loss for b in batches]
    b = [graphed(x, 0).loss for x in batches]
    say("[check] eager losses  ", [round(v, 5) for v in a])
    say("[check] graphed losses", [round(v, 5) for v in b])
    w = max((eager.params[k] - graphed_learner.params[k]).abs().max().item() for k in eager.params)
    say(f"[check] after 4 steps max |param difference| eager vs graphed = {w:.2e}")


def bench_rows() -> None:
    rows = []
    for shape in SHAPES:
        config = get_preset(SHAPES[shape]).config
        for engine in ("loop", "folded", "folded+graph"):
            t0 = time.time()
            try:
                graphed = engine == "folded+graph"
                variant = replace(config, engine="folded" if graphed else engine)
                s = time_engine(variant, "cuda", iterations=6, warmup=2, cuda_graph=graphed)
                rows.append(BenchRow(shape, engine, "cuda", s, analytic_gflop(config)))
            except Exception as e:  # report and go on: one failing variant must not cost the session
                say(f"[bench] {shape} {engine} FAILED: {type(e).__name__}: {e}")
            say(f"[bench] {shape} {engine} done in {time.time() - t0:.1f}s")
    say(format_rows(rows))


def bench_variants() -> None:
    config = get_preset("omniglot_20way_1shot_mamlpp").config
    for kernel in ("fused", "elementwise"):
        for fmt_name, fmt in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format)):
            model.BN_KERNEL, model.MEMORY_FORMAT = kernel, fmt  # type: ignore[assignment]
            for graphed in (True,):
                try:
                    s = time_engine(config, "cuda", iterations=6, warmup=2, cuda_graph=graphed)
                    say(f"[variant] omniglot-20way-1shot bn={kernel} layout={fmt_name} graph={graphed}: {s * 1000:.1f} ms/iter")
                except Exception as e:
                    say(f"[variant] bn={kernel} layout={fmt_name} graph={graphed} FAILED: {type(e).__name__}: {e}")
    model.BN_KERNEL, model.MEMORY_FORMAT = "fused", torch.contiguous_format


if __name__ == "__main__":
    say(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for step in (check_folded_equals_loop_on_cuda, check_graph_equals_eager, bench_rows, bench_variants):
        try:
            step()
        except Exception as e:
            say(f"[{step.__name__}] FAILED: {type(e).__name__}: {e}")
    sys.exit(0)
