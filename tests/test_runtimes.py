"""docs/runtimes.md is generated from the kept cost files and must match them."""

from __future__ import annotations

from mamlpp.experiments.cost import (
    COST_FILES,
    HERE,
    RUNTIMES_PAGE,
    load,
    projections,
    runtimes_markdown,
    wall_hours,
)


def test_runtimes_page_is_current() -> None:
    assert RUNTIMES_PAGE.read_text() == runtimes_markdown(), (
        "docs/runtimes.md is stale; regenerate it: python -m mamlpp.experiments.cost docs"
    )


def test_every_cost_file_is_described_and_loads() -> None:
    kept = {p.name for p in HERE.glob("cost_*.jsonl")}
    assert kept == {f.name for f in COST_FILES}
    for f in COST_FILES:
        assert load(HERE / f.name)


def test_a_preset_is_not_timed_as_another_dataset() -> None:
    cpu = load(HERE / "cost_cpu2_idle.jsonl")  # Omniglot only
    rows = {p.preset: p for p in projections(cpu, "smoke", same_dataset=True)}
    assert rows["miniimagenet_5way_1shot_mamlpp"].source is None
    assert rows["omniglot_5way_1shot_maml"].source == "omniglot_5way_1shot_mamlpp"
    borrowed = {p.preset: p for p in projections(cpu, "smoke")}  # what `project` prints
    assert borrowed["miniimagenet_5way_1shot_mamlpp"].source is not None


def test_wall_hours_schedules_longest_first() -> None:
    assert wall_hours([3.0, 3.0, 2.0, 2.0, 2.0], 2) == 7.0
    assert wall_hours([5.0, 1.0], 8) == 5.0
