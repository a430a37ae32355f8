"""One outer iteration replayed as a CUDA graph (GPU only, folded engine).

On a GPU an outer iteration of the folded engine is thousands of small kernels and the card
waits on their launches (benchmarks/RESULTS.md#gpu). A CUDA graph records the learner's public
`outer_step` once (inner loop, second-order backward, clipping, Adam, running-stat updates) and
replays it with one launch. What changes between iterations lives in static tensors refilled
before each replay: the meta-batch, the MSL weights and the meta learning rate. One graph is
recorded per (steps whose target loss is computed, derivative order): two or three over a run.

The graph wraps the learner's own optimizer: the learner builds it capturable (`applies` tells
the trainer when), and the step points its learning rate at a device tensor. Only the numbers
read back differ in form from `MetaLearner.train_step`: one transfer per iteration, and the
per-step target losses are not read back. `training_step(learner)` picks this or the eager
`train_step`: the trainer's single entry. A `seeds.SeedStack` is graphed the same way
(`seeds.GraphedSeedStep`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from mamlpp.config import Config
from mamlpp.data.batch import TaskBatch
from mamlpp.engine.learner import GRAD_STATS, MetaLearner, StepPlan, StepResult, choose_engine

GraphKey = tuple[frozenset[int], bool]
TrainStep = Callable[[TaskBatch, int], StepResult]


class Graphable(Protocol):
    """What the graphed step uses of a learner: a `MetaLearner`, or a `seeds.SeedStack`."""

    @property
    def config(self) -> Config: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def dtype(self) -> torch.dtype: ...
    @property
    def engine(self) -> str: ...
    @property
    def optimizer(self) -> torch.optim.Optimizer: ...
    @property
    def running(self) -> dict[str, Tensor]: ...

    def meta_parameters(self) -> dict[str, Tensor]: ...
    def gradient_names(self) -> list[str]: ...
    def plan(self, epoch: int) -> StepPlan: ...
    def meta_lr(self, epoch: int) -> float: ...
    def outer_step(self, batch: TaskBatch, plan: StepPlan) -> tuple[Any, Tensor]: ...


def applies(config: Config, device: str | torch.device) -> bool:
    """Whether training `config` on `device` replays CUDA graphs: a CUDA device, the folded
    engine and `config.cuda_graph`. Build the learner with `capturable=applies(...)`."""
    on_cuda = torch.device(device).type == "cuda"
    return on_cuda and choose_engine(config) == "folded" and config.cuda_graph


def training_step(learner: MetaLearner) -> TrainStep:
    """The outer update the trainer calls: the CUDA-graph replay where it `applies`, else the
    eager `learner.train_step`. Build it after restoring a checkpoint into the learner."""
    if applies(learner.config, learner.device):
        return GraphedTrainStep(learner)
    return learner.train_step


class GraphedTrainStep:
    """`step = GraphedTrainStep(learner); step(batch, epoch)` replaces `learner.train_step`."""

    def __init__(self, learner: Graphable, record: bool = True) -> None:
        """record=False runs the same static-input iteration without recording a graph (on any
        device): how the tests check this module's logic against `train_step` on the CPU."""
        if learner.engine != "folded" or (record and learner.device.type != "cuda"):
            raise ValueError("CUDA graphs need the folded engine on a CUDA device")
        if record and not learner.optimizer.defaults.get("capturable"):
            raise ValueError("build the learner with capturable=True to record its outer step")
        self.record = record
        self.learner = learner
        c = learner.config
        self.lr = torch.tensor(c.outer.lr, device=learner.device, dtype=learner.dtype)
        for group in learner.optimizer.param_groups:
            group["lr"] = self.lr  # the replay reads the learning rate from this tensor
        if not learner.optimizer.state:
            self._create_optimizer_state()
        self.weights = torch.zeros(c.inner.steps, device=learner.device, dtype=learner.dtype)
        self.static: TaskBatch | None = None
        self.graphs: dict[GraphKey, tuple[torch.cuda.CUDAGraph | _Unrecorded, Tensor]] = {}
        self.names: list[str] = []

    def __call__(self, batch: TaskBatch, epoch: int) -> StepResult:
        values, plan = self._replay(batch, epoch)
        stats = values[2:]
        return StepResult(
            loss=values[0],
            accuracy=values[1],
            msl_weights=list(plan.weights),  # type: ignore[arg-type]
            second_order=plan.second_order,
            grad_stats={
                name: dict(zip(GRAD_STATS, stats[4 * i : 4 * i + 4], strict=True))
                for i, name in enumerate(self.names)
            },
            step_losses=[None] * len(plan.weights),
        )

    # ------------------------------------------------------------------ internals
    def _replay(self, batch: TaskBatch, epoch: int) -> tuple[list[float], StepPlan]:
        """Load the inputs, replay (recording first if new) the plan's graph, read its output
        back: [losses..., accuracies..., gradient statistics...] (`_iteration`)."""
        learner = self.learner
        plan = learner.plan(epoch)
        key: GraphKey = (plan.target_steps, plan.second_order)
        self._load_inputs(batch.to(learner.device, learner.dtype), plan, epoch)
        if key not in self.graphs:
            self.graphs[key] = self._record(key)
        graph, output = self.graphs[key]
        graph.replay()
        return output.double().cpu().tolist(), plan

    def _load_inputs(self, batch: TaskBatch, plan: StepPlan, epoch: int) -> None:
        if self.static is None:
            self.static = TaskBatch(*(t.clone() for t in batch))
        else:
            for static, new in zip(self.static, batch, strict=True):
                static.copy_(new)
        self.weights.copy_(torch.tensor(list(plan.weights), dtype=self.weights.dtype))
        self.lr.fill_(self.learner.meta_lr(epoch))

    def _create_optimizer_state(self) -> None:
        """Adam creates its moment buffers at its first step; a step with zero gradients creates
        them without moving the parameters (the update is lr * 0 / (0 + eps)). Its step counter
        is then reset, so recording updates the buffers rather than creating them."""
        optimizer = self.learner.optimizer
        for p in self.learner.meta_parameters().values():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        for state in optimizer.state.values():
            state["step"].zero_()
        optimizer.zero_grad(set_to_none=True)

    def _snapshot(self) -> list[Tensor]:
        tensors = list(self.learner.meta_parameters().values()) + list(self.learner.running.values())
        for state in self.learner.optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, Tensor)]
        return tensors

    def _record(self, key: GraphKey) -> tuple[torch.cuda.CUDAGraph | _Unrecorded, Tensor]:
        if not self.record:
            unrecorded = _Unrecorded(lambda: self._iteration(key), self.learner.dtype)
            return unrecorded, unrecorded.output
        live = self._snapshot()
        saved = [t.detach().clone() for t in live]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up (library handles, autotuning), then undone below
                self._iteration(key)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for t, s in zip(live, saved, strict=True):
                t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self._iteration(key)
        return graph, output

    def _iteration(self, key: GraphKey) -> Tensor:
        """`learner.outer_step` on the static inputs, returning [loss, acc, grad stats...] (for
        a `SeedStack`: every seed's loss, then every seed's accuracy, then its [S, P, 4]
        gradient statistics flattened)."""
        target_steps, second_order = key
        assert self.static is not None
        plan = StepPlan(list(self.weights.unbind(0)), second_order, target_steps)
        result, rows = self.learner.outer_step(self.static, plan)
        self.names = self.learner.gradient_names()
        accuracy = result.step_accuracy_values[-1]
        assert accuracy is not None
        loss = result.loss.detach()
        return torch.cat([loss.reshape(-1), accuracy.to(loss.dtype).reshape(-1), rows.flatten()])


class _Unrecorded:
    """Stands in for a CUDA graph: replay() reruns the iteration into the same output tensor."""

    def __init__(self, iteration: Callable[[], Tensor], dtype: torch.dtype) -> None:
        self.iteration = iteration
        self.output = torch.empty(0, dtype=dtype)

    def replay(self) -> None:
        result = self.iteration()
        self.output.resize_(result.shape).copy_(result)
