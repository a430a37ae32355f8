"""`mamlpp bench`: seconds per outer iteration of the engine at the paper's shapes.

Each row trains MAML++ (second order, MSL on at epoch 0, so every step's target loss is
computed: the most expensive epoch) on random images of the paper's shapes, for the folded
(vectorised) engine and the per-task loop, and prints s/iteration, iterations/s, the analytic
GFLOP per iteration and the achieved GFLOP/s, and the loop/folded ratio.

Analytic FLOPs (convolutions and the head, multiply-add = 2): per task, F_s = support images x
steps and F_t = target images x steps of one forward each; the forward graph holds the support
forwards, their input/weight backward (2 F_s) and the target forwards; the second-order outer
backward costs about twice that graph. Total ~ 3 (3 F_s + F_t) per task.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import click
import torch

from mamlpp.config import Config, apply_overrides, validate
from mamlpp.data.batch import TaskBatch
from mamlpp.engine.learner import MetaLearner
from mamlpp.engine.model import NetSpec, conv_flops_per_image
from mamlpp.errors import MamlppError
from mamlpp.kernels import DEFAULT as DEFAULT_KERNELS
from mamlpp.kernels import KernelOptions
from mamlpp.presets import get_preset

SHAPES = {
    "omniglot-20way-1shot": "omniglot_20way_1shot_mamlpp",
    "omniglot-5way-1shot": "omniglot_5way_1shot_mamlpp",
    "miniimagenet-5way-1shot": "miniimagenet_5way_1shot_mamlpp",
}


@dataclass
class BenchRow:
    shape: str
    engine: str
    device: str
    seconds_per_iteration: float
    """Of one seed's outer iteration: with `seeds` > 1, the joint step's time / seeds."""
    gflop_per_iteration: float
    seeds: int = 1

    @property
    def iterations_per_second(self) -> float:
        return 1.0 / self.seconds_per_iteration

    @property
    def gflops(self) -> float:
        return self.gflop_per_iteration / self.seconds_per_iteration


def analytic_gflop(config: Config) -> float:
    """Estimated GFLOP of one second-order outer iteration with every step's target loss."""
    per_image = conv_flops_per_image(NetSpec.from_config(config))
    d, steps = config.data, config.inner.steps
    support = per_image * d.n_way * d.k_shot * steps
    target = per_image * d.n_way * d.target_per_class * steps
    return 3 * (3 * support + target) * config.outer.meta_batch_size / 1e9


def random_batch(config: Config, generator: torch.Generator) -> TaskBatch:
    d, b = config.data, config.outer.meta_batch_size
    image = (config.in_channels, config.image_size, config.image_size)
    labels = torch.arange(d.n_way)
    return TaskBatch(
        torch.rand(b, d.n_way * d.k_shot, *image, generator=generator),
        labels.repeat_interleave(d.k_shot).repeat(b, 1),
        torch.rand(b, d.n_way * d.target_per_class, *image, generator=generator),
        labels.repeat_interleave(d.target_per_class).repeat(b, 1),
    )


def time_engine(
    config: Config,
    device: str,
    iterations: int,
    warmup: int,
    cuda_graph: bool = False,
    kernel_options: KernelOptions = DEFAULT_KERNELS,
    seeds: int = 1,
) -> float:
    """Median seconds per outer iteration at epoch 0 (every MSL step computed). With `seeds`
    > 1, seeds 0..S-1 of `config` train as one folded step (`mamlpp.engine.seeds.SeedStack`),
    each on its own meta-batch, and the result is the joint step's median / S."""
    generator = torch.Generator().manual_seed(0)
    step: Callable[[TaskBatch, int], object]
    if seeds == 1:
        learner = MetaLearner(config, device, kernel_options=kernel_options, capturable=cuda_graph)
        step = learner.train_step
        if cuda_graph:
            from mamlpp.engine.cuda_graph import GraphedTrainStep

            step = GraphedTrainStep(learner)
        batch = random_batch(config, generator).to(device)
    else:
        from mamlpp.engine.seeds import GraphedSeedStep, SeedStack

        configs = [replace(config, seed=s) for s in range(seeds)]
        stack = SeedStack(configs, device, kernel_options=kernel_options, capturable=cuda_graph)
        step = GraphedSeedStep(stack) if cuda_graph else stack.train_step  # type: ignore[assignment]
        batch = stack.join([random_batch(config, generator) for _ in range(seeds)]).to(device)
    return time_calls(step, batch, device, iterations, warmup) / seeds


def time_calls(
    step: Callable[[TaskBatch, int], object], batch: TaskBatch, device: str, iterations: int,
    warmup: int,
) -> float:  # fmt: skip
    """Median seconds of `step(batch, 0)` over `iterations` calls after `warmup` untimed ones,
    the device synchronised around each."""
    times = []
    for i in range(warmup + iterations):
        _synchronize(device)
        start = time.perf_counter()
        step(batch, 0)
        _synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_benchmark(
    shapes: list[str], engines: list[str], devices: list[str], iterations: int, warmup: int,
    overrides: Sequence[str] = (), seeds: int = 1,
) -> list[BenchRow]:  # fmt: skip
    """One row per (shape, device, engine); `overrides`: `--set` values applied to every
    shape's preset; `seeds`: seeds per folded step (`time_engine`)."""
    # every shape's config checked (ranges too) before the first row is timed
    configs = {
        s: validate(apply_overrides(get_preset(SHAPES[s]).config, list(overrides))) for s in shapes
    }
    rows = []
    for shape, config in configs.items():
        for device in devices:
            for engine in engines:
                graphed = engine == "folded+graph"
                if graphed and not device.startswith("cuda"):
                    continue
                if seeds > 1 and engine == "loop":
                    continue  # seeds are trained together by the folded engine only
                variant = replace(config, engine="folded" if graphed else engine)  # type: ignore[arg-type]
                seconds = time_engine(variant, device, iterations, warmup, graphed, seeds=seeds)
                rows.append(BenchRow(shape, engine, device, seconds, analytic_gflop(config), seeds))
    return rows


def format_rows(rows: list[BenchRow]) -> str:
    import pandas as pd

    table = pd.DataFrame(
        {
            "shape": r.shape,
            "device": r.device,
            "engine": r.engine,
            "seeds": r.seeds,
            "s/iter": round(r.seconds_per_iteration, 4),
            "iter/s": round(r.iterations_per_second, 2),
            "GFLOP/iter": round(r.gflop_per_iteration, 1),
            "GFLOP/s": round(r.gflops, 1),
        }
        for r in rows
    )
    ratios = [
        f"{s} on {d}: loop / folded = {_ratio(rows, s, d):.2f}x"
        for s in dict.fromkeys(r.shape for r in rows)
        for d in dict.fromkeys(r.device for r in rows)
        if _ratio(rows, s, d) is not None
    ]
    return table.to_string(index=False) + ("\n" + "\n".join(ratios) if ratios else "")


def _ratio(rows: list[BenchRow], shape: str, device: str) -> float | None:
    by_engine = {r.engine: r for r in rows if r.shape == shape and r.device == device}
    if {"folded", "loop"} <= set(by_engine):
        return by_engine["loop"].seconds_per_iteration / by_engine["folded"].seconds_per_iteration
    return None


def check_device(device: str) -> str:
    """`device` when this machine has it: cpu, cuda or cuda:N; MamlppError naming the fix."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise MamlppError(
            f"--device {device!r} is not a device bench times; use cpu, cuda or cuda:N"
        )
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise MamlppError(
            f"--device {device} was asked for but no CUDA GPU is visible; use --device cpu"
        )
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise MamlppError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
            "numbered from 0"
        )
    return device


@click.command()
@click.option("--shape", "shapes", multiple=True, type=click.Choice(list(SHAPES)),
              help="Paper shape(s) to time; default: all three.")
@click.option("--engine", "engines", multiple=True,
              type=click.Choice(["folded", "loop", "folded+graph"]),
              help="Engine(s); default: folded and loop, plus folded+graph (CUDA graphs: what training uses on CUDA) on CUDA.")
@click.option("--device", "devices", multiple=True,
              help="Device(s), e.g. cpu, cuda; default: cpu, plus cuda when present.")
@click.option("--iterations", default=5, show_default=True, type=click.IntRange(min=1),
              help="Timed iterations per row.")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0),
              help="Untimed iterations first.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Change one config field of every shape, e.g. --set tf32_matmul=true.")
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(min=1),
              help="Seeds trained together as one folded step; s/iter is then per seed.")
def bench(shapes: tuple[str, ...], engines: tuple[str, ...], devices: tuple[str, ...],
          iterations: int, warmup: int, overrides: tuple[str, ...], seeds: int) -> None:  # fmt: skip
    """Time one outer iteration (2nd order, MSL on, meta-batch as in the paper) per engine.

    \b
    Example:
      mamlpp bench --shape omniglot-5way-1shot --device cpu
      mamlpp bench --device cuda --engine folded+graph --seeds 3 --set tf32_matmul=true
    """
    default_devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = run_benchmark(
        list(shapes) or list(SHAPES),
        list(engines) or ["folded", "loop", "folded+graph"],
        [check_device(d) for d in devices] or default_devices,
        iterations,
        warmup,
        overrides,
        seeds,
    )
    click.echo(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
               + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))  # fmt: skip
    click.echo(format_rows(rows))
