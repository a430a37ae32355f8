"""Each switch between the paper's text and the authors' code does what docs/fidelity.md says."""

from __future__ import annotations

import math
import zipfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from mamlpp.config import Config, apply_overrides, apply_scale
from mamlpp.data import omniglot
from mamlpp.engine import model, schedules
from mamlpp.engine.learner import MetaLearner
from mamlpp.presets import PRESETS, get_preset, synthetic_config
from mamlpp.runs import ensemble
from mamlpp.runs.resolve import resolve_config, run_name
from tests.support.tiny import random_batch

PRESET = "omniglot_5way_1shot_mamlpp"


def reference(config: Config) -> Config:
    return apply_overrides(config, ["fidelity=reference-code"])


# ---------------------------------------------------------------- resolving a config


def test_fidelity_sets_every_row_and_an_explicit_override_still_wins() -> None:
    paper = resolve_config(PRESET, [], 0, "paper")
    ref = resolve_config(PRESET, ["fidelity=reference-code"], 0, "paper")
    assert (paper.fidelity, paper.schedule.epochs, paper.outer.betas) == ("paper", 150, (0.9, 0.99))
    assert (ref.fidelity, ref.schedule.epochs, ref.outer.cosine_epochs) == ("reference-code", 100, None)
    assert ref.outer.betas == (0.9, 0.999)
    assert ref.data.omniglot_split == "reference-code" and ref.schedule.ensemble == "logits"
    assert ref.outer.clip_inner_rates is False and ref.inner.da_strict_after is True
    assert ref.model.init_seed is not None
    # the explicit field wins wherever it stands among the overrides
    for order in (["outer.betas=[0.9,0.99]", "fidelity=reference-code"],
                  ["fidelity=reference-code", "outer.betas=[0.9,0.99]"]):  # fmt: skip
        c = resolve_config(PRESET, order, 0, "paper")
        assert c.outer.betas == (0.9, 0.99) and c.schedule.ensemble == "logits"
    # fidelity=paper on top of a reference-code field flips it back; applied to a preset it is
    # the preset itself
    assert resolve_config(PRESET, ["fidelity=paper"], 0, "paper") == paper


def test_smoke_keeps_the_chosen_fidelitys_horizon() -> None:
    paper = resolve_config(PRESET, [], 0, "smoke")
    ref = resolve_config(PRESET, ["fidelity=reference-code"], 0, "smoke")
    assert paper.schedule.epochs == ref.schedule.epochs == 15
    assert (paper.outer.cosine_epochs, ref.outer.cosine_epochs) == (150, 100)


def test_fidelities_get_their_own_run_names_and_a_bad_choice_is_named() -> None:
    names = {run_name(PRESET, o, 0, "smoke") for o in ([], ["fidelity=reference-code"])}
    assert len(names) == 2
    with pytest.raises(ValueError, match="fidelity='code' is not a valid choice"):
        resolve_config(PRESET, ["fidelity=code"], 0, "smoke")


# ---------------------------------------------------------------- row 1 + 2: optimizer, horizon


def test_betas_and_cosine_horizon_of_the_learner_actually_used() -> None:
    c = apply_scale(reference(replace(synthetic_config(), schedule=replace(
        synthetic_config().schedule, epochs=150))), "smoke")  # fmt: skip
    learner = MetaLearner(c, dtype=torch.float64)
    group = learner.optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.999)
    learner.train_step(random_batch(c, 2), epoch=50)  # half of the reference horizon of 100
    o = c.outer
    assert group["lr"] == pytest.approx(o.min_lr + 0.5 * (o.lr - o.min_lr))
    paper = MetaLearner(apply_scale(synthetic_config(), "smoke"), dtype=torch.float64)
    assert paper.optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    mid = o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * 50 / 150))
    assert paper.meta_lr(50) == pytest.approx(mid)


# ---------------------------------------------------------------- row 3: Omniglot class split


def independent_split(zips: list[Path], seed: int) -> dict[str, list[str]]:
    """The authors' procedure (data.py:176-211 at 86964701), rebuilt from the zips alone: class
    = path components [-3, -2] of every image, sorted, positions shuffled by RandomState(seed),
    cut at int(fraction * n)."""
    labels: set[str] = set()
    for z in zips:
        with zipfile.ZipFile(z) as zf:
            for name in zf.namelist():
                if ".png" in name.lower():
                    bits = name.split("/")
                    labels.add(f"{bits[-3]}/{bits[-2]}")
    names = sorted(labels)
    perm = np.arange(len(names), dtype=np.int32)
    np.random.RandomState(seed=seed).shuffle(perm)
    fractions = [0.70918052988, 0.03080714725]
    a, b = int(fractions[0] * len(names)), int(np.sum(fractions) * len(names))
    shuffled = [names[i] for i in perm]
    return {"train": shuffled[:a], "val": shuffled[a:b], "test": shuffled[b:]}


@pytest.fixture(scope="module")
def omniglot_zips(shared_data_root: Path) -> list[Path]:
    zips = [shared_data_root / "omniglot" / f"{p}.zip" for p in omniglot.PARTS]
    if not all(z.is_file() for z in zips):
        pytest.skip("the official Omniglot zips are not under the shared data root")
    return zips


def test_omniglot_split_under_each_choice(omniglot_zips: list[Path]) -> None:
    names = list(omniglot.count_classes(omniglot_zips))
    released_seed = np.random.RandomState(0).randint(1, 999999)  # the configs' val_seed 0, derived
    expected = {"paper": independent_split(omniglot_zips, 0),
                "reference-code": independent_split(omniglot_zips, released_seed)}  # fmt: skip
    for choice, want in expected.items():
        got = omniglot.class_split(names, choice)
        assert got == want, choice
        assert [len(got[s]) for s in ("train", "val", "test")] == [1150, 50, 423]
    ref = expected["reference-code"]
    assert ref["train"][0] == "Ojibwe_(Canadian_Aboriginal_Syllabics)/character09"
    assert len(set(ref["test"]) & set(expected["paper"]["test"])) == 101


def test_the_split_choice_reaches_the_loader_and_its_cache_key(
    monkeypatch: pytest.MonkeyPatch, omniglot_zips: list[Path]
) -> None:
    from mamlpp.data import check_data, make_episodes

    asked: list[str] = []

    def fake_load(root: Any, rebuild: bool = False, choice: str = "paper") -> Any:
        asked.append(choice)
        raise RuntimeError("stop")

    monkeypatch.setattr(omniglot, "load", fake_load)
    config = reference(get_preset(PRESET).config)
    with pytest.raises(RuntimeError, match="stop"):
        make_episodes(config, "train")
    with pytest.raises(RuntimeError, match="stop"):
        check_data(config)  # the check before the run directory loads the same split
    assert asked == ["reference-code", "reference-code"]
    keys = {omniglot.source_key(omniglot_zips, c) for c in omniglot.SPLIT_SHUFFLE_SEEDS}
    assert len(keys) == 2


# ---------------------------------------------------------------- row 4: the test ensemble


def test_ensemble_of_probabilities_or_logits_against_a_hand_computation() -> None:
    # One target image of class 0, three members. Logits: A = [0, 12], B = C = [5, 0].
    # Mean logits [10/3, 4] -> class 1 (wrong). Mean probabilities: class 0 gets
    # (e^0/(e^0+e^12) + 2 e^5/(e^5+1)) / 3 = 0.662 -> class 0 (right).
    logits = [torch.tensor([[[0.0, 12.0]]]), torch.tensor([[[5.0, 0.0]]]), torch.tensor([[[5.0, 0.0]]])]
    p0 = (1 / (1 + math.exp(12)) + 2 * math.exp(5) / (math.exp(5) + 1)) / 3
    assert p0 == pytest.approx(0.662, abs=1e-3)
    batch = SimpleNamespace(target_y=torch.tensor([[0]]))
    sampler = SimpleNamespace(batch=lambda chunk: batch)

    def members(choice: str) -> list[Any]:
        c = synthetic_config()
        c = replace(c, schedule=replace(c.schedule, ensemble=choice))
        return [SimpleNamespace(config=c, device="cpu", evaluate=lambda b, z=z: SimpleNamespace(
            logits=z, probs=torch.softmax(z, -1))) for z in logits]  # fmt: skip

    probs = ensemble.ensemble_accuracies(members("probabilities"), sampler, [range(1)])
    raw = ensemble.ensemble_accuracies(members("logits"), sampler, [range(1)])
    assert probs.tolist() == [1.0] and raw.tolist() == [0.0]
    vote = ensemble.vote_of([torch.softmax(z, -1) for z in logits])
    assert float(vote[0, 0, 0]) == pytest.approx(p0)


def test_evaluate_returns_the_logits_behind_its_probabilities() -> None:
    c = synthetic_config()
    result = MetaLearner(c, dtype=torch.float64).evaluate(random_batch(c, 2))
    torch.testing.assert_close(torch.softmax(result.logits, -1), result.probs)


# ---------------------------------------------------------------- row 5: gradient clipping


@pytest.mark.parametrize("clip_rates", [True, False])
def test_clipping_leaves_or_clamps_the_inner_rate_gradients(clip_rates: bool) -> None:
    c = synthetic_config()
    clip = 1e-7
    c = replace(c, outer=replace(c.outer, grad_clip=clip, clip_inner_rates=clip_rates))
    stats = MetaLearner(c, dtype=torch.float64).train_step(random_batch(c, 2), epoch=0).grad_stats
    network = [s["max"] for k, s in stats.items() if not k.startswith("lslr.")]
    rates = [s["max"] for k, s in stats.items() if k.startswith("lslr.")]
    assert network and rates
    assert max(network) <= clip * (1 + 1e-12)
    assert (max(rates) <= clip * (1 + 1e-12)) == clip_rates


# ---------------------------------------------------------------- row 6: DA boundary


def test_da_switch_at_epoch_e_under_both_choices() -> None:
    c = synthetic_config()
    c = replace(c, inner=replace(c.inner, order="annealed", first_order_epochs=3))
    strict = reference(c)
    assert [schedules.use_second_order(c, e) for e in (2, 3, 4)] == [False, True, True]
    assert [schedules.use_second_order(strict, e) for e in (2, 3, 4)] == [False, False, True]
    assert MetaLearner(c).plan(3).second_order and not MetaLearner(strict).plan(3).second_order


# ---------------------------------------------------------------- row 7: initialisation seed


def test_init_seed_is_fixed_across_run_seeds_under_reference_code() -> None:
    def weights(c: Config, seed: int) -> dict[str, torch.Tensor]:
        return MetaLearner(replace(c, seed=seed)).params

    c = synthetic_config()
    ref0, ref1 = weights(reference(c), 0), weights(reference(c), 1)
    assert all(torch.equal(ref0[k], ref1[k]) for k in ref0)
    paper0, paper1 = weights(c, 0), weights(c, 1)
    assert not torch.equal(paper0["conv0.weight"], paper1["conv0.weight"])
    pinned = weights(replace(c, model=replace(c.model, init_seed=0)), 7)
    assert all(torch.equal(paper0[k], pinned[k]) for k in paper0)


# ---------------------------------------------------------------- row 8: the strided head


def test_strided_head_sees_one_average_per_filter() -> None:
    c = get_preset("stability_mamlpp").config
    spec = model.NetSpec.from_config(c)
    assert spec.feature_size == c.model.filters == 64
    assert MetaLearner(c).params["linear.weight"].shape == (c.data.n_way, 64)
    # the head is linear in each map's mean: shifting one map of the last stage by a zero-mean
    # pattern leaves the logits unchanged
    x = torch.randn(3, c.model.filters, 2, 2)
    pattern = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    same = model.global_average(x, spec)
    moved = model.global_average(x + pattern, spec)
    torch.testing.assert_close(same, moved)
    assert same.shape == (3, 64, 1, 1)


def test_strided_forwards_agree_folded_and_loop() -> None:
    base = synthetic_config()
    c = replace(base, model=replace(base.model, downsample="stride"))
    batch = random_batch(c, 2)
    losses = [MetaLearner(replace(c, engine=e), dtype=torch.float64).meta_loss(batch, 0).loss.item()
              for e in ("folded", "loop")]  # fmt: skip
    assert losses[0] == pytest.approx(losses[1], abs=1e-12)


# ---------------------------------------------------------------- rows 9-11: the presets follow the code


def test_presets_follow_the_released_configs_under_both_fidelities() -> None:
    """Rows 9-11 and the inner-rate note: DA off, batch statistics at evaluation, a constant meta
    learning rate on mini-ImageNet and alpha 0.1 everywhere, whichever the fidelity."""
    for name, preset in PRESETS.items():
        for c in (preset.config, reference(preset.config)):
            if not name.endswith("_da"):
                assert c.inner.order == "second", name
                assert MetaLearner(c).plan(0).second_order, name
            assert c.bn.eval_stats == "batch", name
            assert c.inner.lr == 0.1, name
            if c.data.dataset == "miniimagenet":
                assert not c.outer.cosine and schedules.meta_lr(c, 40) == c.outer.lr, name


def test_running_statistics_are_never_read_with_batch_evaluation() -> None:
    """Row 10: with bn.eval_stats=batch the per-step running statistics (BNRS) do not change an
    evaluation; with 'running' they do."""
    batch = random_batch(synthetic_config(), 2)

    def logits(eval_stats: str, scramble: bool) -> torch.Tensor:
        c = synthetic_config()
        c = replace(c, bn=replace(c.bn, eval_stats=eval_stats))
        learner = MetaLearner(c, dtype=torch.float64)
        if scramble:
            g = torch.Generator().manual_seed(1)
            for v in learner.running.values():
                v.copy_(torch.rand(v.shape, generator=g, dtype=v.dtype) + 0.5)
        return learner.evaluate(batch).logits

    assert torch.equal(logits("batch", False), logits("batch", True))
    assert not torch.allclose(logits("running", False), logits("running", True))


# ---------------------------------------------------------------- paper values


def test_every_paper_value_names_its_source_and_status() -> None:
    for p in PRESETS.values():
        if p.paper_accuracy is not None:
            assert p.paper_source and p.paper_status in ("secondary", "conflicting", "unsourced")
    assert get_preset("omniglot_5way_5shot_mamlpp").paper_status == "conflicting"
    assert "99.85" in get_preset("omniglot_5way_5shot_mamlpp").paper_source
    assert get_preset("miniimagenet_5way_1shot_mamlpp").paper_status == "conflicting"
    assert get_preset("omniglot_5way_1shot_mamlpp").paper_status == "secondary"


# ---------------------------------------------------------------- tables


def test_tables_keep_fidelities_apart_and_mark_unconfirmed_paper_values() -> None:
    from mamlpp.analysis.runs import Run
    from mamlpp.analysis.tables import accuracy_table, display_table

    def run(preset: str, fidelity: str, seed: int) -> Run:
        overrides = {} if fidelity == "paper" else {"fidelity": fidelity}
        config = reference(get_preset(preset).config) if overrides else get_preset(preset).config
        return Run(Path("x"), f"{preset}{seed}{fidelity}", preset, seed, "smoke",
                   config.to_dict(), overrides, {"accuracy": 0.9})  # fmt: skip

    runs = [run(PRESET, f, s) for f in ("paper", "reference-code") for s in (0, 1)]
    runs.append(run("omniglot_5way_5shot_mamlpp", "paper", 0))
    shown = display_table(accuracy_table(runs)).set_index("preset")
    assert shown.loc[PRESET, "fidelity"] == "paper"
    assert shown.loc[f"{PRESET} [fidelity=reference-code]", "fidelity"] == "reference-code"
    assert list(shown["n seeds"]) == [2, 2, 1]
    assert shown.loc[PRESET, "paper (%)"] == "99.47*"
    assert shown.loc["omniglot_5way_5shot_mamlpp", "paper (%)"] == "99.93 (unconfirmed)"
