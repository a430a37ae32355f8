"""The experiment grids: exactly the paper's rows, every preset real, docstrings that agree."""

from __future__ import annotations

import re

import pytest

from mamlpp.errors import MamlppError
from mamlpp.experiments import EXPERIMENTS, PAPER_SEEDS, GridPoint, get_experiment
from mamlpp.presets import PRESETS, get_preset

EXPECTED_ROWS = {
    "table1": [
        "omniglot_20way_1shot_maml",
        "omniglot_20way_1shot_maml_msl",
        "omniglot_20way_1shot_maml_lslr",
        "omniglot_20way_1shot_maml_bnwb_bnrs",
        "omniglot_20way_1shot_mamlpp",
        "omniglot_20way_5shot_maml",
        "omniglot_20way_5shot_mamlpp",
        "omniglot_5way_1shot_maml",
        "omniglot_5way_1shot_mamlpp",
        "omniglot_5way_5shot_maml",
        "omniglot_5way_5shot_mamlpp",
    ],
    "table2": [
        "miniimagenet_5way_1shot_maml",
        "miniimagenet_5way_1shot_mamlpp_1step",
        "miniimagenet_5way_1shot_mamlpp_2step",
        "miniimagenet_5way_1shot_mamlpp_3step",
        "miniimagenet_5way_1shot_mamlpp_4step",
        "miniimagenet_5way_1shot_mamlpp",
        "miniimagenet_5way_5shot_maml",
        "miniimagenet_5way_5shot_mamlpp",
    ],
    "figure2": ["stability_maml", "stability_mamlpp"],
}


def test_grids_are_exactly_the_papers_rows_times_three_seeds() -> None:
    assert set(EXPERIMENTS) == set(EXPECTED_ROWS)
    for name, rows in EXPECTED_ROWS.items():
        e = EXPERIMENTS[name]
        assert list(e.presets) == rows
        assert e.seeds == PAPER_SEEDS == (0, 1, 2)
        assert e.grid() == [GridPoint(p, s) for p in rows for s in (0, 1, 2)]


def test_every_grid_point_is_an_existing_preset() -> None:
    for e in EXPERIMENTS.values():
        for point in e.grid():
            assert point.preset in PRESETS
            assert get_preset(point.preset).config.preset == point.preset


def test_rows_have_the_switches_their_names_claim() -> None:
    """Guards against a row pointing at the wrong preset: table 2's step rows and figure 2's
    strided convs."""
    for steps in range(1, 5):
        c = get_preset(f"miniimagenet_5way_1shot_mamlpp_{steps}step").config
        assert (c.inner.steps, c.inner.eval_steps) == (steps, steps)
    for name in EXPECTED_ROWS["figure2"]:
        assert get_preset(name).config.model.downsample == "stride"
    assert not get_preset("stability_maml").config.outer.msl
    assert get_preset("stability_mamlpp").config.outer.msl


@pytest.mark.parametrize("name", list(EXPECTED_ROWS))
def test_docstring_gives_each_rows_paper_value_and_the_command(name: str) -> None:
    e = EXPERIMENTS[name]
    module = __import__(f"mamlpp.experiments.{e.module}", fromlist=["EXPERIMENT"])
    doc = module.__doc__ or ""
    assert f"make {name}" in doc and "smoke" in doc and "paper" in doc
    for preset in e.presets:
        line = next((ln for ln in doc.splitlines() if ln.startswith(f"| {preset} |")), None)
        assert line is not None, f"{preset} has no row in the {e.module} docstring"
        paper = get_preset(preset).paper_accuracy
        cells = [c.strip() for c in line.strip("|").split("|")]
        if paper is None:
            assert not re.search(r"\d", cells[-1]), f"{preset}: paper gives no number"
        else:
            assert float(cells[-1].split()[0]) == pytest.approx(paper)
            std = get_preset(preset).paper_std
            if std is not None:
                assert float(cells[-1].split("+-")[1]) == pytest.approx(std)


def test_experiment_lookup_by_name_or_module_and_clear_errors() -> None:
    assert get_experiment("table1_omniglot") is EXPERIMENTS["table1"]
    assert get_experiment("figure2") is EXPERIMENTS["figure2"]
    with pytest.raises(MamlppError, match="choose one of table1, table2, figure2"):
        get_experiment("table3")
    e = EXPERIMENTS["table1"]
    assert e.grid(("omniglot_5way_1shot_mamlpp", "omniglot_20way_1shot_maml"), (2,)) == [
        GridPoint("omniglot_20way_1shot_maml", 2),
        GridPoint("omniglot_5way_1shot_mamlpp", 2),
    ]
    with pytest.raises(MamlppError, match="not rows of experiment table1"):
        e.grid(("stability_maml",))
    # a row or seed given twice is one run (two launches of it would race for its directory)
    twice = ("omniglot_5way_1shot_mamlpp", "omniglot_5way_1shot_mamlpp")
    assert e.grid(twice, (0, 1, 0)) == [
        GridPoint("omniglot_5way_1shot_mamlpp", 0),
        GridPoint("omniglot_5way_1shot_mamlpp", 1),
    ]


def test_cost_projection_formula_and_closest_measured_preset() -> None:
    from mamlpp.experiments.cost import Measurement, closest, run_seconds

    m = Measurement("omniglot_20way_1shot_mamlpp", s_iter=0.1, s_val_task=0.01, device="x")
    # 150 epochs x (500 x 0.1 s + 600 val tasks x 0.01 s) + top-5 x 600 test tasks x 0.01 s
    assert run_seconds("omniglot_20way_1shot_mamlpp", m) == pytest.approx(150 * 56 + 30)
    measured = {
        name: m
        for name in (
            "miniimagenet_5way_1shot_mamlpp_1step",
            "miniimagenet_5way_1shot_mamlpp",
            "omniglot_5way_1shot_mamlpp",
            "omniglot_20way_1shot_maml",
            "stability_mamlpp",
        )
    }
    assert (
        closest("miniimagenet_5way_1shot_mamlpp_4step", measured)
        == "miniimagenet_5way_1shot_mamlpp"
    )
    assert closest("stability_maml", measured) == "stability_mamlpp"
    assert closest("omniglot_20way_1shot_maml_lslr", measured) == "omniglot_20way_1shot_maml"
    assert closest("omniglot_5way_5shot_maml", {}) is None
