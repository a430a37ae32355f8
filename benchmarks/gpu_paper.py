"""A lent GPU's session for the paper-scale goal, in one command of under 10 minutes: is the
CUDA-graph step exact (one seed and several seeds per step), the three paper shapes' ms per
iteration (the default, TF32 matmuls, three seeds per step), TF32 matmuls' numerical effect,
the Triton batch norm against torch's (benchmarks/triton_bn_bench.py), the CPU's kernels on
CUDA (first stage as a matmul, pooling by gather, channels-last), then the paper-scale Omniglot 5-way 1-shot MAML++ run (seed 0) for the rest of the budget:
`mamlpp train ... --time-limit`, resumed from the state an earlier session brought back.
Results: benchmarks/RESULTS.md#gpu; the run's files: results/.

Prepare here, once (the GPU machine has no internet and starts bare every session; .gitignore
ignores both folders):

    mkdir -p .gpu_data/omniglot && cp <data root>/omniglot/*.zip .gpu_data/omniglot/
    MAMLPP_CACHE=.gpu_data/cache .venv/bin/mamlpp data prepare omniglot --root .gpu_data

Run with the device tool (carry `.gpu_data` and, from the second session on, `.gpu_runs`;
timeout_s 600):

    PYTHONUNBUFFERED=1 MAMLPP_DATA=.gpu_data MAMLPP_CACHE=.gpu_data/cache \\
      PYTHONPATH=. python3 benchmarks/gpu_paper.py --budget 570

What comes back under $OUT: gpu_results.txt (everything said), results/config.json,
results/metrics.jsonl, results/test.json (once the run is finished), results/train.txt (the
command, the card and the run's output), and run_state.tar.gz: the run directory (W&B files
left out). Unpack it into .gpu_runs/ (`mkdir -p .gpu_runs && tar xzf run_state.tar.gz -C
.gpu_runs`) and carry .gpu_runs next time: the same command resumes the run where it stopped.

`--dry-run` runs the same plumbing on the CPU with a tiny synthetic run
(tests/test_gpu_paper_script.py), so a GPU session never finds a broken script.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from gpu_check import compare, four_steps
from gpu_session import OUT, run_parts, session_log

from mamlpp.bench import SHAPES, format_rows, random_batch, run_benchmark, time_calls
from mamlpp.config import Config, apply_overrides
from mamlpp.data.batch import TaskBatch
from mamlpp.engine.cuda_graph import GraphedTrainStep
from mamlpp.engine.learner import MetaLearner
from mamlpp.engine.model import PLAIN, Kernels, NetSpec
from mamlpp.engine.seeds import GraphedSeedStep, SeedStack
from mamlpp.kernels import choose, cpu, folded_bn
from mamlpp.presets import get_preset
from mamlpp.runs.resolve import run_name

say = session_log("gpu_results.txt")

PRESET = "omniglot_5way_1shot_mamlpp"
RESERVE_S = 30.0
"""Seconds of the budget kept for packing the run's files after it stops."""
PRE_PAPER_CAP_S = 300.0
"""The checks and benchmarks are skipped once this much of the session has gone, so the run
keeps most of the budget."""
DRY_OVERRIDES = [
    "data.dataset=synthetic", "model.filters=8", "inner.steps=2", "inner.eval_steps=2",
    "outer.meta_batch_size=2", "schedule.epochs=4", "schedule.iterations_per_epoch=3",
    "schedule.val_tasks=4", "schedule.test_tasks=4", "schedule.ensemble_top_k=2",
]  # fmt: skip
"""The dry run's tiny synthetic run (as tests/support/tiny.py's TINY_RUN_OVERRIDES)."""


# ---------------------------------------------------------------------- exactness


def _max_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def exactness() -> None:
    """float64, Omniglot 20-way 1-shot MAML++, 4 updates on fixed random batches: the graph
    replay against the eager step with the same (capturable) Adam, for one seed
    (`GraphedTrainStep`) and for three seeds per step (`GraphedSeedStep`). Exact means ~1e-15."""
    eager = four_steps(False, torch.float64, True, capturable=True)
    compare("one seed, float64, graph vs eager (capturable Adam both)",
            four_steps(True, torch.float64, True), eager)  # fmt: skip

    c = get_preset("omniglot_20way_1shot_mamlpp").config
    gen = torch.Generator().manual_seed(1)
    configs = [replace(c, seed=s) for s in range(3)]
    seed_batches: list[TaskBatch] = [random_batch(c, gen) for _ in range(3 * 4)]
    stacks = {}
    for graphed in (False, True):
        stack = SeedStack(configs, "cuda", torch.float64, capturable=True)
        step = GraphedSeedStep(stack) if graphed else stack.train_step
        for i in range(4):
            step(stack.join(seed_batches[3 * i : 3 * i + 3]), 0)
        stacks[graphed] = {k: v.detach() for k, v in stack.meta_parameters().items()}
    say(f"[exact] three seeds per step, float64, graph vs eager: max |parameter gap| after 4 "
        f"updates {_max_gap(stacks[True], stacks[False]):.1e}")  # fmt: skip


# ---------------------------------------------------------------------- speed


def bench(dry: bool) -> None:
    """ms per outer iteration of the three paper shapes, graph step: the default; TF32 matmuls;
    three seeds per step (per seed)."""
    device, engine = ("cpu", "folded") if dry else ("cuda", "folded+graph")
    shapes = ["omniglot-5way-1shot"] if dry else list(SHAPES)
    tiny = ["model.filters=4", "inner.steps=1"] if dry else []
    iterations, warmup = (1, 0) if dry else (10, 3)
    variants = {"default": ([], 1), "tf32_matmul": (["tf32_matmul=true"], 1), "3 seeds": ([], 3)}
    for name, (overrides, seeds) in variants.items():
        rows = run_benchmark(shapes, [engine], [device], iterations, warmup, [*tiny, *overrides], seeds)
        say(f"[bench] {name} (--set {' '.join(overrides) or '-'}, --seeds {seeds}):\n{format_rows(rows)}")


def kernel_variants(dry: bool) -> None:
    """The CPU's kernels on CUDA, Omniglot shapes, graph step: the first stage as one matmul
    with patches prepared once per batch (and pooling by gather), pooling by gather alone,
    activations channels-last; each against CUDA's choice (`mamlpp.kernels.choose`), in ms per
    iteration, with its float64 meta-gradient gap to the plain kernels (exact: ~1e-15). The dry
    run: tiny, eager, on the CPU."""
    device = "cpu" if dry else "cuda"
    for shape in ("omniglot-20way-1shot", "omniglot-5way-1shot"):
        config = get_preset(SHAPES[shape]).config
        if dry:
            config = apply_overrides(config, ["model.filters=4", "inner.steps=1", "outer.meta_batch_size=2"])
        chosen = choose(torch.device(device), NetSpec.from_config(config))
        gather = cpu.max_pool_by_gather
        variants = {
            f"{device}'s choice ({chosen.name})": chosen,
            "first stage as matmul + pool by gather": Kernels(
                "matmul", cpu.prepare_patch_windows, cpu.first_stage_matmul, gather
            ),
            "pool by gather": replace(
                chosen, first_stage=folded_bn.first_stage_with(gather), max_pool=gather
            ),
            "channels-last": replace(chosen, memory_format=torch.channels_last),
        }
        batch = random_batch(config, torch.Generator().manual_seed(3))
        reference = _meta_gradients(config, PLAIN, batch, device)
        for name, kernels in variants.items():
            gap = _max_gap(_meta_gradients(config, kernels, batch, device), reference)
            learner = MetaLearner(config, device, capturable=not dry)
            learner.kernels = kernels
            step = learner.train_step if dry else GraphedTrainStep(learner)
            ms = 1e3 * time_calls(step, batch.to(device), device, *((1, 0) if dry else (10, 3)))
            kind = "eager" if dry else "graph"
            say(f"[kernels] {shape} {name}: {ms:.1f} ms/iteration ({kind}); float64 gap {gap:.1e}")


def _meta_gradients(
    config: Config, kernels: Kernels, batch: TaskBatch, device: str
) -> dict[str, torch.Tensor]:
    learner = MetaLearner(config, device, torch.float64)
    learner.kernels = kernels
    loss = learner.meta_loss(batch, 0).loss
    names = list(learner.meta_parameters())
    grads = torch.autograd.grad(loss, list(learner.meta_parameters().values()), allow_unused=True)
    return {k: g for k, g in zip(names, grads, strict=True) if g is not None}


def triton_batch_norm() -> None:
    """benchmarks/triton_bn_bench.py (the Triton batch norm against torch's, three shapes, eager
    and graph, and its float32 gap), its output into this log."""
    done = subprocess.run(
        [sys.executable, "benchmarks/triton_bn_bench.py"], capture_output=True, text=True, timeout=240
    )
    for line in (done.stdout + done.stderr[-2000:]).splitlines():
        say(f"[triton] {line}")
    say(f"[triton] exit {done.returncode}")


def tf32_effect() -> None:
    """TF32 matmuls' numerical effect next to TF32 convolutions' (torch's default): float32
    losses and parameters of 4 graphed updates against float64, Omniglot 20-way 1-shot."""
    reference = four_steps(True, torch.float64, True)
    compare("TF32 effect: float32, no TF32, vs float64", four_steps(True, torch.float32, False), reference)
    compare("TF32 effect: float32, TF32 convolutions (default), vs float64",
            four_steps(True, torch.float32, True), reference)  # fmt: skip
    compare("TF32 effect: float32, TF32 convolutions and matmuls, vs float64",
            four_steps(True, torch.float32, True, tf32_matmul=True), reference)  # fmt: skip


# ---------------------------------------------------------------------- the paper-scale run


def paper(dry: bool, runs: Path, minutes: float) -> None:
    """The run for `minutes` (`--time-limit`), its output streamed to the log; then its files
    under $OUT/results and the run directory in $OUT/run_state.tar.gz."""
    scale, device = ("smoke", "cpu") if dry else ("paper", "cuda")
    sets = [a for o in DRY_OVERRIDES for a in ("--set", o)] if dry else []
    cmd = [
        sys.executable, "-m", "mamlpp.cli", "train", "--preset", PRESET, "--seed", "0",
        "--scale", scale, "--device", device, "--wandb", "off", "--no-progress",
        "--runs-dir", str(runs), "--time-limit", f"{minutes:.2f}", *sets,
    ]  # fmt: skip
    results = OUT / "results"
    results.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (dry run)"
    header = [
        f"command: mamlpp {' '.join(cmd[3:])}",
        f"card: {card}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
    ]
    say("\n".join(header))
    start = time.time()
    with open(results / "train.txt", "w") as log:
        log.write("\n".join(header) + "\n")
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            say(f"[paper] {line.rstrip()}")
        code = process.wait()
        log.write(f"exit {code} after {time.time() - start:.0f} s\n")
    say(f"[paper] exit {code} after {time.time() - start:.0f} s (75: stopped at the time limit)")
    run_dir = runs / run_name(PRESET, DRY_OVERRIDES if dry else [], 0, scale)
    for name in ("config.json", "metrics.jsonl", "test.json"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, results / name)
    if run_dir.exists():
        with tarfile.open(OUT / "run_state.tar.gz", "w:gz") as tar:
            tar.add(run_dir, arcname=run_dir.name, filter=lambda t: None if "/wandb" in t.name else t)
        size = (OUT / "run_state.tar.gz").stat().st_size / 2**20
        say(f"[paper] run state: $OUT/run_state.tar.gz ({size:.1f} MiB), {len(_metrics_lines(run_dir))} epochs done")


def _metrics_lines(run_dir: Path) -> list[str]:
    path = run_dir / "metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=570.0, help="seconds for the whole script")
    parser.add_argument("--runs-dir", type=Path, default=Path(".gpu_runs"))
    parser.add_argument("--dry-run", action="store_true", help="the plumbing on the CPU, tiny")
    parser.add_argument("parts", nargs="*", help="exact bench tf32 triton kernels paper (default: all)")
    args = parser.parse_args()
    start = time.time()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_paper.py needs a CUDA GPU (or --dry-run)")
    say(f"gpu_paper.py: {torch.cuda.get_device_name() if not args.dry_run else 'dry run on the CPU'}, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, budget {args.budget:.0f} s")  # fmt: skip

    def early(part: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            if args.dry_run:
                say("[skip] needs CUDA: not in a dry run")
            elif time.time() - start > PRE_PAPER_CAP_S:
                say(f"[skip] {PRE_PAPER_CAP_S:.0f} s gone: the time is left to the run")
            else:
                part()

        return run

    def the_run() -> None:
        minutes = max(args.budget - (time.time() - start) - RESERVE_S, 0.1) / 60
        paper(args.dry_run, args.runs_dir.resolve(), minutes)

    parts = {
        "exact": early(exactness),
        "bench": (lambda: bench(True)) if args.dry_run else early(lambda: bench(False)),
        "tf32": early(tf32_effect),
        "triton": early(triton_batch_norm),
        "kernels": (lambda: kernel_variants(True)) if args.dry_run else early(lambda: kernel_variants(False)),
        "paper": the_run,
    }
    run_parts(parts, args.parts, say)
    say(f"gpu_paper.py done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
