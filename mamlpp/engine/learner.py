"""MetaLearner: the meta-parameters of MAML/MAML++ and what is done with them.

- ``meta_loss(batch, epoch)``: the differentiable meta loss (MSL-weighted target losses after the
  inner steps, first or second order as the config and epoch say);
- ``outer_step(batch, plan)``: one outer update (meta-gradients, optional clipping of all of them
  or, with ``outer.clip_inner_rates`` off, of the network's only, Adam, BN running stats) on the device, with no host reads: what the eager ``train_step`` and the
  CUDA-graph step (`mamlpp.engine.cuda_graph`) both run;
- ``train_step(batch, epoch)``: ``outer_step`` at the epoch's plan, its numbers read back;
- ``evaluate(batch)``: adapt with first-order steps and score the target set.

Speed paths (`mamlpp.kernels`) are chosen once, in the constructor, from the device and the
network's shape: the forward's kernels, and on the CPU the task groups on threads.

Meta-parameters (everything the outer loop learns), by name: the adapted weights' initial values
``conv<i>.weight/bias``, ``linear.weight/bias``; batch-norm scale/shift ``bn<i>.weight/bias``
([sets, filters]); with LSLR, one learning rate per adapted tensor and step, ``lslr.<name>``
([steps]).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from mamlpp import kernels
from mamlpp.config import Config
from mamlpp.data.batch import TaskBatch
from mamlpp.engine import model, schedules
from mamlpp.engine.inner_loop import Forward, InnerLoopResult, Rates, inner_loop
from mamlpp.kernels import task_threads

GRAD_STATS = ("max", "min", "mean", "norm")


@dataclass
class MetaLossResult:
    loss: Tensor
    """Scalar: mean over tasks of sum_i v_i * L_i."""
    step_loss_values: list[Tensor | None]
    """Target loss after each step (mean over tasks, a detached 0-d tensor on the device); None
    where MSL's weight is 0. Kept on the device so a CUDA graph can record the step."""
    step_accuracy_values: list[Tensor | None]
    msl_weights: list[float]
    second_order: bool
    bn_stats: list[model.BatchNormStats] = field(default_factory=list)
    """Batch statistics of every forward pass, in order, to update the running stats with."""

    @property
    def step_losses(self) -> list[float | None]:
        return [None if v is None else float(v) for v in self.step_loss_values]

    @property
    def step_accuracies(self) -> list[float | None]:
        return [None if v is None else float(v) for v in self.step_accuracy_values]

    @property
    def accuracy(self) -> float:
        """Target accuracy after the last inner step."""
        last = self.step_accuracy_values[-1]
        assert last is not None
        return float(last)


@dataclass
class StepResult:
    loss: float
    accuracy: float
    msl_weights: list[float]
    second_order: bool
    grad_stats: dict[str, dict[str, float]]
    """Meta-parameter name -> {max, min, mean, norm} of |gradient|."""
    step_losses: list[float | None]


@dataclass
class EvalResult:
    loss: Tensor
    """[B] target loss after the evaluation steps."""
    accuracy: Tensor
    """[B] target accuracy."""
    probs: Tensor
    """[B, N*q, N] class probabilities of the target images (what the ensemble averages)."""
    logits: Tensor
    """[B, N*q, N] their raw logits (what the ensemble averages with schedule.ensemble='logits')."""


@dataclass(frozen=True)
class StepPlan:
    """What one outer update does at an epoch: MSL weights (floats, or device tensors in the
    CUDA graph), derivative order, and the steps whose target loss is computed."""

    weights: Sequence[float | Tensor]
    second_order: bool
    target_steps: frozenset[int]


class MetaLearner:
    def __init__(
        self,
        config: Config,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        kernel_options: kernels.KernelOptions = kernels.DEFAULT,
        capturable: bool = False,
    ) -> None:
        """`kernel_options`: which speed paths may be used (all, by default; for A/B
        benchmarks). `capturable`: build Adam for CUDA-graph capture (`cuda_graph.applies`)."""
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.spec = model.NetSpec.from_config(config)
        self.engine = choose_engine(config)
        self.kernel_options = kernel_options
        self.kernels = kernels.choose(self.device, self.spec, kernel_options, config.tf32_matmul)
        self.params, self.rates, self.running = initial_state(config, self.device, dtype)
        self.optimizer = meta_optimizer(self.meta_parameters(), config, capturable)

    # ------------------------------------------------------------------ parameters
    @property
    def adapted_names(self) -> list[str]:
        return self.spec.adapted_names

    def meta_parameters(self) -> dict[str, Tensor]:
        """Name -> tensor of everything the outer loop learns (network order, then LSLR)."""
        return meta_parameter_dict(self.params, self.rates)

    def lslr_rates(self) -> dict[str, list[float]]:
        """Adapted tensor -> its inner learning rate at each step (fixed alpha without LSLR)."""
        steps = self.config.bn_sets
        if not self.rates:
            return {k: [self.config.inner.lr] * steps for k in self.adapted_names}
        return {k: v.detach().cpu().tolist() for k, v in self.rates.items()}

    def _inner_rates(self, detach: bool) -> Rates:
        if not self.rates:
            return {k: self.config.inner.lr for k in self.adapted_names}
        return {k: v.detach() if detach else v for k, v in self.rates.items()}

    # ------------------------------------------------------------------ schedules
    def meta_lr(self, epoch: int) -> float:
        return schedules.meta_lr(self.config, epoch)

    def msl_weights(self, epoch: int) -> list[float]:
        c = self.config
        return schedules.msl_weights(c.inner.steps, epoch, c.outer.msl_epochs, c.outer.msl)

    def plan(self, epoch: int) -> StepPlan:
        """The outer update's MSL weights, derivative order and target steps at `epoch`."""
        return step_plan(self.config, epoch)

    # ------------------------------------------------------------------ meta loss
    def meta_loss(self, batch: TaskBatch, epoch: int | StepPlan) -> MetaLossResult:
        """The differentiable meta loss of a meta-batch at `epoch` (MSL weights and derivative
        order are the epoch's), or under an explicit `StepPlan`."""
        plan = self.plan(epoch) if isinstance(epoch, int) else epoch
        batch = batch.to(self.device, self.dtype)
        run = self._run_folded if self.engine == "folded" else self._run_loop
        per_task_loss, results, bn_stats = run(
            batch, plan.weights, plan.second_order, set(plan.target_steps)
        )
        return MetaLossResult(
            loss=per_task_loss.mean(),
            step_loss_values=_mean_per_step(results, "target_losses"),
            step_accuracy_values=_mean_per_step(results, "target_accuracies"),
            msl_weights=[w for w in plan.weights if not isinstance(w, Tensor)],
            second_order=plan.second_order,
            bn_stats=bn_stats,
        )

    def _run_folded(
        self,
        batch: TaskBatch,
        weights: Sequence[float | Tensor],
        second_order: bool,
        target_steps: set[int],
    ) -> tuple[Tensor, list[InnerLoopResult], list[model.BatchNormStats]]:
        tasks = batch.num_tasks
        stats: list[model.BatchNormStats] = []
        forward = self._forward(model.forward_tasks, self.params, "batch", stats)
        fast = {k: self.params[k].expand(tasks, *self.params[k].shape) for k in self.adapted_names}
        result = self._adapt(forward, fast, batch, second_order, target_steps, prepare=self._prepare)
        return _weighted(result, weights), [result], stats

    def _run_loop(
        self,
        batch: TaskBatch,
        weights: Sequence[float | Tensor],
        second_order: bool,
        target_steps: set[int],
    ) -> tuple[Tensor, list[InnerLoopResult], list[model.BatchNormStats]]:
        """Reference: one task at a time with plain (unbatched) convolutions."""
        losses, results, per_task_stats = [], [], []
        for b in range(batch.num_tasks):
            stats: list[model.BatchNormStats] = []
            forward = self._forward(model.forward_task, self.params, "batch", stats)
            fast = {k: self.params[k] for k in self.adapted_names}
            result = self._adapt(forward, fast, _task(batch, b), second_order, target_steps)
            losses.append(_weighted(result, weights))
            results.append(result)
            per_task_stats.append(stats)
        return torch.stack(losses), results, _average_stats(per_task_stats)

    def _forward(
        self,
        net: Callable[..., Tensor],
        shared: dict[str, Tensor],
        mode: model.BNMode,
        stats: list[model.BatchNormStats] | None,
    ) -> Forward:
        """`net` (forward_tasks or forward_task) with everything but (fast weights, images,
        step) bound: BN scale/shift `shared` (their sets split once for the pass where the
        kernels say: `Kernels.split_affine`), the running statistics, the BN mode, and the list
        that collects batch statistics (None: not collected)."""
        if self.kernels.split_affine:
            shared = model.split_affine_sets(shared)

        if net is model.forward_tasks:

            def forward(fast: Mapping[str, Tensor], x: Any, step: int) -> Tensor:
                return model.forward_tasks(
                    fast, shared, self.running, x, step, self.spec, mode, stats, self.kernels
                )

            return forward

        def forward_one(fast: Mapping[str, Tensor], x: Any, step: int) -> Tensor:
            return net(fast, shared, self.running, x, step, self.spec, mode, stats)

        return forward_one

    def _prepare(self, images: Tensor) -> model.FoldedImages:
        """The images as the folded forward's kernels take them, once per batch."""
        return self.kernels.prepare(images, self.spec)

    def _adapt(
        self,
        forward: Forward,
        fast: dict[str, Tensor],
        batch: TaskBatch,
        second_order: bool,
        target_steps: set[int] | None = None,
        evaluation: bool = False,
        prepare: Callable[[Tensor], Any] = lambda images: images,
    ) -> InnerLoopResult:
        """The inner loop on a batch: training steps with trainable rates, or (evaluation)
        `eval_steps` first-order steps with the rates as constants and only the last target.
        `prepare` turns the images into what `forward` takes (once, for all steps)."""
        steps = self.config.inner.eval_steps if evaluation else self.config.inner.steps
        return inner_loop(
            forward,
            fast,
            (prepare(batch.support_x), batch.support_y),
            (prepare(batch.target_x), batch.target_y),
            self._inner_rates(detach=evaluation),
            steps,
            second_order,
            target_steps or set(),
        )

    # ------------------------------------------------------------------ outer update
    def outer_step(self, batch: TaskBatch, plan: StepPlan) -> tuple[MetaLossResult, Tensor]:
        """One outer update under `plan`, left on the device: meta-gradients, clipping when
        configured, Adam (at the optimizer's current learning rate), BN running statistics.
        Returns the meta loss's result and the [P, 4] gradient statistics of the meta-parameters
        that received a gradient (`gradient_rows`, names in `gradient_names()`). Runs under the
        kernels' numerical settings (`Kernels.precision`)."""
        with self.kernels.precision():
            return self._outer_step(batch, plan)

    def _outer_step(self, batch: TaskBatch, plan: StepPlan) -> tuple[MetaLossResult, Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        result = self._meta_gradients(batch, plan)
        meta = self.meta_parameters()
        o = self.config.outer
        clip_gradients(meta if o.clip_inner_rates else self.params, o.grad_clip)
        rows = gradient_rows(meta, self.gradient_names())
        self.optimizer.step()
        self._update_running_stats(result.bn_stats)
        return result, rows

    def gradient_names(self) -> list[str]:
        """The meta-parameters holding a gradient (after `_meta_gradients`)."""
        return [k for k, p in self.meta_parameters().items() if p.grad is not None]

    def train_step(self, batch: TaskBatch, epoch: int) -> StepResult:
        """`outer_step` at `epoch`'s plan and meta learning rate, its numbers read back."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.meta_lr(epoch)
        result, rows = self.outer_step(batch, self.plan(epoch))
        names = self.gradient_names()
        values = rows.double().cpu().tolist() if names else []
        return StepResult(
            loss=float(result.loss.detach()),
            accuracy=result.accuracy,
            msl_weights=result.msl_weights,
            second_order=result.second_order,
            grad_stats={k: dict(zip(GRAD_STATS, v, strict=True)) for k, v in zip(names, values, strict=True)},
            step_losses=result.step_losses,
        )

    def _task_groups(self, batch: TaskBatch) -> list[slice]:
        """The groups of `batch`'s tasks that run side by side (`task_threads.task_groups`)."""
        if not self.kernel_options.task_threads:
            return [slice(0, batch.num_tasks)]
        return task_threads.task_groups_for(batch, self.spec.filters, self.dtype, self.device)

    def _meta_gradients(self, batch: TaskBatch, plan: StepPlan) -> MetaLossResult:
        """`meta_loss(batch, plan).loss.backward()`, on the CPU with the tasks in groups on
        parallel threads (`task_threads`): each group's gradients of its share of the loss
        (its tasks' sum / B), summed in group order into `.grad`. Returns the meta loss's
        numbers (its loss detached when the tasks were split)."""
        groups = self._task_groups(batch)
        if len(groups) == 1:
            result = self.meta_loss(batch, plan)
            result.loss.backward()
            return result
        meta = list(self.meta_parameters().values())
        shares = [(g.stop - g.start) / batch.num_tasks for g in groups]

        def group_gradients(group: slice) -> tuple[MetaLossResult, Sequence[Tensor | None]]:
            part = self.meta_loss(batch.tasks(group), plan)
            share = shares[groups.index(group)]
            return part, torch.autograd.grad(part.loss * share, meta, allow_unused=True)

        parts = task_threads.map_on_threads(group_gradients, groups)
        for p, grads in zip(meta, zip(*(g for _, g in parts), strict=True), strict=True):
            present = [g for g in grads if g is not None]
            p.grad = torch.stack(present).sum(0) if present else None
        return _combine_results([r for r, _ in parts], shares)

    @torch.no_grad()
    def _update_running_stats(self, stats: list[model.BatchNormStats]) -> None:
        m = self.config.bn.momentum
        for s in stats:
            i = min(s.step, self.spec.stat_sets - 1)
            self.running[f"bn{s.layer}.running_mean"][i].lerp_(s.mean, m)
            self.running[f"bn{s.layer}.running_var"][i].lerp_(s.var, m)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, batch: TaskBatch) -> EvalResult:
        """Adapt to each task with `inner.eval_steps` first-order steps and score its target set.
        Batch norm uses the config's `bn.eval_stats`; running statistics are not changed.
        On the CPU, groups of tasks run on parallel threads (`task_threads`); on CUDA, under the
        kernels' numerical settings (`Kernels.precision`)."""
        with self.kernels.precision():
            return self._evaluate_groups(batch)

    def _evaluate_groups(self, batch: TaskBatch) -> EvalResult:
        batch = batch.to(self.device, self.dtype)
        groups = self._task_groups(batch)
        parts = task_threads.map_on_threads(lambda g: self._evaluate(batch.tasks(g)), groups)
        return joined_results(parts)

    def _evaluate(self, batch: TaskBatch) -> EvalResult:
        tasks = batch.num_tasks
        shared = {k: v.detach() for k, v in self.params.items()}
        forward = self._forward(model.forward_tasks, shared, self.config.bn.eval_stats, None)
        with torch.enable_grad():
            fast = {
                k: shared[k].expand(tasks, *shared[k].shape).clone().requires_grad_()
                for k in self.adapted_names
            }
            result = self._adapt(
                forward, fast, batch, second_order=False, evaluation=True, prepare=self._prepare
            )
        assert result.final_logits is not None
        logits = result.final_logits.detach()
        loss, acc = result.target_losses[-1], result.target_accuracies[-1]
        assert loss is not None and acc is not None
        return EvalResult(
            loss.detach().cpu(), acc.cpu(), torch.softmax(logits, -1).cpu(), logits.cpu()
        )

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {
            "meta_parameters": {k: v.detach().cpu().clone() for k, v in self.meta_parameters().items()},
            "running_stats": {k: v.cpu().clone() for k, v in self.running.items()},
            # deep copy: the optimizer's own dict aliases its live moment tensors
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "config": self.config.to_dict(),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        meta = self.meta_parameters()
        missing = set(meta) ^ set(state["meta_parameters"])
        if missing:
            raise ValueError(f"checkpoint does not match this config: parameters {sorted(missing)}")
        for k, v in state["meta_parameters"].items():
            meta[k].copy_(v)
        for k, v in state["running_stats"].items():
            self.running[k].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])


# ---------------------------------------------------------------------- helpers


def joined_results(parts: Sequence[EvalResult]) -> EvalResult:
    """The results of consecutive parts of a batch's tasks as one (the first part alone if only
    one)."""
    if len(parts) == 1:
        return parts[0]
    return EvalResult(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(EvalResult)))


def initial_state(
    config: Config, device: torch.device, dtype: torch.dtype
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """A fresh learner's (network parameters, LSLR rates, running statistics) for `config`: the
    weights drawn from `model.init_seed`, else the run's seed; the rates all `inner.lr`."""
    spec = model.NetSpec.from_config(config)
    init_seed = config.seed if config.model.init_seed is None else config.model.init_seed
    generator = torch.Generator().manual_seed(init_seed)
    init = model.init_params(spec, generator)
    params = {k: v.to(device, dtype).requires_grad_() for k, v in init.items()}
    rates: dict[str, Tensor] = {}
    if config.inner.lslr:
        for name in spec.adapted_names:
            full = torch.full((config.bn_sets,), config.inner.lr, device=device, dtype=dtype)
            rates[name] = full.requires_grad_()
    running = {k: v.to(device, dtype) for k, v in model.init_running_stats(spec).items()}
    return params, rates, running


def step_plan(config: Config, epoch: int) -> StepPlan:
    """The outer update's MSL weights, derivative order and target steps at `epoch`."""
    c = config
    weights = schedules.msl_weights(c.inner.steps, epoch, c.outer.msl_epochs, c.outer.msl)
    targets = frozenset(i for i, w in enumerate(weights) if w > 0)
    return StepPlan(weights, schedules.use_second_order(c, epoch), targets)


def meta_parameter_dict(params: Mapping[str, Tensor], rates: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Everything the outer loop learns, by name: the network's parameters, then the LSLR rates
    as ``lslr.<tensor>``."""
    out = dict(params)
    out.update({f"lslr.{k}": v for k, v in rates.items()})
    return out


def meta_optimizer(
    meta: Mapping[str, Tensor], config: Config, capturable: bool
) -> torch.optim.Adam:
    """The outer loop's Adam over `meta` (`outer.lr`, `outer.betas`); `capturable` for CUDA
    graphs."""
    o = config.outer
    return torch.optim.Adam(list(meta.values()), lr=o.lr, betas=o.betas, capturable=capturable)


def choose_engine(config: Config) -> str:
    """'auto' is the folded engine, measured faster than the per-task loop at every paper shape
    on the CPU and on CUDA (`mamlpp bench`; benchmarks/RESULTS.md#cpu and #gpu). The loop is the
    reference the tests compare against."""
    return "folded" if config.engine == "auto" else config.engine


def _task(batch: TaskBatch, b: int) -> TaskBatch:
    """Task b without its task dimension (the per-task loop's unbatched tensors)."""
    return TaskBatch(*(t[b] for t in batch))


def _weighted(result: InnerLoopResult, weights: Sequence[float | Tensor]) -> Tensor:
    """sum_i v_i * L_i over the steps whose target loss was computed (per task)."""
    terms = [
        w * loss for w, loss in zip(weights, result.target_losses, strict=True) if loss is not None
    ]
    return torch.stack(terms).sum(0)


def _mean_per_step(results: list[InnerLoopResult], attr: str) -> list[Tensor | None]:
    """Per step, the mean over all tasks (in float64, on the device) of `attr`."""
    per_step: list[Tensor | None] = []
    for i in range(len(getattr(results[0], attr))):
        values = [getattr(r, attr)[i] for r in results]
        if values[0] is None:
            per_step.append(None)
        else:
            per_step.append(torch.stack([v.detach().double().mean() for v in values]).mean())
    return per_step


def _combine_results(parts: list[MetaLossResult], shares: list[float]) -> MetaLossResult:
    """The meta loss's numbers for the whole batch from its task groups' (`shares`: each group's
    fraction of the tasks): loss, per-step means and batch statistics weighted by the shares."""

    def weighted(values: Sequence[Tensor | None]) -> Tensor | None:
        present = [v for v in values if v is not None]
        if len(present) < len(values):
            return None  # a step without a target loss (MSL weight 0), in every group
        return torch.stack([v * s for v, s in zip(present, shares, strict=True)]).sum()

    def per_step(attr: str) -> list[Tensor | None]:
        return [weighted(step) for step in zip(*(getattr(p, attr) for p in parts), strict=True)]

    first = parts[0]
    return MetaLossResult(
        loss=sum(p.loss.detach() * s for p, s in zip(parts, shares, strict=True)),  # type: ignore[arg-type]
        step_loss_values=per_step("step_loss_values"),
        step_accuracy_values=per_step("step_accuracy_values"),
        msl_weights=first.msl_weights,
        second_order=first.second_order,
        bn_stats=_average_stats([p.bn_stats for p in parts], shares),
    )


def _average_stats(
    per_part: list[list[model.BatchNormStats]], weights: Sequence[float] | None = None
) -> list[model.BatchNormStats]:
    """Average the i-th forward pass's statistics over the parts: tasks (equal weights, as the
    folded engine does) or task groups (`weights`: their fractions of the tasks)."""

    def average(values: list[Tensor]) -> Tensor:
        stacked = torch.stack(values)
        if weights is None:
            return stacked.mean(0)
        return (stacked * stacked.new_tensor(weights).view(-1, *[1] * (stacked.dim() - 1))).sum(0)

    return [
        model.BatchNormStats(
            same[0].layer,
            same[0].step,
            average([s.mean for s in same]),
            average([s.var for s in same]),
        )
        for same in zip(*per_part, strict=True)
    ]


@torch.no_grad()
def clip_gradients(meta: Mapping[str, Tensor], clip: float | None) -> None:
    """Clamp every meta-gradient to [-clip, clip] in place (no-op for clip None)."""
    if clip is None:
        return
    for p in meta.values():
        if p.grad is not None:
            p.grad.clamp_(-clip, clip)


def gradient_rows(meta: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    """[len(names), 4]: max, min, mean and norm (GRAD_STATS) of |grad| per named tensor, on the
    device (the CUDA-graph step keeps them there; train_step reads them back once)."""
    return absolute_statistics([meta[k].grad.detach() for k in names])  # type: ignore[union-attr]


def absolute_statistics(tensors: list[Tensor]) -> Tensor:
    """[len(tensors), 4]: max, min, mean and norm of |t| per tensor, as vector norms of order
    inf, -inf, 1 (/ numel) and 2 over all tensors at once (`torch._foreach_norm`): a few
    multi-tensor kernels on CUDA instead of ~7 per tensor (benchmarks/op_count.py)."""
    maxs, mins, sums, norms = (torch._foreach_norm(tensors, o) for o in (math.inf, -math.inf, 1, 2))
    means = torch._foreach_div(sums, [float(t.numel()) for t in tensors])
    return torch.stack([torch.stack(v) for v in (maxs, mins, means, norms)], 1)
