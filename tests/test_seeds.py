"""SeedStack (several seeds as one folded step) against separate MetaLearners, in float64.

Each seed must end with its own run's parameters, Adam moments, running statistics, losses,
accuracies and gradient statistics; the only allowed difference is summation order (and the
CPU's task-thread groups, off in the separate learners here). Measured: first order agrees to
1e-13; second order to 8e-11 after three steps, the largest on the conv biases, whose exact
gradient is zero (batch norm removes them) so that Adam normalises rounding noise into steps.
Hence the tolerance 1e-10 (relative to max(1, |value|)).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mamlpp.config import Config
from mamlpp.data.batch import TaskBatch
from mamlpp.engine.learner import MetaLearner
from mamlpp.engine.seeds import SeedStack
from mamlpp.kernels import KernelOptions
from mamlpp.presets import synthetic_config

ONE_GROUP = KernelOptions(task_threads=False)
TOL = 1e-10


def random_batch(c: Config, tasks: int, seed: int) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    n, k, q = c.data.n_way, c.data.k_shot, c.data.target_per_class
    shape = (c.in_channels, c.image_size, c.image_size)
    return TaskBatch(
        torch.rand(tasks, n * k, *shape, generator=g, dtype=torch.float64),
        torch.randint(n, (tasks, n * k), generator=g),
        torch.rand(tasks, n * q, *shape, generator=g, dtype=torch.float64),
        torch.randint(n, (tasks, n * q), generator=g),
    )


def tiny(**changes: object) -> Config:
    c = synthetic_config()
    return replace(
        c,
        data=replace(c.data, n_way=3, k_shot=1, target_per_class=2),
        model=replace(c.model, filters=4),
        outer=replace(c.outer, msl_epochs=2, meta_batch_size=2, grad_clip=0.05),
        **changes,  # type: ignore[arg-type]
    )


def close(a: object, b: object, what: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
        assert diff <= TOL * max(1.0, b.abs().max().item() if b.numel() else 1.0), (what, diff)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=TOL, abs=TOL), what
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), what
        for k in a:
            close(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{what}[{i}]")
    else:
        assert a == b, (what, a, b)


def compare_training(configs: list[Config], epochs: list[int]) -> None:
    tasks = configs[0].outer.meta_batch_size
    stack = SeedStack(configs, dtype=torch.float64, kernel_options=ONE_GROUP)
    singles = [MetaLearner(c, dtype=torch.float64, kernel_options=ONE_GROUP) for c in configs]
    for s, single in enumerate(singles):  # the same initial state
        close(stack.state_dict(s), single.state_dict(), "initial")
    for step, epoch in enumerate(epochs):
        batches = [random_batch(configs[0], tasks, 100 * step + s) for s in range(len(configs))]
        together = stack.train_step(batches, epoch)
        apart = [single.train_step(b, epoch) for single, b in zip(singles, batches, strict=True)]
        for s, (t, a) in enumerate(zip(together, apart, strict=True)):
            close(vars(t), vars(a), f"step {step} seed {s}")
    for s, single in enumerate(singles):
        close(stack.state_dict(s), single.state_dict(), f"seed {s} state")
    eval_batches = [random_batch(configs[0], 3, 999 + s) for s in range(len(configs))]
    for s, (result, single) in enumerate(zip(stack.evaluate(eval_batches), singles, strict=True)):
        expected = single.evaluate(eval_batches[s])
        close(vars(result), vars(expected), f"evaluate seed {s}")


@pytest.mark.parametrize(
    ("lslr", "per_step_bn", "order", "seeds"),
    [
        (True, True, "second", 3),
        (False, False, "second", 2),
        (True, False, "first", 2),
        (False, True, "first", 3),
    ],
)
def test_seeds_together_equal_separate_learners(lslr: bool, per_step_bn: bool, order: str, seeds: int) -> None:
    """MSL on: epochs 0 and 1 weigh every step, epoch 2 (>= msl_epochs) only the last."""
    base = tiny()
    base = replace(
        base,
        inner=replace(base.inner, lslr=lslr, order=order),  # type: ignore[arg-type]
        bn=replace(base.bn, per_step_stats=per_step_bn, per_step_affine=per_step_bn),
    )
    compare_training([replace(base, seed=s) for s in range(seeds)], [0, 1, 2])


@pytest.mark.parametrize("downsample", ["stride", "avg_pool"])
def test_other_first_stage_kernels_and_running_statistics(downsample: str) -> None:
    """The folded-BN first stage (stride) and the plain path (avg_pool), MSL off, evaluation
    with the running statistics, clipping of the network's gradients only."""
    base = tiny()
    base = replace(
        base,
        model=replace(base.model, downsample=downsample),
        outer=replace(base.outer, msl=False, clip_inner_rates=False),
        bn=replace(base.bn, eval_stats="running"),
    )
    compare_training([replace(base, seed=s) for s in (4, 7)], [0, 1])


def test_learner_views_and_state_round_trip() -> None:
    configs = [replace(tiny(), seed=s) for s in range(2)]
    stack = SeedStack(configs, dtype=torch.float64, kernel_options=ONE_GROUP)
    stack.train_step([random_batch(configs[0], 2, s) for s in range(2)], 0)
    view = stack.learner(1)
    assert view.config.seed == 1
    close(view.state_dict(), stack.state_dict(1), "view")
    other = SeedStack([replace(c, seed=c.seed + 10) for c in configs], dtype=torch.float64)
    other.load_state_dicts([stack.state_dict(0), stack.state_dict(1)])
    batches = [random_batch(configs[0], 2, 50 + s) for s in range(2)]
    close(
        [vars(r) for r in other.train_step(batches, 1)],
        [vars(r) for r in stack.train_step(batches, 1)],
        "resumed",
    )


def test_seed_stack_refuses_what_it_cannot_train_together() -> None:
    c = tiny()
    with pytest.raises(ValueError, match="same config but for their seeds"):
        SeedStack([c, replace(c, inner=replace(c.inner, steps=3))])
    with pytest.raises(ValueError, match="folded engine"):
        SeedStack([replace(c, engine="loop")])
    stack = SeedStack([c, replace(c, seed=1)], dtype=torch.float64)
    fresh = MetaLearner(c, dtype=torch.float64)
    fresh.train_step(random_batch(c, 2, 0), 0)
    with pytest.raises(ValueError, match="different steps"):
        stack.load_state_dicts([fresh.state_dict(), MetaLearner(c, dtype=torch.float64).state_dict()])


def test_graphed_seed_step_logic_equals_train_step_without_recording() -> None:
    """The CUDA-graph step's static-input iteration, run unrecorded on the CPU, updates a
    SeedStack exactly as its eager train_step (through MSL's switch: two graphs)."""
    from mamlpp.engine.seeds import GraphedSeedStep

    configs = [replace(tiny(), seed=s) for s in range(3)]
    eager = SeedStack(configs, dtype=torch.float64)
    graphed = SeedStack(configs, dtype=torch.float64)
    step = GraphedSeedStep(graphed, record=False)
    for epoch in range(3):
        batch = eager.join([random_batch(configs[0], 2, 10 * epoch + s) for s in range(3)])
        a, g = eager.train_step(batch, epoch), step(batch, epoch)
        for s in range(3):
            assert g[s].loss == pytest.approx(a[s].loss, rel=1e-12)
            assert g[s].accuracy == pytest.approx(a[s].accuracy, rel=1e-12)
            close(g[s].grad_stats, a[s].grad_stats, f"epoch {epoch} seed {s}")
    assert len(step.graphs) == 2
    for s in range(3):
        close(graphed.state_dict(s)["meta_parameters"], eager.state_dict(s)["meta_parameters"], "params")
        close(graphed.state_dict(s)["running_stats"], eager.state_dict(s)["running_stats"], "running")


def test_evaluate_shared_gives_every_seed_the_same_tasks_in_bounded_passes() -> None:
    """`evaluate_shared(batch)` is `evaluate([batch] * S)` whatever the passes' split (3 tasks
    over 3 seeds: the default bound 4 gives parts of 1 task, max_tasks 6 parts of 2, 9 one
    pass); the default bound and the device rule."""
    from mamlpp.engine.seeds import evaluation_pass_tasks, folds_evaluation

    configs = [replace(tiny(), seed=s) for s in range(3)]
    stack = SeedStack(configs, dtype=torch.float64)
    stack.train_step([random_batch(configs[0], 2, s) for s in range(3)], 0)
    batch = random_batch(configs[0], 3, 7)
    whole = stack.evaluate([batch] * 3)
    for max_tasks in (None, 6, 9):
        result = stack.evaluate_shared(batch, max_tasks)
        assert len(result) == 3
        for s in range(3):
            close(vars(result[s]), vars(whole[s]), f"seed {s}")
    assert not torch.equal(whole[0].logits, whole[1].logits)
    c = configs[0]  # meta-batch 2, 2 steps
    assert evaluation_pass_tasks(c, 3) == 4 and evaluation_pass_tasks(c, 600) == 600
    assert folds_evaluation(c, "cuda") and folds_evaluation(c, torch.device("cuda", 0))
    assert not folds_evaluation(c, "cpu") and not folds_evaluation(replace(c, engine="loop"), "cuda")
