"""K steps of inner-loop adaptation, with the target loss after every step that MSL weighs.

One function serves both engines: `forward` decides whether the tensors hold one task
(`model.forward_task`) or B tasks folded together (`model.forward_tasks`). The support loss is
per task ([B], or a scalar for one task); since the tasks are independent, the gradient of its
sum with respect to the task-batched fast weights is every task's own gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

Forward = Callable[[Mapping[str, Tensor], Tensor, int], Tensor]
"""(fast weights, images, step) -> logits [..., n, N]."""
Rates = Mapping[str, Tensor | float]
"""Adapted tensor name -> learning rate per step (a [steps] tensor with LSLR, else alpha; or one
row per task, [tasks, steps], when the tasks belong to different seeds: `engine.seeds`)."""


@dataclass
class InnerLoopResult:
    target_losses: list[Tensor | None] = field(default_factory=list)
    """Per step: the target loss per task after that step, None where not computed."""
    target_accuracies: list[Tensor | None] = field(default_factory=list)
    final_logits: Tensor | None = None
    """Target logits after the last step."""
    fast: Mapping[str, Tensor] = field(default_factory=dict)


def task_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy per task: logits [..., n, N], labels [..., n] -> [...]."""
    per_example = F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="none")
    return per_example.view(labels.shape).mean(-1)


def task_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.detach().argmax(-1) == labels).float().mean(-1)


def _rate(rates: Rates, name: str, step: int, grad: Tensor) -> Tensor | float:
    """The step's rate for `name`: a scalar, or with per-task rates ([tasks, steps]) a [tasks]
    column shaped to broadcast against the task-batched `grad`."""
    r = rates[name]
    if not isinstance(r, Tensor):
        return r
    if r.dim() == 1:
        return r[step]
    return r[:, step].view(-1, *[1] * (grad.dim() - 1))


def inner_loop(
    forward: Forward,
    fast: Mapping[str, Tensor],
    support: tuple[Tensor, Tensor],
    target: tuple[Tensor, Tensor],
    rates: Rates,
    steps: int,
    second_order: bool,
    target_steps: set[int],
) -> InnerLoopResult:
    """Adapt `fast` for `steps` SGD steps on the support set.

    second_order: keep the graph of the inner gradients (create_graph) so the meta-gradient
    flows through them; first order treats them as constants (fast weights still depend on the
    initial weights and on the learning rates). `target_steps`: the steps after which the
    target loss is computed (MSL's nonzero weights); the last step's is always computed.
    """
    result = InnerLoopResult()
    names = list(fast)
    for step in range(steps):
        support_loss = task_loss(forward(fast, support[0], step), support[1])
        grads = torch.autograd.grad(
            support_loss.sum(), [fast[k] for k in names], create_graph=second_order
        )
        fast = {k: fast[k] - _rate(rates, k, step, g) * g for k, g in zip(names, grads, strict=True)}
        if step in target_steps or step == steps - 1:
            logits = forward(fast, target[0], step)
            result.target_losses.append(task_loss(logits, target[1]))
            result.target_accuracies.append(task_accuracy(logits, target[1]))
            result.final_logits = logits
        else:
            result.target_losses.append(None)
            result.target_accuracies.append(None)
    result.fast = fast
    return result
