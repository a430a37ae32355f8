"""The engine against independent computations: finite differences, a per-task loop, hand-worked
MSL weights, hand-written first-order references."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from mamlpp.config import Config
from mamlpp.data.batch import TaskBatch
from mamlpp.engine import model, schedules
from mamlpp.engine.inner_loop import task_loss
from mamlpp.engine.learner import MetaLearner
from mamlpp.kernels import KernelOptions, cpu
from mamlpp.presets import synthetic_config
from tests.support.tiny import random_batch


def smooth_config(**changes: object) -> Config:
    """A tiny MAML++ net with every component on, made smooth (softplus, average pooling) so
    that finite differences are meaningful (ReLU/max-pool make the meta loss piecewise)."""
    c = synthetic_config()
    c = replace(
        c,
        data=replace(c.data, n_way=3, k_shot=1, target_per_class=2),
        model=replace(c.model, filters=3, activation="softplus", downsample="avg_pool"),
        inner=replace(c.inner, steps=2, eval_steps=2, lslr=True, order="second"),
        outer=replace(c.outer, msl=True, msl_epochs=10, meta_batch_size=2),
    )
    return replace(c, **changes)  # type: ignore[arg-type]


def meta_gradients(learner: MetaLearner, batch: TaskBatch, epoch: int) -> dict[str, torch.Tensor]:
    meta = learner.meta_parameters()
    loss = learner.meta_loss(batch, epoch).loss
    grads = torch.autograd.grad(loss, list(meta.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(meta.items(), grads)}


# ---------------------------------------------------------------- second order vs finite diffs


def test_second_order_gradients_match_central_finite_differences() -> None:
    c = smooth_config()
    learner = MetaLearner(c, dtype=torch.float64)
    batch = random_batch(c, 2)
    grads = meta_gradients(learner, batch, epoch=1)
    gen = torch.Generator().manual_seed(1)
    checked = set()
    for name, p in learner.meta_parameters().items():
        if name.startswith("conv") and name.endswith(".bias"):
            continue  # feeds straight into batch norm: true gradient 0, only rounding noise
        for _ in range(2):
            i = int(torch.randint(p.numel(), (1,), generator=gen))
            numeric = _central_difference(learner, batch, p, i, eps=1e-6)
            analytic = grads[name].flatten()[i].item()
            assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-8), name
        checked.add(name.split(".")[0])
    assert {"conv0", "bn0", "linear", "lslr"} <= checked


@torch.no_grad()
def _central_difference(
    learner: MetaLearner, batch: TaskBatch, p: torch.Tensor, i: int, eps: float
) -> float:
    flat = p.view(-1)
    old = flat[i].item()
    values = []
    for delta in (eps, -eps):
        flat[i] = old + delta
        with torch.enable_grad():
            values.append(learner.meta_loss(batch, epoch=1).loss.item())
    flat[i] = old
    return (values[0] - values[1]) / (2 * eps)


# ---------------------------------------------------------------- first order and DA


def _first_order_reference(learner: MetaLearner, batch: TaskBatch, epoch: int) -> dict[str, torch.Tensor]:
    """Hand-written MAML with detached inner gradients, one task at a time."""
    c, spec = learner.config, learner.spec
    weights = learner.msl_weights(epoch)
    meta = learner.meta_parameters()
    total = torch.zeros((), dtype=torch.float64)
    for b in range(batch.num_tasks):
        fast = {k: learner.params[k] for k in learner.adapted_names}
        for step in range(c.inner.steps):
            logits = model.forward_task(fast, learner.params, learner.running, batch.support_x[b].double(), step, spec)
            loss = task_loss(logits, batch.support_y[b])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {
                k: w - learner.rates[k][step] * g.detach()
                for (k, w), g in zip(fast.items(), grads)
            }
            target = model.forward_task(fast, learner.params, learner.running, batch.target_x[b].double(), step, spec)
            total = total + weights[step] * task_loss(target, batch.target_y[b])
    grads = torch.autograd.grad(total / batch.num_tasks, list(meta.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(meta.items(), grads)}


def test_first_order_equals_second_order_with_detached_inner_gradients() -> None:
    c = smooth_config(inner=replace(smooth_config().inner, order="first"))
    learner = MetaLearner(c, dtype=torch.float64)
    batch = random_batch(c, 2)
    ours = meta_gradients(learner, batch, epoch=0)
    reference = _first_order_reference(learner, batch, epoch=0)
    for k in ours:
        torch.testing.assert_close(ours[k], reference[k], rtol=1e-9, atol=1e-12, msg=k)
    second = MetaLearner(replace(c, inner=replace(c.inner, order="second")), dtype=torch.float64)
    exact = meta_gradients(second, batch, epoch=0)
    gap = (exact["conv1.weight"] - ours["conv1.weight"]).norm() / exact["conv1.weight"].norm()
    assert gap > 1e-2, "first- and second-order meta-gradients should differ"


def test_derivative_order_annealing_switches_at_the_configured_epoch() -> None:
    base = smooth_config()
    c = replace(base, inner=replace(base.inner, order="annealed", first_order_epochs=3))
    assert [schedules.use_second_order(c, e) for e in range(5)] == [False, False, False, True, True]
    batch = random_batch(c, 2)
    learner = MetaLearner(c, dtype=torch.float64)
    first = MetaLearner(replace(c, inner=replace(c.inner, order="first")), dtype=torch.float64)
    second = MetaLearner(replace(c, inner=replace(c.inner, order="second")), dtype=torch.float64)
    # MSL weights differ by epoch; compare like with like at the two epochs around the switch.
    for epoch, twin in ((2, first), (3, second)):
        ours, theirs = meta_gradients(learner, batch, epoch), meta_gradients(twin, batch, epoch)
        assert learner.meta_loss(batch, epoch).second_order == (epoch >= 3)
        for k in ours:
            torch.testing.assert_close(ours[k], theirs[k], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- vectorised vs loop


def blocky(images: torch.Tensor) -> torch.Tensor:
    """Binary images of flat 4x4 blocks, like Omniglot's strokes and background: max-pooling
    windows full of ties, where which element gets the gradient must match max_pool2d."""
    coarse = (images[..., ::4, ::4] > 0.5).to(images.dtype)
    return coarse.repeat_interleave(4, -2).repeat_interleave(4, -1)


@pytest.mark.parametrize(
    ("downsample", "images"), [("max_pool", "random"), ("stride", "random"), ("max_pool", "blocky")]
)
def test_folded_tasks_agree_with_the_per_task_loop(downsample: str, images: str) -> None:
    base = synthetic_config()
    c = replace(base, model=replace(base.model, downsample=downsample))
    batch = random_batch(c, 3)
    if images == "blocky":
        batch = TaskBatch(blocky(batch.support_x), batch.support_y, blocky(batch.target_x), batch.target_y)
    learners = {e: MetaLearner(replace(c, engine=e), dtype=torch.float64) for e in ("folded", "loop")}
    results = {e: learners[e].meta_loss(batch, epoch=0) for e in learners}
    assert results["folded"].loss.item() == pytest.approx(results["loop"].loss.item(), abs=1e-12)
    grads = {e: meta_gradients(learners[e], batch, 0) for e in learners}
    for k in grads["loop"]:
        torch.testing.assert_close(grads["folded"][k], grads["loop"][k], rtol=0, atol=1e-10, msg=k)
    for e in learners:
        learners[e].train_step(batch, epoch=0)
    for k in learners["loop"].running:
        torch.testing.assert_close(
            learners["folded"].running[k], learners["loop"].running[k], rtol=0, atol=1e-10
        )
    ev = {e: learners[e].evaluate(batch) for e in learners}
    torch.testing.assert_close(ev["folded"].probs, ev["loop"].probs, rtol=0, atol=1e-10)
    for e in learners:  # evaluation with the running statistics (the first stage's other path)
        learners[e].config = replace(c, engine=e, bn=replace(c.bn, eval_stats="running"))
    ev = {e: learners[e].evaluate(batch) for e in learners}
    torch.testing.assert_close(ev["folded"].probs, ev["loop"].probs, rtol=0, atol=1e-10)


# ---------------------------------------------------------------- MSL weights


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, [0.2, 0.2, 0.2, 0.2, 0.2]),
        (1, [0.18, 0.18, 0.18, 0.18, 0.28]),
        (5, [0.1, 0.1, 0.1, 0.1, 0.6]),
        (9, [0.02, 0.02, 0.02, 0.02, 0.92]),
        (10, [0, 0, 0, 0, 1]),
        (20, [0, 0, 0, 0, 1]),
    ],
)
def test_msl_weights_follow_the_formula(epoch: int, expected: list[float]) -> None:
    w = schedules.msl_weights(5, epoch, 10, enabled=True)
    assert w == pytest.approx(expected, abs=1e-12)
    assert sum(w) == pytest.approx(1.0)


def test_msl_weights_floor_and_cap_and_off() -> None:
    # K=5, E=100, epoch 99: the linear decay (0.002) is below the floor 0.03/5 = 0.006 and the
    # last weight (0.992) above its cap 1 - 4*0.006 = 0.976.
    assert schedules.msl_weights(5, 99, 100, True) == pytest.approx([0.006] * 4 + [0.976])
    assert schedules.msl_weights(5, 0, 10, enabled=False) == [0, 0, 0, 0, 1]


def test_msl_skips_steps_with_zero_weight() -> None:
    c = smooth_config()
    learner = MetaLearner(c, dtype=torch.float64)
    batch = random_batch(c, 2)
    assert None not in learner.meta_loss(batch, epoch=0).step_losses
    assert learner.meta_loss(batch, epoch=10).step_losses[0] is None


# ---------------------------------------------------------------- batch norm


def test_per_step_running_statistics_differ_and_step_i_uses_set_i() -> None:
    c = synthetic_config()
    assert c.bn.per_step_stats and c.bn_sets == 2
    learner = MetaLearner(c, dtype=torch.float64)
    batch = random_batch(c, 2)
    for _ in range(3):
        learner.train_step(batch, epoch=0)
    rm = learner.running["bn1.running_mean"]
    assert not torch.allclose(rm[0], rm[1])
    x, spec = batch.support_x.double(), learner.spec
    fast = {k: v.detach().expand(2, *v.shape) for k, v in learner.params.items() if k in learner.adapted_names}
    out = model.forward_tasks(fast, learner.params, learner.running, x, 1, spec, mode="running")
    # Move set 1 to slot 0 (running stats, and BNWB's scale/shift, which step i also indexes).
    swapped = {k: v.flip(0) for k, v in learner.running.items()}
    affine = {k: v.flip(0) if k.startswith("bn") else v for k, v in learner.params.items()}
    same_set = model.forward_tasks(fast, affine, swapped, x, 0, spec, mode="running")
    other_set = model.forward_tasks(fast, affine, swapped, x, 1, spec, mode="running")
    torch.testing.assert_close(out, same_set)
    assert not torch.allclose(out, other_set)


def test_evaluation_with_batch_or_running_statistics_differs() -> None:
    c = synthetic_config()
    batch = random_batch(c, 2)
    learner = MetaLearner(c, dtype=torch.float64)
    for _ in range(2):
        learner.train_step(batch, epoch=0)
    before = {k: v.clone() for k, v in learner.running.items()}
    transductive = learner.evaluate(batch).probs
    learner.config = replace(c, bn=replace(c.bn, eval_stats="running"))
    inductive = learner.evaluate(batch).probs
    assert (transductive - inductive).abs().max() > 1e-3
    for k in before:  # evaluation never changes the running statistics
        torch.testing.assert_close(learner.running[k], before[k], rtol=0, atol=0)


def test_per_step_affine_has_one_pair_per_step_and_shared_otherwise() -> None:
    c = synthetic_config()
    assert MetaLearner(c).params["bn0.weight"].shape == (c.bn_sets, c.model.filters)
    off = replace(c, bn=replace(c.bn, per_step_affine=False))
    assert MetaLearner(off).params["bn0.weight"].shape == (1, c.model.filters)


# ---------------------------------------------------------------- LSLR


def test_lslr_starts_at_alpha_receives_gradients_and_may_go_negative() -> None:
    c = synthetic_config()
    learner = MetaLearner(c, dtype=torch.float64)
    assert all(r == [c.inner.lr] * c.bn_sets for r in learner.lslr_rates().values())
    batch = random_batch(c, 2)
    grads = meta_gradients(learner, batch, epoch=0)
    # conv biases feed batch norm with batch statistics, which removes them: their rates' exact
    # gradient is zero (rounding noise after a plain conv, exactly 0 in the folded first layer)
    assert all(
        grads[f"lslr.{k}"][0].abs() > 0 for k in learner.adapted_names if not k.endswith("bias")
    )
    assert grads["lslr.linear.bias"][0].abs() > 0
    assert grads["lslr.conv0.bias"].abs().max() < 1e-12
    with torch.no_grad():
        for r in learner.rates.values():
            r.fill_(1e-4)
    learner.optimizer.param_groups[0]["lr"] = 0.01
    c2 = replace(c, outer=replace(c.outer, lr=0.01, cosine=False))
    learner.config = c2
    learner.train_step(batch, epoch=0)
    rates = torch.cat([r.detach() for r in learner.rates.values()])
    assert (rates < 0).any(), "an Adam step of 0.01 from 1e-4 must be allowed below zero"


def test_without_lslr_the_inner_rate_is_the_fixed_alpha() -> None:
    base = synthetic_config()
    c = replace(base, inner=replace(base.inner, lslr=False, lr=0.37, steps=1, eval_steps=1))
    learner = MetaLearner(c, dtype=torch.float64)
    assert not any(k.startswith("lslr.") for k in learner.meta_parameters())
    assert learner.lslr_rates()["conv0.weight"] == [0.37]
    batch = random_batch(c, 1)
    # One inner step by hand: theta - 0.37 * grad, then the target probabilities.
    theta = {k: learner.params[k].detach().requires_grad_() for k in learner.adapted_names}
    loss = task_loss(model.forward_task(theta, learner.params, learner.running, batch.support_x[0].double(), 0, learner.spec), batch.support_y[0])
    grads = torch.autograd.grad(loss, list(theta.values()))
    fast = {k: v - 0.37 * g for (k, v), g in zip(theta.items(), grads)}
    logits = model.forward_task(fast, learner.params, learner.running, batch.target_x[0].double(), 0, learner.spec)
    torch.testing.assert_close(learner.evaluate(batch).probs[0], torch.softmax(logits, -1).detach())


# ---------------------------------------------------------------- optimiser, state, learning


def test_cosine_meta_lr_and_gradient_clipping() -> None:
    c = synthetic_config()
    c = replace(c, schedule=replace(c.schedule, epochs=10), outer=replace(c.outer, grad_clip=1e-3))
    learner = MetaLearner(c, dtype=torch.float64)
    assert learner.meta_lr(0) == pytest.approx(1e-3)
    assert learner.meta_lr(5) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert learner.meta_lr(10) == pytest.approx(1e-5)
    stats = learner.train_step(random_batch(c, 2), epoch=0).grad_stats
    assert max(s["max"] for s in stats.values()) <= 1e-3 + 1e-15
    flat = replace(c, outer=replace(c.outer, cosine=False))
    assert MetaLearner(flat).meta_lr(5) == pytest.approx(1e-3)


def test_state_dict_round_trip_continues_identically() -> None:
    c = synthetic_config()
    batch = random_batch(c, 2)
    a = MetaLearner(c, dtype=torch.float64)
    a.train_step(batch, 0)
    b = MetaLearner(replace(c, seed=99), dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    assert a.train_step(batch, 1).loss == b.train_step(batch, 1).loss
    for k, v in a.meta_parameters().items():
        torch.testing.assert_close(v, b.meta_parameters()[k], rtol=0, atol=0)


def test_seeds_give_different_initialisations() -> None:
    c = synthetic_config()
    a, b = MetaLearner(c), MetaLearner(replace(c, seed=1))
    assert not torch.equal(a.params["conv1.weight"], b.params["conv1.weight"])
    torch.testing.assert_close(a.params["conv1.weight"], MetaLearner(c).params["conv1.weight"])


# ---------------------------------------------------------------- kernels and the graphed step


def test_fused_and_elementwise_batch_norm_give_the_same_meta_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    c = synthetic_config()
    batch = random_batch(c, 2)
    out = {}
    for kernel in ("fused", "elementwise"):
        learner = MetaLearner(c, dtype=torch.float64, kernel_options=KernelOptions(batch_norm=kernel))
        grads = meta_gradients(learner, batch, 0)
        learner.train_step(batch, 0)
        out[kernel] = (grads, learner.running["bn2.running_var"].clone())
    for k in out["fused"][0]:
        torch.testing.assert_close(out["fused"][0][k], out["elementwise"][0][k], rtol=0, atol=1e-12)
    torch.testing.assert_close(out["fused"][1], out["elementwise"][1], rtol=0, atol=1e-12)


def test_graphed_step_logic_equals_train_step_without_recording(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA-graph step's static-input iteration (run unrecorded, on the CPU) must update
    the learner exactly as train_step does; only the recording itself needs a GPU. (On CUDA
    train_step computes the tasks as one group, so the CPU's task threads are off here.)"""
    from mamlpp.engine.cuda_graph import GraphedTrainStep

    c = synthetic_config()
    batches = [random_batch(c, 4, seed=s) for s in range(3)]
    one_group = KernelOptions(task_threads=False)
    eager = MetaLearner(c, dtype=torch.float64, kernel_options=one_group)
    static = MetaLearner(c, dtype=torch.float64, kernel_options=one_group)
    step = GraphedTrainStep(static, record=False)
    for epoch, b in enumerate(batches):
        a, s = eager.train_step(b, epoch), step(b, epoch)
        assert s.loss == pytest.approx(a.loss, rel=1e-12)
        assert s.grad_stats["conv1.weight"]["norm"] == pytest.approx(a.grad_stats["conv1.weight"]["norm"], rel=1e-12)
    for k, v in eager.meta_parameters().items():
        torch.testing.assert_close(static.meta_parameters()[k], v, rtol=0, atol=1e-12)


def test_training_step_is_eager_off_cuda_and_graphs_need_a_gpu() -> None:
    """The trainer's entry: on the CPU the eager train_step (config.cuda_graph is ignored);
    asking to record a graph without a CUDA device is a clear error."""
    from mamlpp.engine.cuda_graph import GraphedTrainStep, training_step

    learner = MetaLearner(synthetic_config())
    assert learner.config.cuda_graph
    assert training_step(learner) == learner.train_step
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedTrainStep(learner)


def test_auto_engine_follows_the_measured_choice() -> None:
    from mamlpp.presets import get_preset

    assert MetaLearner(get_preset("omniglot_5way_1shot_mamlpp").config).engine == "folded"
    assert MetaLearner(get_preset("miniimagenet_5way_1shot_mamlpp").config).engine == "folded"
    pinned = replace(get_preset("miniimagenet_5way_1shot_mamlpp").config, engine="loop")
    assert MetaLearner(pinned).engine == "loop"


@pytest.mark.parametrize(("channels", "height", "width"), [(1, 28, 28), (3, 9, 11)])
def test_first_stage_matmul_equals_conv_batch_norm_and_max_pool(channels: int, height: int, width: int) -> None:
    """`cpu.first_stage_matmul` (patches prepared once, one matmul, pooling by gather) against conv2d,
    batch norm and max_pool2d: values, batch statistics, and first and second derivatives,
    for several input channels and odd image sizes (pooling drops the last row/column)."""
    tasks, n, filters = 3, 4, 5
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(tasks, n, channels, height, width, generator=g) > 0.6).double()
    c = synthetic_config()
    spec = replace(model.NetSpec.from_config(c), in_channels=channels, filters=filters)
    weight = torch.randn(tasks, filters, channels, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(tasks, filters, generator=g, dtype=torch.float64)
    shared = {
        "bn0.weight": torch.rand(spec.affine_sets, filters, generator=g, dtype=torch.float64) + 0.5,
        "bn0.bias": torch.randn(spec.affine_sets, filters, generator=g, dtype=torch.float64),
    }
    leaves = [weight.requires_grad_(), bias.requires_grad_(), *[v.requires_grad_() for v in shared.values()]]
    prepared = cpu.prepare_patch_windows(images, spec)
    probe = torch.randn(n, tasks * filters, height // 2, width // 2, generator=g, dtype=torch.float64)

    def reference(stats: list[model.BatchNormStats]) -> torch.Tensor:
        h = F.conv2d(model.fold_tasks(images), weight.reshape(-1, channels, 3, 3), bias.reshape(-1),
                     padding=1, groups=tasks)
        h = model.batch_norm(h, 0, 1, tasks, shared, {}, spec, "batch", stats)
        return model.activate(F.max_pool2d(h, 2), spec)

    def ours(stats: list[model.BatchNormStats]) -> torch.Tensor:
        return cpu.first_stage_matmul(prepared, weight, bias, 1, shared, spec, stats)

    results = {}
    for name, stage in (("reference", reference), ("ours", ours)):
        stats: list[model.BatchNormStats] = []
        out = stage(stats)
        first = torch.autograd.grad(((out * probe) ** 2).sum(), leaves, create_graph=True)
        second = torch.autograd.grad(sum((d * d).sum() for d in first), leaves)
        results[name] = (out, stats[0], first, second)
    ref, got = results["reference"], results["ours"]
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1].mean, ref[1].mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1].var, ref[1].var, rtol=0, atol=1e-12)
    for order in (2, 3):  # first, then second derivatives
        # conv0's bias cancels in batch norm: its derivatives are 0 up to rounding, judged
        # against the size of the other derivatives
        scale = max(float(b.detach().abs().max()) for b in ref[order])
        for a, b in zip(got[order], ref[order], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * scale)


@pytest.mark.parametrize("size", [14, 7])
def test_max_pool_by_gather_equals_max_pool2d_ties_included(size: int) -> None:
    """The folded engine's pooling against F.max_pool2d on activations full of ties (values
    from {0, 1, 2}): the same outputs, the same element of every window receives the gradient,
    and the same first and second derivatives flow to a parameter before the pooling; odd
    sizes drop the last row and column as max_pool2d does."""
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 3, (2, 6, size, size), generator=g).double()
    probe = torch.randn(2, 6, size // 2, size // 2, generator=g, dtype=torch.float64)
    scale = torch.rand(6, 1, 1, generator=g, dtype=torch.float64).add(0.5).requires_grad_()
    pools = {"ours": cpu.max_pool_by_gather, "torch": lambda h: F.max_pool2d(h, 2)}
    results = {}
    for name, pool in pools.items():
        x = values.clone().requires_grad_()
        (by_input,) = torch.autograd.grad((pool(x) * probe).sum(), x)
        out = pool(values * scale)
        (first,) = torch.autograd.grad(((out * probe) ** 2).sum(), scale, create_graph=True)
        (second,) = torch.autograd.grad(first.pow(2).sum(), scale)
        results[name] = (out, by_input, first, second)
    assert torch.equal(results["ours"][1], results["torch"][1])  # the same tied elements
    for a, b in zip(results["ours"], results["torch"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("tasks", [4, 5])
def test_task_groups_on_threads_equal_one_group(tasks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """train_step and evaluate with the tasks split into groups on parallel threads
    (task_threads, the CPU default) equal the one-group computation: parameters after Adam,
    loss, per-step metrics, gradient statistics, running statistics, per-task evaluation.
    5 tasks make unequal groups (2 + 3), so each group's share must weight its numbers."""
    from mamlpp.kernels import task_threads

    c = synthetic_config()
    batches = [random_batch(c, tasks, seed=s) for s in range(2)]
    cpu = torch.device("cpu")
    groups = task_threads.task_groups(tasks, 1000, cpu)
    assert [(g.start, g.stop) for g in groups] == ([(0, 2), (2, 4)] if tasks == 4 else [(0, 2), (2, 5)])
    assert len(task_threads.task_groups(tasks, 25 << 20, cpu)) == 1  # 2-3 tasks x 25 MiB > 48 MiB
    out, threads = {}, torch.get_num_threads()
    for enabled in (False, True):
        learner = MetaLearner(c, dtype=torch.float64, kernel_options=KernelOptions(task_threads=enabled))
        steps = [learner.train_step(b, epoch) for epoch, b in enumerate(batches)]
        out[enabled] = (learner, steps, learner.evaluate(batches[0]))
    (one, one_steps, one_eval), (split, split_steps, split_eval) = out[False], out[True]
    for a, b in zip(one_steps, split_steps, strict=True):
        assert b.loss == pytest.approx(a.loss, rel=1e-12)
        assert b.step_losses == pytest.approx(a.step_losses, rel=1e-12)
        assert b.accuracy == pytest.approx(a.accuracy, rel=1e-12)
        assert b.grad_stats["conv0.weight"] == pytest.approx(a.grad_stats["conv0.weight"], rel=1e-10)
    # Adam turns the rounding noise in gradients that are 0 in exact arithmetic (a conv bias
    # before batch norm) into updates of ~1e-11, hence atol 1e-10 on the parameters.
    for k, v in one.meta_parameters().items():
        torch.testing.assert_close(split.meta_parameters()[k], v, rtol=1e-10, atol=1e-10)
    for k, v in one.running.items():
        torch.testing.assert_close(split.running[k], v, rtol=0, atol=1e-12)
    for name in ("loss", "accuracy", "probs"):
        torch.testing.assert_close(getattr(split_eval, name), getattr(one_eval, name), rtol=0, atol=1e-12)
    assert torch.get_num_threads() == threads  # the intra-op threads are given back


@pytest.mark.parametrize(
    ("preset", "groups"),
    [("omniglot_5way_1shot_mamlpp", 2), ("omniglot_20way_1shot_mamlpp", 2),
     ("omniglot_20way_5shot_mamlpp", 1), ("miniimagenet_5way_1shot_mamlpp", 1)],
)  # fmt: skip
def test_task_groups_only_where_a_group_fits_a_thread_arena(preset: str, groups: int) -> None:
    """Measured (benchmarks/RESULTS.md): Omniglot 20-way 5-shot (80 MB first-stage output per
    group of 4 tasks) and mini-ImageNet page-fault in the threads' malloc arenas; they run as one
    group."""
    from mamlpp.bench import random_batch as paper_shaped_batch
    from mamlpp.presets import get_preset

    c = get_preset(preset).config
    learner = MetaLearner(c)
    batch = paper_shaped_batch(c, torch.Generator().manual_seed(0))
    found = learner._task_groups(batch)
    assert len(found) == (groups if torch.get_num_threads() >= 2 else 1)


def test_a_task_group_error_reaches_the_caller_and_threads_are_restored() -> None:
    from mamlpp.kernels import task_threads

    threads = torch.get_num_threads()
    groups = [slice(0, 2), slice(2, 4)]

    def work(group: slice) -> int:
        if group.start == 2:
            raise ValueError("bad task in group 2")
        return group.start

    with pytest.raises(ValueError, match="bad task in group 2"):
        task_threads.map_on_threads(work, groups)
    assert torch.get_num_threads() == threads
    assert task_threads.map_on_threads(lambda g: g.stop, groups) == [2, 4]  # in the groups' order


def test_tf32_matmuls_apply_on_cuda_only_and_restore_the_flag() -> None:
    """`tf32_matmul` gives CUDA learners a step context that turns TF32 matmuls on and restores
    torch's setting after it, also after an error; the CPU ignores it. (Its numerical effect
    on a GPU: benchmarks/gpu_paper.py.)"""
    from mamlpp import kernels
    from mamlpp.kernels import cuda

    spec = model.NetSpec.from_config(synthetic_config())
    on_cuda = kernels.choose(torch.device("cuda"), spec, tf32_matmul=True)
    assert on_cuda.precision is cuda.tf32_matmuls and on_cuda.name.endswith("+tf32")
    assert kernels.choose(torch.device("cuda"), spec).precision is not cuda.tf32_matmuls
    assert kernels.choose(torch.device("cpu"), spec, tf32_matmul=True).precision is not cuda.tf32_matmuls
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with cuda.tf32_matmuls():
            assert torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
        with pytest.raises(RuntimeError), cuda.tf32_matmuls():
            raise RuntimeError("a failing step")
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_learners_run_their_steps_under_the_kernels_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """`outer_step` and `evaluate` (single and stacked seeds) enter `Kernels.precision`."""
    import contextlib

    from mamlpp.engine.seeds import SeedStack

    c = replace(synthetic_config(), outer=replace(synthetic_config().outer, meta_batch_size=2))
    entered: list[str] = []

    @contextlib.contextmanager
    def recording() -> Iterator[None]:
        entered.append("in")
        yield

    batch = random_batch(c, 2)
    learner = MetaLearner(c)
    stack = SeedStack([c, replace(c, seed=1)])
    for holder in (learner, stack):
        holder.kernels = replace(holder.kernels, precision=recording)
    learner.train_step(batch, 0)
    learner.evaluate(batch)
    stack.train_step([batch, batch], 0)
    stack.evaluate([batch, batch])
    assert entered == ["in"] * 4


def test_gradient_statistics_equal_the_per_tensor_computation() -> None:
    """`gradient_rows` (vector norms over all tensors at once) against max, min, mean and norm of
    each |grad| computed one tensor at a time, float64."""
    from mamlpp.engine.learner import GRAD_STATS, gradient_rows

    g = torch.Generator().manual_seed(0)
    meta = {name: torch.zeros(shape, dtype=torch.float64) for name, shape in
            (("w", (4, 3, 3, 3)), ("b", (4,)), ("one", (1,)))}  # fmt: skip
    for p in meta.values():
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
    rows = gradient_rows(meta, ["b", "w", "one"])
    for row, name in zip(rows, ["b", "w", "one"], strict=True):
        a = meta[name].grad.abs()  # type: ignore[union-attr]
        expected = torch.stack([a.max(), a.min(), a.mean(), a.norm()])
        torch.testing.assert_close(row, expected, rtol=1e-14, atol=0)
    assert rows.shape == (3, len(GRAD_STATS))

    from mamlpp.engine.seeds import seed_gradient_rows

    stacked = {name: torch.stack([p, 2 * p + 1]) for name, p in meta.items()}
    for name, p in stacked.items():
        p.grad = torch.stack([meta[name].grad, -3 * meta[name].grad])  # type: ignore[list-item]
    per_seed = seed_gradient_rows(stacked, ["b", "w", "one"])
    assert per_seed.shape == (2, 3, len(GRAD_STATS))
    torch.testing.assert_close(per_seed[0], rows, rtol=1e-14, atol=0)
    torch.testing.assert_close(per_seed[1], rows * torch.tensor([3.0, 3, 3, 3], dtype=torch.float64), rtol=1e-14, atol=0)


def test_split_affine_sets_give_the_same_meta_gradients() -> None:
    """CUDA's `Kernels.split_affine` (the BN scale/shift sets unbound once per pass) against
    selecting a set at each use, float64, per-step BN weights: one learner and stacked seeds."""
    from mamlpp import kernels
    from mamlpp.engine.seeds import SeedStack

    spec = model.NetSpec.from_config(synthetic_config())
    assert kernels.choose(torch.device("cuda"), spec).split_affine
    assert not kernels.choose(torch.device("cpu"), spec).split_affine
    c = replace(synthetic_config(), outer=replace(synthetic_config().outer, meta_batch_size=2))
    assert c.bn.per_step_affine
    batch = random_batch(c, 2)

    def gradients(holder: MetaLearner | SeedStack, split: bool) -> list[torch.Tensor]:
        holder.kernels = replace(holder.kernels, split_affine=split)
        joined = holder.join([batch, batch]) if isinstance(holder, SeedStack) else batch
        loss = holder.meta_loss(joined, holder.plan(0)).loss
        params = list(holder.meta_parameters().values())
        return list(torch.autograd.grad(loss.sum(), params, allow_unused=True))

    for make in (lambda: MetaLearner(c, dtype=torch.float64, kernel_options=KernelOptions(task_threads=False)),
                 lambda: SeedStack([c, replace(c, seed=1)], dtype=torch.float64)):  # fmt: skip
        plain, split = gradients(make(), False), gradients(make(), True)
        for a, b in zip(plain, split, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
