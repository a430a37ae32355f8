"""Several seeds of one configuration trained as one folded step: `SeedStack`.

On a GPU one outer iteration of a 20-way meta-batch is bound by kernel launches and latency
(benchmarks/RESULTS.md#gpu), so folding more tasks into each kernel raises the throughput per
task (measured by benchmarks/seeds_throughput.py and benchmarks/gpu_paper.py). `SeedStack`
trains S runs that differ only in their seed (initial weights, episodes) with the folded engine
over all S x B tasks at once, while every seed keeps its own meta-parameters, Adam moments,
running statistics, losses and gradient statistics.

Layout: every meta-parameter, LSLR rate and running statistic is stacked with a leading seed
dimension ([S, ...]); the meta-batch holds seed s's B tasks at [s*B, (s+1)*B). Each seed's
weights are repeated for its B tasks ([S*B, ...]: the fast weights), its LSLR rates likewise
([S*B, steps]: per-task rates, `inner_loop._rate`), and its batch-norm scale/shift and
statistics reach its tasks through the stacked [S, sets, F] tensors (`model.per_task`).

Why each seed gets exactly its own run's update: the folded tasks never mix (grouped convs,
per-channel batch norm, batched head), seed s's meta loss is the mean over its B tasks, and the
backward of the sum over seeds therefore gives each seed's slice its own gradient; clipping and
Adam are elementwise (one Adam over the stacked tensors is S Adams; all seeds step together so
their step counts agree); running statistics are updated per seed with per-seed batch means.
What differs from S separate `MetaLearner` runs is summation order only (the gradient of a
weight shared by a seed's tasks is summed over its tasks' copies, `model.seed_rows`, rather
than through a plain expand; per-seed means reduce over a strided view) and, on the CPU, that
the S*B tasks run as one group rather than in `task_threads` groups: differences of rounding
size (tests/test_seeds.py compares against separate learners in float64).

`state_dict(s)` gives seed s's state in exactly `MetaLearner.state_dict`'s format, and
`load_state_dicts` takes S of them, so checkpoints, the ensemble and the test code are the
single-run ones; `learner(s)` is a `MetaLearner` holding seed s's state (for checkpoints and
test). `evaluate_shared` evaluates every seed on the same tasks as one folded pass: on CUDA
(`folds_evaluation`) multi-seed validation and, over a stack of checkpoints (`of_learners`),
the ensemble test.
On a GPU the joint step replays as a CUDA graph like a single run's (`GraphedSeedStep`,
`training_step`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mamlpp import kernels
from mamlpp.config import Config
from mamlpp.data.batch import TaskBatch
from mamlpp.engine import cuda_graph, model, schedules
from mamlpp.engine.cuda_graph import GraphedTrainStep
from mamlpp.engine.inner_loop import Forward, Rates, inner_loop
from mamlpp.engine.learner import (
    GRAD_STATS,
    EvalResult,
    MetaLearner,
    StepPlan,
    StepResult,
    _weighted,
    absolute_statistics,
    choose_engine,
    clip_gradients,
    initial_state,
    joined_results,
    meta_optimizer,
    meta_parameter_dict,
    step_plan,
)


@dataclass
class SeedLossResult:
    """`learner.MetaLossResult` with one entry per seed."""

    loss: Tensor
    """[S]: each seed's meta loss (the mean over its tasks of sum_i v_i * L_i)."""
    step_loss_values: list[Tensor | None]
    """Per step, [S] float64 target losses (mean over each seed's tasks); None where MSL's
    weight is 0."""
    step_accuracy_values: list[Tensor | None]
    msl_weights: list[float]
    second_order: bool
    bn_stats: list[model.BatchNormStats] = field(default_factory=list)
    """Batch statistics per forward pass, [S, F] each."""


def compatible(configs: Sequence[Config]) -> None:
    """Raise ValueError unless the configs differ at most in what a seed decides (`seed`,
    `data.train_seed`, `model.init_seed`): the runs a `SeedStack` can train together."""
    first = configs[0]

    def seedless(c: Config) -> Config:
        return dataclasses.replace(
            c,
            seed=first.seed,
            data=dataclasses.replace(c.data, train_seed=first.data.train_seed),
            model=dataclasses.replace(c.model, init_seed=first.model.init_seed),
        )

    for c in configs[1:]:
        if seedless(c) != first:
            raise ValueError("runs trained together must have the same config but for their seeds")


class SeedStack:
    """S seeds of one configuration trained as one folded step (module docstring)."""

    def __init__(
        self,
        configs: Sequence[Config],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        kernel_options: kernels.KernelOptions = kernels.DEFAULT,
        capturable: bool = False,
    ) -> None:
        """One config per seed (`compatible`); each seed's initial state is exactly the one
        `MetaLearner(configs[s])` starts from (`learner.initial_state`)."""
        if not configs:
            raise ValueError("a SeedStack needs at least one config")
        compatible(configs)
        self.configs = list(configs)
        self.config = configs[0]
        self.seeds = len(configs)
        if choose_engine(self.config) != "folded":
            raise ValueError("seeds are trained together by the folded engine only")
        self.engine = "folded"
        self.device = torch.device(device)
        self.dtype = dtype
        self.kernel_options = kernel_options
        self.spec = model.NetSpec.from_config(self.config)
        self.kernels = kernels.choose(
            self.device, self.spec, kernel_options, self.config.tf32_matmul
        )
        states = [initial_state(c, self.device, dtype) for c in self.configs]

        def stack(part: int, grad: bool) -> dict[str, Tensor]:
            first: dict[str, Tensor] = states[0][part]
            return {
                k: torch.stack([s[part][k].detach() for s in states]).requires_grad_(grad)
                for k in first
            }

        self.params = stack(0, True)
        self.rates = stack(1, True)
        self.running = stack(2, False)
        self.optimizer = meta_optimizer(self.meta_parameters(), self.config, capturable)

    # ------------------------------------------------------------------ parameters
    @property
    def adapted_names(self) -> list[str]:
        return self.spec.adapted_names

    def meta_parameters(self) -> dict[str, Tensor]:
        """Name -> [S, ...] stacked tensor, in `MetaLearner.meta_parameters`' order."""
        return meta_parameter_dict(self.params, self.rates)

    def gradient_names(self) -> list[str]:
        return [k for k, p in self.meta_parameters().items() if p.grad is not None]

    # ------------------------------------------------------------------ schedules
    def meta_lr(self, epoch: int) -> float:
        return schedules.meta_lr(self.config, epoch)

    def plan(self, epoch: int) -> StepPlan:
        return step_plan(self.config, epoch)

    # ------------------------------------------------------------------ meta loss
    def join(self, batches: Sequence[TaskBatch]) -> TaskBatch:
        """One meta-batch per seed (equal sizes) -> the folded step's batch, on the device."""
        if len(batches) != self.seeds:
            raise ValueError(f"need one meta-batch per seed ({self.seeds}), got {len(batches)}")
        if len({b.num_tasks for b in batches}) != 1:
            raise ValueError("every seed's meta-batch must have the same number of tasks")
        joined = TaskBatch(*(torch.cat(parts) for parts in zip(*batches, strict=True)))
        return joined.to(self.device, self.dtype)

    def _tasks_per_seed(self, batch: TaskBatch) -> int:
        if batch.num_tasks % self.seeds:
            raise ValueError(f"{batch.num_tasks} tasks do not split into {self.seeds} seeds")
        return batch.num_tasks // self.seeds

    def _forward(
        self,
        shared: Mapping[str, Tensor],
        mode: model.BNMode,
        stats: list[model.BatchNormStats] | None,
    ) -> Forward:
        """`MetaLearner._forward` for the stacked seeds (the folded net only)."""
        split = model.split_affine_sets(shared) if self.kernels.split_affine else shared

        def forward(fast: Mapping[str, Tensor], x: Any, step: int) -> Tensor:
            return model.forward_tasks(
                fast, split, self.running, x, step, self.spec, mode, stats, self.kernels
            )

        return forward

    def _inner_rates(self, per_seed: int, detach: bool) -> Rates:
        """Per-task LSLR rates [S*B, steps] (each seed's for its tasks), or alpha."""
        if not self.rates:
            return {k: self.config.inner.lr for k in self.adapted_names}
        return {
            k: model.seed_rows(v.detach() if detach else v, per_seed)
            for k, v in self.rates.items()
        }

    def _prepared(self, batch: TaskBatch) -> tuple[tuple[Any, Tensor], tuple[Any, Tensor]]:
        prepare = self.kernels.prepare
        return (
            (prepare(batch.support_x, self.spec), batch.support_y),
            (prepare(batch.target_x, self.spec), batch.target_y),
        )

    def meta_loss(self, batch: TaskBatch, plan: StepPlan) -> SeedLossResult:
        """Every seed's differentiable meta loss under `plan`; `batch` holds S*B tasks, seed
        s's at [s*B, (s+1)*B) (`join`)."""
        batch = batch.to(self.device, self.dtype)
        per_seed = self._tasks_per_seed(batch)
        stats: list[model.BatchNormStats] = []
        fast = {k: model.seed_rows(self.params[k], per_seed) for k in self.adapted_names}
        support, target = self._prepared(batch)
        result = inner_loop(
            self._forward(self.params, "batch", stats),
            fast,
            support,
            target,
            self._inner_rates(per_seed, detach=False),
            self.config.inner.steps,
            plan.second_order,
            set(plan.target_steps),
        )

        def per_seed_means(values: list[Tensor | None]) -> list[Tensor | None]:
            return [
                None if v is None else v.detach().double().view(self.seeds, per_seed).mean(1)
                for v in values
            ]

        return SeedLossResult(
            loss=_weighted(result, plan.weights).view(self.seeds, per_seed).mean(1),
            step_loss_values=per_seed_means(result.target_losses),
            step_accuracy_values=per_seed_means(result.target_accuracies),
            msl_weights=[w for w in plan.weights if not isinstance(w, Tensor)],
            second_order=plan.second_order,
            bn_stats=stats,
        )

    # ------------------------------------------------------------------ outer update
    def outer_step(self, batch: TaskBatch, plan: StepPlan) -> tuple[SeedLossResult, Tensor]:
        """`MetaLearner.outer_step` for every seed at once, left on the device. Returns the
        losses and the [S, P, 4] gradient statistics (names in `gradient_names()`)."""
        with self.kernels.precision():
            return self._outer_step(batch, plan)

    def _outer_step(self, batch: TaskBatch, plan: StepPlan) -> tuple[SeedLossResult, Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        result = self.meta_loss(batch, plan)
        result.loss.sum().backward()  # seed s's slices receive the gradient of its own loss
        meta = self.meta_parameters()
        o = self.config.outer
        clip_gradients(meta if o.clip_inner_rates else self.params, o.grad_clip)
        rows = seed_gradient_rows(meta, self.gradient_names())
        self.optimizer.step()
        self._update_running_stats(result.bn_stats)
        return result, rows

    def train_step(self, batches: TaskBatch | Sequence[TaskBatch], epoch: int) -> list[StepResult]:
        """`MetaLearner.train_step` of every seed: one meta-batch per seed, or the joined
        S*B-task batch; returns one `StepResult` per seed."""
        batch = batches if isinstance(batches, TaskBatch) else self.join(batches)
        for group in self.optimizer.param_groups:
            group["lr"] = self.meta_lr(epoch)
        result, rows = self.outer_step(batch, self.plan(epoch))
        names = self.gradient_names()
        values = rows.double().cpu().tolist() if names else [[] for _ in range(self.seeds)]
        losses = result.loss.detach().cpu().tolist()
        per_step = [None if v is None else v.cpu().tolist() for v in result.step_loss_values]
        accuracy = result.step_accuracy_values[-1]
        assert accuracy is not None
        accuracies = accuracy.cpu().tolist()
        return [
            StepResult(
                loss=losses[s],
                accuracy=accuracies[s],
                msl_weights=result.msl_weights,
                second_order=result.second_order,
                grad_stats={
                    k: dict(zip(GRAD_STATS, v, strict=True))
                    for k, v in zip(names, values[s], strict=True)
                },
                step_losses=[None if v is None else v[s] for v in per_step],
            )
            for s in range(self.seeds)
        ]

    @torch.no_grad()
    def _update_running_stats(self, stats: list[model.BatchNormStats]) -> None:
        m = self.config.bn.momentum
        for s in stats:
            i = min(s.step, self.spec.stat_sets - 1)
            self.running[f"bn{s.layer}.running_mean"][:, i].lerp_(s.mean, m)
            self.running[f"bn{s.layer}.running_var"][:, i].lerp_(s.var, m)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, batches: TaskBatch | Sequence[TaskBatch]) -> list[EvalResult]:
        """`MetaLearner.evaluate` of every seed on its own tasks (one batch per seed, or the
        joined batch), as one folded pass; one `EvalResult` per seed."""
        with self.kernels.precision():
            return self._evaluate(batches)

    def _evaluate(self, batches: TaskBatch | Sequence[TaskBatch]) -> list[EvalResult]:
        batch = batches if isinstance(batches, TaskBatch) else self.join(batches)
        batch = batch.to(self.device, self.dtype)
        per_seed = self._tasks_per_seed(batch)
        shared = {k: v.detach() for k, v in self.params.items()}
        support, target = self._prepared(batch)
        with torch.enable_grad():
            fast = {
                k: model.seed_rows(shared[k], per_seed).clone().requires_grad_()
                for k in self.adapted_names
            }
            result = inner_loop(
                self._forward(shared, self.config.bn.eval_stats, None),
                fast,
                support,
                target,
                self._inner_rates(per_seed, detach=True),
                self.config.inner.eval_steps,
                False,
                set(),
            )
        assert result.final_logits is not None
        logits = result.final_logits.detach().cpu()
        loss, acc = result.target_losses[-1], result.target_accuracies[-1]
        assert loss is not None and acc is not None
        loss, acc = loss.detach().cpu(), acc.cpu()
        probs = torch.softmax(result.final_logits.detach(), -1).cpu()
        return [
            EvalResult(loss[part], acc[part], probs[part], logits[part])
            for part in (slice(s * per_seed, (s + 1) * per_seed) for s in range(self.seeds))
        ]

    def evaluate_shared(self, batch: TaskBatch, max_tasks: int | None = None) -> list[EvalResult]:
        """Every seed evaluated on the same tasks: `evaluate([batch] * seeds)`, one
        `EvalResult` per seed. The batch's tasks are split into parts so that one folded pass
        holds at most max(`max_tasks`, seeds) tasks (seeds x part); by default `max_tasks` is
        `evaluation_pass_tasks`."""
        if max_tasks is None:
            max_tasks = evaluation_pass_tasks(self.config, batch.num_tasks)
        part = max(1, max_tasks // self.seeds)
        passes = [
            self.evaluate([batch.tasks(slice(a, a + part))] * self.seeds)
            for a in range(0, batch.num_tasks, part)
        ]
        return [joined_results([p[s] for p in passes]) for s in range(self.seeds)]

    # ------------------------------------------------------------------ persistence
    def state_dict(self, seed: int) -> dict[str, Any]:
        """Seed `seed`'s state, exactly as `MetaLearner.state_dict` writes it."""
        optimizer = copy.deepcopy(self.optimizer.state_dict())
        return {
            "meta_parameters": {
                k: v[seed].detach().cpu().clone() for k, v in self.meta_parameters().items()
            },
            "running_stats": {k: v[seed].cpu().clone() for k, v in self.running.items()},
            "optimizer": {
                "state": {
                    i: {k: _seed_slice(v, seed) for k, v in entry.items()}
                    for i, entry in optimizer["state"].items()
                },
                "param_groups": optimizer["param_groups"],
            },
            "config": self.configs[seed].to_dict(),
        }

    @classmethod
    def of_learners(cls, learners: Sequence[MetaLearner]) -> SeedStack:
        """A stack holding the learners' meta-parameters and running statistics, one seed per
        learner, on the first one's device, dtype and kernel options: to evaluate them folded
        (`evaluate_shared`; the ensemble's members: one config, checkpoints of different
        epochs). Their optimizers are not loaded (they may be at different steps), so the
        stack is for evaluation, not for training on."""
        first = learners[0]
        stack = cls(
            [learner.config for learner in learners], first.device, first.dtype, first.kernel_options
        )
        states = [
            {"meta_parameters": learner.meta_parameters(), "running_stats": learner.running}
            for learner in learners
        ]
        stack.load_state_dicts(states, optimizer=False)
        return stack

    @torch.no_grad()
    def load_state_dicts(self, states: Sequence[Mapping[str, Any]], optimizer: bool = True) -> None:
        """Load one `MetaLearner.state_dict` per seed. ValueError if they do not match this
        config or, with `optimizer`, their optimizers are at different steps (such runs train
        apart). Without `optimizer` only the meta-parameters and running statistics are loaded
        (what evaluation reads) and the optimizer is left as it is."""
        if len(states) != self.seeds:
            raise ValueError(f"need one state per seed ({self.seeds}), got {len(states)}")
        meta = self.meta_parameters()
        for state in states:
            missing = set(meta) ^ set(state["meta_parameters"])
            if missing:
                raise ValueError(
                    f"checkpoint does not match this config: parameters {sorted(missing)}"
                )
        adam = _stacked_adam([s["optimizer"] for s in states]) if optimizer else None
        for k, p in meta.items():
            p.copy_(torch.stack([s["meta_parameters"][k] for s in states]))
        for k, r in self.running.items():
            r.copy_(torch.stack([s["running_stats"][k] for s in states]))
        if adam is not None:
            self.optimizer.load_state_dict(adam)

    def learner(self, seed: int) -> MetaLearner:
        """A `MetaLearner` holding seed `seed`'s current state (a copy: training it does not
        change the stack): for validation, checkpoints and test by the single-run code."""
        single = MetaLearner(self.configs[seed], self.device, self.dtype, self.kernel_options)
        single.load_state_dict(self.state_dict(seed))
        return single


class GraphedSeedStep(GraphedTrainStep):
    """`SeedStack.train_step` as a replayed CUDA graph (`cuda_graph.GraphedTrainStep`):
    `step = GraphedSeedStep(stack); step(joined_batch, epoch)` -> one `StepResult` per seed
    (per-step target losses not read back, as for one seed)."""

    def __init__(self, stack: SeedStack, record: bool = True) -> None:
        super().__init__(stack, record)
        self.stack = stack

    def __call__(self, batch: TaskBatch, epoch: int) -> list[StepResult]:  # type: ignore[override]
        values, plan = self._replay(batch, epoch)
        seeds, p = self.stack.seeds, len(self.names)
        stats = values[2 * seeds :]
        return [
            StepResult(
                loss=values[s],
                accuracy=values[seeds + s],
                msl_weights=list(plan.weights),  # type: ignore[arg-type]
                second_order=plan.second_order,
                grad_stats={
                    name: dict(zip(GRAD_STATS, stats[4 * (s * p + i) : 4 * (s * p + i) + 4], strict=True))
                    for i, name in enumerate(self.names)
                },
                step_losses=[None] * len(plan.weights),
            )
            for s in range(seeds)
        ]


def folds_evaluation(config: Config, device: str | torch.device) -> bool:
    """Whether several parameter sets (seeds, ensemble members) evaluated on the same tasks run
    as folded passes (`SeedStack.evaluate_shared`) rather than one `MetaLearner.evaluate` per
    set: on CUDA, where an evaluation chunk of a few tasks is bound by kernel launches and
    latency, so that S sets folded into each kernel cost little more than one (as for training,
    module docstring). Not on the CPU: there the per-set path runs its tasks in groups on
    threads (`task_threads`), which the folded pass does not, and is the faster one
    (benchmarks/RESULTS.md, appendix, 2026-11-29 sixth session), and folding changes the
    results' rounding (README's CPU numbers are the per-set path's). Only the folded engine
    folds."""
    return torch.device(device).type == "cuda" and choose_engine(config) == "folded"


def evaluation_pass_tasks(config: Config, chunk_tasks: int) -> int:
    """The most tasks one folded evaluation pass holds (`SeedStack.evaluate_shared`):
    max(chunk_tasks, outer.meta_batch_size x inner.steps). An evaluation step is first order,
    so a pass keeps one step's activations of its tasks at a time, while the training step
    (second order) keeps those of all `inner.steps` steps of its meta-batch: a folded pass
    within this bound needs no more memory than training one seed, and never less than the
    per-set path's pass of `chunk_tasks` tasks."""
    return max(chunk_tasks, config.outer.meta_batch_size * config.inner.steps)


def training_step(stack: SeedStack) -> Callable[[TaskBatch, int], list[StepResult]]:
    """The joint outer update the trainer calls: `GraphedSeedStep` where CUDA graphs apply
    (`cuda_graph.applies`; build the stack with capturable=True, after restoring it), else the
    eager `SeedStack.train_step`."""
    if cuda_graph.applies(stack.config, stack.device):
        return GraphedSeedStep(stack)
    return stack.train_step


def seed_gradient_rows(meta: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    """[S, len(names), 4]: per seed, `learner.gradient_rows` of its slices (max, min, mean and
    norm of |grad| per named tensor), on the device; every seed's slices in one
    `learner.absolute_statistics`."""
    grads = [meta[k].grad.detach() for k in names]  # type: ignore[union-attr]
    seeds = grads[0].shape[0]
    rows = absolute_statistics([g[s] for s in range(seeds) for g in grads])
    return rows.view(seeds, len(grads), len(GRAD_STATS))


def _stacked_adam(optimizers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One Adam state dict per seed -> the stack's (moments stacked per seed); ValueError
    unless they are at the same step."""
    stacked: dict[Any, dict[str, Any]] = {}
    if len({frozenset(o["state"]) for o in optimizers}) != 1:
        raise ValueError("the seeds' optimizers are at different steps")
    for i, entry in optimizers[0]["state"].items():
        stacked[i] = {}
        for k, v in entry.items():
            values = [o["state"][i][k] for o in optimizers]
            if isinstance(v, Tensor) and v.dim() > 0:
                stacked[i][k] = torch.stack([x.to(v.device) for x in values])
            elif any(not _same(x, v) for x in values):
                raise ValueError("the seeds' optimizers are at different steps")
            else:
                stacked[i][k] = v
    return {"state": stacked, "param_groups": copy.deepcopy(optimizers[0]["param_groups"])}


def _seed_slice(value: Any, seed: int) -> Any:
    """An optimizer state entry for one seed: its slice of a stacked tensor; a 0-d tensor (the
    shared step count) or any other value as it is."""
    if isinstance(value, Tensor) and value.dim() > 0:
        return value[seed].clone()
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return bool(torch.equal(a.cpu(), b.cpu()))
    return bool(a == b)
