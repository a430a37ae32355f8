"""A GPU session's script: is the CUDA-graph step exact, how fast is it, and does training
through it (the default on CUDA) reach the same accuracy as eager training? Writes what it
measured to stdout and to $OUT/gpu_results.txt (the device tool brings that file back).
Results: benchmarks/RESULTS.md#gpu.

    PYTHONPATH=. python3 benchmarks/gpu_check.py            # everything (a few minutes on an H200)
    PYTHONPATH=. python3 benchmarks/gpu_check.py check bench  # a subset: check, bench, train

`train` needs Omniglot under $MAMLPP_DATA (the official zips). On a machine without the data,
copy <data root>/omniglot/*.zip (and ~/.cache/mamlpp, to skip the cache build) into a
git-ignored `.gpu_data/` folder, take it along, and run with
`MAMLPP_DATA=.gpu_data MAMLPP_CACHE=.gpu_data/cache`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from gpu_session import OUT, run_parts, session_log

from mamlpp.bench import SHAPES, BenchRow, analytic_gflop, format_rows, random_batch, time_engine
from mamlpp.engine.cuda_graph import GraphedTrainStep
from mamlpp.engine.learner import MetaLearner
from mamlpp.presets import get_preset

say = session_log("gpu_results.txt")


def four_steps(
    graphed: bool, dtype: torch.dtype, tf32: bool, tf32_matmul: bool = False,
    capturable: bool | None = None,
) -> tuple[list[float], dict[str, torch.Tensor]]:  # fmt: skip
    """Losses of 4 outer updates on fixed random Omniglot 20-way 1-shot batches, and the
    parameters after them (same init: the config's seed). `tf32`: cuDNN's TF32 convolutions;
    `tf32_matmul`: the config's TF32 matmuls; `capturable`: the graph's Adam (default: only
    when `graphed`)."""
    torch.backends.cudnn.allow_tf32 = tf32
    c = replace(get_preset("omniglot_20way_1shot_mamlpp").config, tf32_matmul=tf32_matmul)
    gen = torch.Generator().manual_seed(1)
    batches = [random_batch(c, gen) for _ in range(4)]
    capturable = graphed if capturable is None else capturable
    learner = MetaLearner(c, device="cuda", dtype=dtype, capturable=capturable)
    step = GraphedTrainStep(learner) if graphed else learner.train_step
    losses = [step(b, 0).loss for b in batches]
    torch.backends.cudnn.allow_tf32 = True
    return losses, {k: v.detach().double() for k, v in learner.meta_parameters().items()}


def compare(name: str, a: tuple[list[float], dict], b: tuple[list[float], dict]) -> None:
    loss_gap = max(abs(x - y) / abs(y) for x, y in zip(a[0], b[0]))
    param_gap = max((a[1][k] - b[1][k]).abs().max().item() for k in a[1])
    say(f"[check] {name}: max relative loss gap {loss_gap:.2e}, max |param gap| after 4 updates {param_gap:.2e}")
    say(f"        losses {[round(v, 6) for v in a[0]]} vs {[round(v, 6) for v in b[0]]}")


def check_folded_equals_loop() -> None:
    """The folded engine (first-layer batch norm folded into its convolution) against the
    per-task loop, float64 on CUDA: loss and every meta-gradient."""
    from mamlpp.presets import synthetic_config

    c = synthetic_config()
    batch = random_batch(replace(c, outer=replace(c.outer, meta_batch_size=3)), torch.Generator().manual_seed(0))
    grads = {}
    for engine in ("folded", "loop"):
        learner = MetaLearner(replace(c, engine=engine), device="cuda", dtype=torch.float64)
        loss = learner.meta_loss(batch, 0).loss
        grads[engine] = torch.autograd.grad(loss, list(learner.meta_parameters().values()))
    gap = max((a - b).abs().max().item() for a, b in zip(grads["folded"], grads["loop"]))
    say(f"[check] float64 CUDA folded vs loop: max |meta-gradient difference| = {gap:.2e}")


def check() -> None:
    """float64 decides whether the graph computes the same thing (no TF32, ~1e-16 rounding);
    the float32 rows show how far ordinary rounding moves 4 Adam updates, for comparison."""
    check_folded_equals_loop()
    e64, g64 = four_steps(False, torch.float64, True), four_steps(True, torch.float64, True)
    compare("float64 graphed vs eager", g64, e64)
    e32, g32 = four_steps(False, torch.float32, True), four_steps(True, torch.float32, True)
    e32_off, g32_off = four_steps(False, torch.float32, False), four_steps(True, torch.float32, False)
    compare("float32 graphed vs eager (TF32 convs on, torch's default)", g32, e32)
    compare("float32 graphed vs eager (TF32 off)", g32_off, e32_off)
    compare("float32 eager TF32 on vs eager TF32 off (rounding alone, no graph)", e32, e32_off)
    compare("float32 eager vs float64 eager", e32, e64)
    compare("float32 graphed vs float64 eager", g32, e64)


def bench() -> None:
    rows = []
    for shape in SHAPES:
        config = get_preset(SHAPES[shape]).config
        for engine in ("folded", "folded+graph"):
            graphed = engine == "folded+graph"
            variant = replace(config, engine="folded")
            s = time_engine(variant, "cuda", iterations=10, warmup=3, cuda_graph=graphed)
            rows.append(BenchRow(shape, engine, "cuda", s, analytic_gflop(config)))
            say(f"[bench] {shape} {engine}: {s * 1000:.1f} ms/iter")
    say(format_rows(rows))


def train() -> None:
    """The README's main job on the GPU, through the default path (CUDA graph) and eagerly."""
    for name, extra in (("graph", []), ("eager", ["--set", "cuda_graph=false"])):
        runs = Path("/tmp/gpu_runs") / name
        shutil.rmtree(runs, ignore_errors=True)
        cmd = [sys.executable, "-m", "mamlpp.cli", "train", "--preset", "omniglot_5way_1shot_mamlpp",
               "--scale", "smoke", "--seed", "0", "--device", "cuda", "--wandb", "off",
               "--no-progress", "--runs-dir", str(runs), *extra]  # fmt: skip
        start = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.time() - start
        say(f"[train] {name}: exit {done.returncode} in {seconds:.0f} s: {' '.join(cmd[2:])}")
        say("\n".join(done.stdout.splitlines()[-14:]), "\n", done.stderr[-1500:])
        for run_dir in runs.glob("*"):
            for f in ("test.json", "metrics.jsonl"):
                if (run_dir / f).exists():
                    shutil.copy(run_dir / f, OUT / f"{name}_{f}")
            if (run_dir / "test.json").exists():
                result = json.loads((run_dir / "test.json").read_text())
                say(f"[train] {name}: test accuracy {result['accuracy']:.4f} +- {result['ci95']:.4f}")


if __name__ == "__main__":
    say(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    steps = {"check": check, "bench": bench, "train": train}
    run_parts(steps, sys.argv[1:], say)
    sys.exit(0)
