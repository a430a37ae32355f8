"""Learning-rate charts (plotly) and static figures (matplotlib) from hand-made runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mamlpp.analysis.figures import gradient_figures, stability_figure, write_figures
from mamlpp.analysis.lr_charts import CHART_DIV_ID, lr_chart, write_lr_charts
from mamlpp.analysis.runs import Run, load_runs
from tests.support.example_runs import EXAMPLE_VAL_ACC, example_rate, write_example_runs

N_POSITIONS = 10 * 5  # 10 adapted tensors x 5 inner steps


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Run]:
    root = tmp_path_factory.mktemp("runs")
    write_example_runs(root)
    return load_runs(root)


def _of(runs: list[Run], preset: str) -> list[Run]:
    return [r for r in runs if r.preset == preset]


def test_slider_has_one_step_per_epoch_and_each_step_moves_all_seeds(runs: list[Run]) -> None:
    fig = lr_chart(_of(runs, "miniimagenet_5way_1shot_mamlpp"), "t")
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["0", "1", "2", "3"]
    for epoch, step in enumerate(steps):
        ys = step.args[0]["y"]
        assert len(ys) == 3  # seeds 0, 1, 2
        for seed, y in enumerate(ys):
            assert y == pytest.approx([example_rate(seed, epoch, p) for p in range(N_POSITIONS)])


def test_initial_frame_is_each_seeds_best_validation_epoch(runs: list[Run]) -> None:
    fig = lr_chart(_of(runs, "miniimagenet_5way_1shot_mamlpp"), "t")
    best = {seed: max(range(4), key=lambda e, s=seed: EXAMPLE_VAL_ACC[s][e]) for seed in range(3)}
    assert best == {0: 1, 1: 2, 2: 0}
    for seed, trace in enumerate(fig.data):
        assert trace.y == pytest.approx(
            [example_rate(seed, best[seed], p) for p in range(N_POSITIONS)]
        )
        assert trace.name == f"seed {seed} (best epoch {best[seed]})"
    assert list(fig.data[0].x[:2]) == ["conv0.weight/step0", "conv0.weight/step1"]
    assert "best-validation epoch (seed 0: 1, seed 1: 2, seed 2: 0)" in fig.layout.title.text


def test_one_self_contained_chart_per_lslr_variant(runs: list[Run], tmp_path: Path) -> None:
    written = write_lr_charts(runs, tmp_path)
    names = sorted(p.name for _, p in written)
    assert names == [
        "lr_miniimagenet_5way_1shot_mamlpp__smoke.html",
        "lr_omniglot_20way_1shot_mamlpp__smoke.html",
        "lr_stability_mamlpp__smoke.html",
    ]  # no chart for MAML / MAML + MSL (fixed alpha)
    page = written[0][1].read_text()
    assert f'id="{CHART_DIV_ID}"' in page
    assert "<script src=" not in page  # plotly.js is inlined, so it works offline
    assert "SMOKE SCALE" in written[0][0]


def test_stability_figure_has_one_curve_per_run(runs: list[Run]) -> None:
    fig = stability_figure(runs, "smoke")
    assert fig is not None
    lines = fig.axes[0].get_lines()
    assert sorted(line.get_label() for line in lines) == [
        "stability_maml, seed 0",
        "stability_maml, seed 1",
        "stability_mamlpp, seed 0",
        "stability_mamlpp, seed 1",
    ]
    assert len(lines[0].get_xdata()) == 16
    assert stability_figure(runs, "paper") is None


def test_gradient_figure_compares_maml_with_msl(runs: list[Run]) -> None:
    figures = {stem: fig for stem, _, fig in gradient_figures(runs)}
    # max-pool Omniglot 20-way 1-shot: MAML vs MAML + MSL (MAML++ left out); stride: stability pair.
    assert set(figures) == {
        "gradients_omniglot_20way_1shot_max_pool_smoke",
        "gradients_omniglot_20way_1shot_stride_smoke",
    }
    fig = figures["gradients_omniglot_20way_1shot_max_pool_smoke"]
    assert len(fig.axes) == 3 * 5  # max/min/mean x conv0..3.weight, linear.weight
    labels = {
        line.get_label()
        for ax in fig.axes
        for line in ax.get_lines()
        if not line.get_label().startswith("_")
    }
    assert labels == {"omniglot_20way_1shot_maml (no MSL)", "omniglot_20way_1shot_maml_msl (MSL)"}
    first = fig.axes[0].get_lines()[0]  # max |g| of conv0.weight for the MAML run: 10 / (1 + epoch)
    assert list(first.get_ydata()) == pytest.approx([10.0 / (1 + e) for e in range(4)])


def test_figures_are_written_as_png_and_pdf(runs: list[Run], tmp_path: Path) -> None:
    written = write_figures(_of(runs, "stability_maml") + _of(runs, "stability_mamlpp"), tmp_path)
    kinds = [kind for kind, _, _ in written]
    assert kinds == ["stability", "gradients"]
    for _, _, paths in written:
        assert [p.suffix for p in paths] == [".png", ".pdf"]
        assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"


def test_no_gradient_figure_when_only_one_side_has_metrics(tmp_path: Path) -> None:
    from tests.support.example_runs import write_run

    write_run(tmp_path, "omniglot_20way_1shot_maml", 0)
    started = write_run(tmp_path, "omniglot_20way_1shot_maml_msl", 0, test_accuracy=None)
    (started / "metrics.jsonl").unlink()  # started, no epoch finished yet
    assert gradient_figures(load_runs(tmp_path)) == []
