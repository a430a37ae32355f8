"""MAML++ components against independent computations that tests/test_engine.py and
tests/test_fidelity.py do not already make: a hand-written inner loop (plain autograd, one task
at a time, `model.forward_task`), hand-worked schedule values, the authors' formulas transcribed,
torch's own clamp, and the chain rule. float64 throughout, tiny networks."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mamlpp.config import Config
from mamlpp.data.batch import TaskBatch
from mamlpp.engine import model, schedules
from mamlpp.engine.learner import MetaLearner
from mamlpp.kernels import KernelOptions
from mamlpp.presets import synthetic_config
from tests.support.tiny import random_batch

ONE_GROUP = KernelOptions(task_threads=False)


def tiny(steps: int = 2, eval_steps: int = 2, **changes: object) -> Config:
    """3-way 1-shot, 2 target images per class, 3 filters; MAML++ (MSL, LSLR, BNWB, BNRS)."""
    c = synthetic_config()
    c = replace(
        c,
        data=replace(c.data, n_way=3, k_shot=1, target_per_class=2),
        model=replace(c.model, filters=3),
        inner=replace(c.inner, steps=steps, eval_steps=eval_steps, order="first"),
        outer=replace(c.outer, msl_epochs=10, meta_batch_size=2),
    )
    return replace(c, **changes)  # type: ignore[arg-type]


def hand_adapt(learner: MetaLearner, batch: TaskBatch, b: int, steps: int) -> list[torch.Tensor]:
    """Task b adapted by hand: `steps` plain SGD steps on the support cross-entropy at the
    LSLR rates' initial value alpha, batch statistics, BN set s at step s. Returns the target
    logits after each step."""
    spec, params, running = learner.spec, learner.params, learner.running
    fast = {k: params[k] for k in learner.adapted_names}
    xs, ys = batch.support_x[b].double(), batch.support_y[b]
    xt = batch.target_x[b].double()
    out = []
    for s in range(steps):
        loss = F.cross_entropy(model.forward_task(fast, params, running, xs, s, spec), ys)
        grads = torch.autograd.grad(loss, list(fast.values()))
        fast = {k: w - learner.config.inner.lr * g for (k, w), g in zip(fast.items(), grads, strict=True)}
        out.append(model.forward_task(fast, params, running, xt, s, spec))
    return out


# ---------------------------------------------------------------- MSL


def authors_msl_weights(k: int, epoch: int, big_e: int) -> list[float]:
    """get_per_step_loss_importance_vector (few_shot_learning_system.py at 86964701),
    transcribed; the code uses it only while epoch < multi_step_loss_num_epochs and the last
    step's loss alone afterwards."""
    if epoch >= big_e:
        return [0.0] * (k - 1) + [1.0]
    loss_weights = np.ones(shape=(k,)) * (1.0 / k)
    decay_rate = 1.0 / k / big_e
    min_value_for_non_final_losses = 0.03 / k
    for i in range(len(loss_weights) - 1):
        loss_weights[i] = np.maximum(loss_weights[i] - (epoch * decay_rate), min_value_for_non_final_losses)
    loss_weights[-1] = np.minimum(
        loss_weights[-1] + (epoch * (k - 1) * decay_rate), 1.0 - ((k - 1) * min_value_for_non_final_losses)
    )
    return loss_weights.tolist()


@pytest.mark.parametrize(("k", "big_e"), [(1, 10), (2, 15), (3, 10), (5, 100), (8, 15)])
def test_msl_weights_equal_the_authors_formula_at_every_epoch(k: int, big_e: int) -> None:
    for epoch in range(big_e + 3):
        ours = schedules.msl_weights(k, epoch, big_e, enabled=True)
        assert ours == pytest.approx(authors_msl_weights(k, epoch, big_e), abs=1e-15), epoch


def test_meta_loss_weighs_hand_computed_step_losses_by_the_annealed_weights() -> None:
    """K=3, E=10: at epoch 4 the weights are 1/3 - 4/30 = 0.2 (twice) and 1/3 + 8/30 = 0.6; at
    epoch 9, 1/30 (twice) and 28/30; from epoch 10 on, the last step alone. The meta loss is
    the mean over tasks of sum_i v_i L_i, L_i from a hand-written inner loop."""
    c = tiny(steps=3, eval_steps=3)
    assert c.outer.msl and c.inner.lslr
    learner = MetaLearner(c, dtype=torch.float64, kernel_options=ONE_GROUP)
    batch = random_batch(c, 2)
    losses = torch.tensor([
        [F.cross_entropy(z, batch.target_y[b]).item() for z in hand_adapt(learner, batch, b, 3)]
        for b in range(2)
    ], dtype=torch.float64)  # fmt: skip
    assert (losses[:, 0] - losses[:, 2]).abs().min() > 1e-3  # the weights are told apart
    cases = {0: [1 / 3] * 3, 4: [0.2, 0.2, 0.6], 9: [1 / 30, 1 / 30, 28 / 30], 10: [0, 0, 1], 25: [0, 0, 1]}
    for epoch, weights in cases.items():
        expected = (losses * torch.tensor(weights, dtype=torch.float64)).sum(1).mean().item()
        result = learner.meta_loss(batch, epoch)
        assert result.loss.item() == pytest.approx(expected, rel=1e-12), epoch
        assert result.msl_weights == pytest.approx(weights, abs=1e-15), epoch
    off = MetaLearner(replace(c, outer=replace(c.outer, msl=False)), dtype=torch.float64)
    assert off.meta_loss(batch, 0).loss.item() == pytest.approx(losses[:, 2].mean().item(), rel=1e-12)


# ---------------------------------------------------------------- gradient clipping


def _unclipped_gradients(c: Config, batch: TaskBatch) -> dict[str, torch.Tensor]:
    learner = MetaLearner(c, dtype=torch.float64, kernel_options=ONE_GROUP)
    meta = learner.meta_parameters()
    grads = torch.autograd.grad(learner.meta_loss(batch, 0).loss, list(meta.values()), allow_unused=True)
    return {k: g for k, g in zip(meta, grads, strict=True) if g is not None}


@pytest.mark.parametrize("clip_rates", [True, False])
def test_clipping_clamps_each_gradient_element_as_torch_clamp_does(clip_rates: bool) -> None:
    """The gradients Adam receives are torch.clamp(unclipped, -clip, clip) element by element
    (the authors' `param.grad.data.clamp_(-10, 10)`), not rescaled by a norm; the LSLR rates'
    are left alone with clip_inner_rates off. clip: the median |gradient| of the network, so
    that about half the elements are clipped."""
    base = tiny()
    batch = random_batch(base, 2)
    unclipped = _unclipped_gradients(base, batch)
    network = torch.cat([g.flatten() for k, g in unclipped.items() if not k.startswith("lslr.")])
    clip = float(network.abs().median())
    c = replace(base, outer=replace(base.outer, grad_clip=clip, clip_inner_rates=clip_rates))
    learner = MetaLearner(c, dtype=torch.float64, kernel_options=ONE_GROUP)
    learner.train_step(batch, epoch=0)  # .grad still holds what Adam was given
    clipped_somewhere = {False: 0, True: 0}
    for name, p in learner.meta_parameters().items():
        raw = unclipped.get(name)
        if raw is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        is_rate = name.startswith("lslr.")
        expected = raw.clamp(-clip, clip) if (clip_rates or not is_rate) else raw
        torch.testing.assert_close(p.grad, expected, rtol=1e-12, atol=1e-15, msg=name)
        clipped_somewhere[is_rate] += int((raw.abs() > clip).sum())
    assert clipped_somewhere[False] > 0 and clipped_somewhere[True] > 0


# ---------------------------------------------------------------- per-step BN running statistics


def test_running_statistics_update_by_hand_and_only_the_steps_used() -> None:
    """MSL off, 2 training steps, 3 evaluation steps: set 0 of layer 0 receives one update, the
    support set's conv0 statistics at the initial weights (mean over images and pixels,
    unbiased variance, averaged over the tasks) with momentum 0.1; set 1 (step 1's support and
    target passes) changes; set 2, used only at evaluation, stays at (0, 1) in every layer."""
    c = tiny(steps=2, eval_steps=3)
    c = replace(c, outer=replace(c.outer, msl=False))
    assert c.bn.per_step_stats and c.bn.momentum == 0.1
    learner = MetaLearner(c, dtype=torch.float64)
    batch = random_batch(c, 2)
    w0 = learner.params["conv0.weight"].detach().clone()
    b0 = learner.params["conv0.bias"].detach().clone()
    h = torch.stack([F.conv2d(batch.support_x[b].double(), w0, b0, padding=1) for b in range(2)])
    mean = h.mean((1, 3, 4)).mean(0)
    var = h.var((1, 3, 4), unbiased=True).mean(0)
    learner.train_step(batch, epoch=0)
    rm, rv = learner.running["bn0.running_mean"], learner.running["bn0.running_var"]
    torch.testing.assert_close(rm[0], 0.1 * mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rv[0], 0.9 + 0.1 * var, rtol=1e-12, atol=1e-14)
    for i in range(c.model.stages):
        m, v = learner.running[f"bn{i}.running_mean"], learner.running[f"bn{i}.running_var"]
        assert (m[1] != 0).all() and (v[1] != 1).all(), i
        assert torch.equal(m[2], torch.zeros_like(m[2])) and torch.equal(v[2], torch.ones_like(v[2])), i
    shared = MetaLearner(replace(c, bn=replace(c.bn, per_step_stats=False)), dtype=torch.float64)
    assert shared.running["bn0.running_mean"].shape == (1, c.model.filters)


# ---------------------------------------------------------------- per-step BN scale and shift


def test_per_step_affine_sets_chain_rule_and_causality() -> None:
    """BNWB with every set equal to the shared pair computes the shared network: the same meta
    loss, and the shared pair's gradient is the sum of the sets' gradients (chain rule). Step s
    uses set s: changing set 1 leaves the target loss after step 0 unchanged and moves the one
    after step 1; the evaluation-only set 2 gets no gradient."""
    c = tiny(steps=2, eval_steps=3)
    batch = random_batch(c, 2)
    per_step = MetaLearner(c, dtype=torch.float64, kernel_options=ONE_GROUP)
    shared_c = replace(c, bn=replace(c.bn, per_step_affine=False))
    shared = MetaLearner(shared_c, dtype=torch.float64, kernel_options=ONE_GROUP)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in shared.params.items():
            if name.startswith("bn"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
                per_step.params[name].copy_(p.expand_as(per_step.params[name]))
            else:
                assert torch.equal(p, per_step.params[name])
    names = [k for k in shared.params if k.startswith("bn")]
    losses, grads = {}, {}
    for key, learner in (("shared", shared), ("per_step", per_step)):
        losses[key] = learner.meta_loss(batch, 1).loss
        found = torch.autograd.grad(losses[key], [learner.params[k] for k in names], allow_unused=True)
        grads[key] = dict(zip(names, found, strict=True))
    assert losses["per_step"].item() == pytest.approx(losses["shared"].item(), rel=1e-12)
    for k in names:
        sets = grads["per_step"][k]
        assert sets is not None and sets.shape[0] == 3
        torch.testing.assert_close(sets.sum(0, keepdim=True), grads["shared"][k], rtol=1e-10, atol=1e-13)
        assert not sets[2].any(), k  # evaluation-only set
        if k.endswith(".weight"):
            assert sets[0].abs().max() > 1e-6 and sets[1].abs().max() > 1e-6, k
    before = [float(v) for v in per_step.meta_loss(batch, 1).step_loss_values if v is not None]
    with torch.no_grad():
        per_step.params["bn1.weight"][1].mul_(1.5)
        per_step.params["bn1.bias"][1].add_(0.2)
    after = [float(v) for v in per_step.meta_loss(batch, 1).step_loss_values if v is not None]
    assert len(before) == len(after) == 2  # MSL at epoch 1: both steps' target losses
    assert after[0] == pytest.approx(before[0], rel=1e-13)
    assert abs(after[1] - before[1]) > 1e-4


# ---------------------------------------------------------------- evaluation with the inner loop


def test_evaluation_adapts_with_each_steps_learned_rate_and_bn_set() -> None:
    """evaluate() with LSLR rates set to distinct values per step and per tensor, 3 evaluation
    steps (one more than training, its BN set 2 made different) against the hand-written
    inner loop: probabilities, per-task loss (mean cross-entropy) and accuracy (argmax)."""
    c = tiny(steps=2, eval_steps=3)
    learner = MetaLearner(c, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for rates in learner.rates.values():
            rates.copy_(torch.rand(3, generator=g, dtype=torch.float64) * 0.2)
        for name, p in learner.params.items():
            if name.startswith("bn"):
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    batch = random_batch(c, 2)
    result = learner.evaluate(batch)
    for b in range(2):
        spec, params, running = learner.spec, learner.params, learner.running
        fast = {k: params[k].detach() for k in learner.adapted_names}
        for s in range(3):
            fast = {k: v.requires_grad_() for k, v in fast.items()}
            support = model.forward_task(fast, params, running, batch.support_x[b].double(), s, spec)
            grads = torch.autograd.grad(F.cross_entropy(support, batch.support_y[b]), list(fast.values()))
            fast = {k: (w - learner.rates[k][s] * gk).detach() for (k, w), gk in zip(fast.items(), grads, strict=True)}
        logits = model.forward_task(fast, params, running, batch.target_x[b].double(), 2, spec).detach()
        torch.testing.assert_close(result.probs[b], torch.softmax(logits, -1), rtol=1e-10, atol=1e-12)
        loss = F.cross_entropy(logits, batch.target_y[b]).item()
        assert result.loss[b].item() == pytest.approx(loss, rel=1e-10)
        hits = (logits.argmax(-1) == batch.target_y[b]).double().mean().item()
        assert result.accuracy[b].item() == pytest.approx(hits, abs=1e-7)  # kept in float32


# ---------------------------------------------------------------- the test ensemble's summary


def test_ensemble_summary_by_hand() -> None:
    """Per-task accuracies [1, 0.5, 0.5, 0]: mean 0.5, sample std sqrt(0.5 / 3), 95% CI
    half-width 1.96 std / sqrt(4)."""
    from mamlpp.runs.ensemble import summarise

    got = summarise(torch.tensor([1.0, 0.5, 0.5, 0.0], dtype=torch.float64))
    std = math.sqrt(0.5 / 3)
    assert got == pytest.approx({"accuracy": 0.5, "std": std, "ci95": 1.96 * std / 2, "num_tasks": 4})
    assert summarise(torch.tensor([0.8]))["ci95"] == 0.0
