"""Where do the CUDA-graph step and eager train_step part ways? (float64 on CUDA)

    PYTHONPATH=. python3 benchmarks/gpu_diag.py [PRESET]   # ~20 s on an H200; $OUT/gpu_diag.txt

A: the capturable Adam that graphs need, run eagerly without a graph, vs torch's default Adam.
G: at every update along the graph's own trajectory, eager gradients at the same parameters vs
the graph's. G checks the recorded computation; A separates the optimizer's rounding from it.
Results: benchmarks/RESULTS.md#gpu.
"""

import sys

import torch
from gpu_session import session_log

from mamlpp.bench import random_batch
from mamlpp.data.batch import TaskBatch
from mamlpp.engine.cuda_graph import GraphedTrainStep
from mamlpp.engine.learner import MetaLearner
from mamlpp.presets import get_preset

say = session_log("gpu_diag.txt")
D = torch.float64


def gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def capturable_adam_without_graph(c, batches: list[TaskBatch]) -> None:  # type: ignore[no-untyped-def]
    eager, capturable = MetaLearner(c, "cuda", D), MetaLearner(c, "cuda", D, capturable=True)
    for i, b in enumerate(batches):
        le, lc = eager.train_step(b, 0).loss, capturable.train_step(b, 0).loss
        pg = gap(eager.meta_parameters(), capturable.meta_parameters())
        say(f"[A capturable Adam, eager] update {i}: loss gap {abs(le - lc):.2e} param gap {pg:.2e}")


def eager_gradients_along_graph_trajectory(c, batches: list[TaskBatch]) -> None:  # type: ignore[no-untyped-def]
    graphed, ref = MetaLearner(c, "cuda", D, capturable=True), MetaLearner(c, "cuda", D)
    step = GraphedTrainStep(graphed)
    for i, b in enumerate(batches):
        with torch.no_grad():
            for k, v in graphed.meta_parameters().items():
                ref.meta_parameters()[k].copy_(v)
        ref.optimizer.zero_grad(set_to_none=True)
        r = ref.meta_loss(b, 0)
        r.loss.backward()
        out = step(b, 0)
        gg = {k: v.grad for k, v in graphed.meta_parameters().items()}
        gr = {k: v.grad for k, v in ref.meta_parameters().items()}
        say(
            f"[G graph trajectory] update {i}: loss graph {out.loss:.10f} eager at the same "
            f"parameters {r.loss.item():.10f}; max gradient gap {gap(gg, gr):.2e}"  # type: ignore[arg-type]
        )


if __name__ == "__main__":
    config = get_preset(sys.argv[1] if len(sys.argv) > 1 else "omniglot_20way_1shot_mamlpp").config
    generator = torch.Generator().manual_seed(1)
    meta_batches = [random_batch(config, generator) for _ in range(4)]
    capturable_adam_without_graph(config, meta_batches)
    eager_gradients_along_graph_trajectory(config, meta_batches)
