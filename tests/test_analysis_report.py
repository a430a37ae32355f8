"""`mamlpp report` end to end on hand-made runs: the page, its links, the page in headless
Chromium through Playwright (no console errors; every chart has data points; moving the lr
chart's slider changes the plotted values; a screenshot of the index), and the W&B import cache."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mamlpp.analysis.lr_charts import CHART_DIV_ID
from mamlpp.analysis.runs import load_runs
from mamlpp.analysis.wandb_import import import_wandb
from mamlpp.cli import main
from tests.support import browser_support as bs
from tests.support.example_runs import example_rate, write_example_runs, write_run

N_POSITIONS = 50
SCREENSHOT = (
    Path(os.environ.get("MAMLPP_SCREENSHOT_DIR", "reports/screenshots")) / "report-index.png"
)
"""Where the browser test saves its screenshot of the index (relative to the working directory)."""
LR_DIV = f"{CHART_DIV_ID}-omniglot_20way_1shot_mamlpp__smoke"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    write_example_runs(runs)
    out = tmp_path_factory.mktemp("report")
    result = CliRunner().invoke(
        main, ["report", "--runs-dir", str(runs), "--out", str(out), "--notebook"]
    )
    assert result.exit_code == 0, result.output
    assert "16 runs -> 3 tables, 3 learning-rate charts, 3 figures" in result.output
    return out


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.targets.append(value)


def test_index_links_every_table_chart_and_figure(report: Path) -> None:
    page = (report / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    targets = set(parser.targets)
    for path in report.rglob("*"):
        if path.is_file() and path.name != "index.html":
            assert path.relative_to(report).as_posix() in targets, f"{path} is not linked"
    anchors = set(re.findall(r'id="([^"]+)"', page))
    for target in targets:
        if target.startswith("#"):
            assert target[1:] in anchors, f"link to a missing anchor {target}"
        else:
            assert (report / target).exists(), f"broken link {target}"
    assert (
        "tables/table1_omniglot_smoke.tex" in targets
        and "charts/lr_omniglot_20way_1shot_mamlpp__smoke.html" in targets
    )
    # plotly.js once, beside the pages; the index and the chart pages load that copy.
    assert [p.name for p in report.rglob("plotly*.js")] == ["plotly.min.js"]
    assert '<script src="plotly.min.js"></script>' in page
    chart = (report / "charts" / "lr_omniglot_20way_1shot_mamlpp__smoke.html").read_text()
    assert 'src="../plotly.min.js"' in chart and len(chart) < 100_000
    # The table cells link to the runs behind them, and each run to its directory.
    assert '<a href="#run-omniglot_20way_1shot_mamlpp__default__seed1__smoke">seed 1</a>' in page
    assert "omniglot_20way_1shot_mamlpp__default__seed1__smoke/metrics.jsonl" in page
    assert page.count("Produced by: <code>mamlpp report --runs-dir") >= 3
    assert "SMOKE SCALE - not comparable to the paper" in page
    assert "92.00 ± 2.00" in page  # the rendered Table 1
    assert "seed_variance.ipynb" in targets  # --notebook saved an executed copy
    executed = json.loads((report / "seed_variance.ipynb").read_text())
    assert all(c.get("execution_count") for c in executed["cells"] if c["cell_type"] == "code")


def test_report_on_an_empty_runs_dir_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["report", "--runs-dir", str(tmp_path), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2
    assert result.output.startswith("error: no runs under") and result.output.count("\n") == 1


def test_unreadable_runs_are_left_out_of_the_report_and_named(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    for seed in (0, 1):
        write_run(runs, "omniglot_5way_1shot_mamlpp", seed)
    config = write_run(runs, "omniglot_5way_1shot_mamlpp", 2) / "config.json"
    config.write_text('{"config": ')  # torn by hand
    metrics = write_run(runs, "omniglot_5way_1shot_maml", 0) / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")

    result = CliRunner().invoke(main, ["report", "--runs-dir", str(runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"warning: {config.parent} left out of the report: {config} is not valid JSON" in result.output
    assert f"warning: {metrics.parent} left out of the report: {metrics} line 2 is not a JSON object" in result.output
    assert "2 runs -> " in result.output
    page = (out / "index.html").read_text()
    assert "run directories that cannot be read (2)" in page
    assert f"{config.parent.name}</a>: {config} is not valid JSON" in page
    runs_csv = (out / "runs.csv").read_text()
    assert config.parent.name not in runs_csv and metrics.parent.name not in runs_csv

    # nothing readable: one line naming the first reason
    for seed in (0, 1):
        (runs / f"omniglot_5way_1shot_mamlpp__default__seed{seed}__smoke" / "config.json").write_text("[]")
    result = CliRunner().invoke(main, ["report", "--runs-dir", str(runs), "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.startswith("error: none of the 4 run directories under") and result.output.count("\n") == 1


# ---------------------------------------------------------------- headless Chromium

_CHART_STATE = """id => {
  const gd = document.getElementById(id);
  return {
    y: gd.data.map(t => Array.from(t.y)),
    active: gd._fullLayout.sliders[0].active,
    paths: [...gd.querySelectorAll('.scatterlayer .trace path.js-line')].map(p => p.getAttribute('d')),
    labels: Object.fromEntries([...gd.querySelectorAll('.slider-label')].map(e => {
      const r = e.getBoundingClientRect(); return [e.textContent, r.x + r.width / 2]; })),
    railY: (() => { const r = gd.querySelector('.slider-grip-rect').getBoundingClientRect(); return r.y + r.height / 2; })(),
  };
}"""

_PLOTS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(gd => ({
  id: gd.id,
  points: gd.data.reduce((n, t) => n + (t.y || []).filter(v => v !== null).length, 0),
  drawn: gd.querySelectorAll('.scatterlayer .trace').length,
}))"""


def _rates(seed: int, epoch: int) -> list[float]:
    return [example_rate(seed, epoch, p) for p in range(N_POSITIONS)]


@bs.needs_browser
def test_report_index_in_headless_chromium(report: Path) -> None:
    browser = bs.launch()
    try:
        bs.open_file(browser, report / "index.html", wait_for="window.Plotly !== undefined")
        assert bs.console_errors(browser) == []
        assert bs.evaluate(browser, "document.querySelectorAll('table').length") == 3
        assert bs.evaluate(
            browser, "[...document.images].every(i => i.complete && i.naturalWidth > 0)"
        )

        # Every chart on the index has data points and drew them: 6 presets x (accuracy, loss,
        # meta lr, MSL weights, gradients), 3 learned-lr charts, Figure 2.
        plots = bs.evaluate(browser, _PLOTS)
        assert len(plots) == 6 * 5 + 3 + 1
        assert all(p["points"] > 0 and p["drawn"] > 0 for p in plots), plots
        # A 2x5 gradient grid of the MAML++ preset: max and mean |g| of 5 weight tensors x 2 seeds.
        grad = next(p for p in plots if p["id"] == "gradients-omniglot_20way_1shot_mamlpp-smoke")
        assert grad["points"] == 2 * 5 * 2 * 4
        bs.screenshot(browser, SCREENSHOT, full_page=False)
        assert SCREENSHOT.read_bytes()[:4] == b"\x89PNG"
        print(f"screenshot of the report index: {SCREENSHOT.resolve()}")

        # The learned-lr chart on the index: opening view, then real clicks on its slider.
        bs.evaluate(browser, f"document.getElementById('{LR_DIV}').scrollIntoView()")
        browser.page.wait_for_timeout(300)
        opening: dict[str, Any] = bs.evaluate(browser, _CHART_STATE, LR_DIV)
        # Opening view: seed 0 at its best epoch 1, seed 1 at its best epoch 2.
        assert opening["y"][0] == pytest.approx(_rates(0, 1))
        assert opening["y"][1] == pytest.approx(_rates(1, 2))
        assert sorted(opening["labels"]) == ["0", "1", "2", "3"]

        # A real mouse click on the slider's "0" moves every seed to epoch 0.
        bs.click(browser, opening["labels"]["0"], opening["railY"])
        at0 = bs.evaluate(browser, _CHART_STATE, LR_DIV)
        assert at0["active"] == 0
        assert at0["y"][0] == pytest.approx(_rates(0, 0)) and at0["y"][1] == pytest.approx(
            _rates(1, 0)
        )
        assert at0["paths"] != opening["paths"]  # the plotted lines moved, not just the data

        bs.click(browser, opening["labels"]["3"], opening["railY"])
        at3 = bs.evaluate(browser, _CHART_STATE, LR_DIV)
        assert at3["active"] == 3
        assert at3["y"][0] == pytest.approx(_rates(0, 3)) and at3["paths"] != at0["paths"]
        assert "all seeds at epoch 3" in bs.evaluate(
            browser, f"document.getElementById('{LR_DIV}').layout.title.text"
        )

        # The button returns every seed to its best epoch (the opening view).
        button = bs.evaluate(
            browser,
            f"""(() => {{ const r = document.getElementById('{LR_DIV}')
                .querySelector('.updatemenu-button').getBoundingClientRect();
              return [r.x + r.width / 2, r.y + r.height / 2]; }})()""",
        )
        bs.click(browser, *button)
        assert bs.evaluate(browser, _CHART_STATE, LR_DIV)["y"] == opening["y"]

        # The chart's page of its own loads the shared plotly.js.
        bs.open_file(browser, report / "charts" / "lr_omniglot_20way_1shot_mamlpp__smoke.html")
        assert bs.evaluate(browser, f"document.getElementById('{CHART_DIV_ID}').data.length") == 2
        assert bs.console_errors(browser) == []
    finally:
        bs.close(browser)


# ---------------------------------------------------------------- W&B import


class _FakeWandbRun:
    """What analysis needs of wandb.apis.public.Run, shaped like mamlpp.runs.trainer's mirror."""

    def __init__(self, source: Path) -> None:
        doc = json.loads((source / "config.json").read_text())
        self.id, self.name, self.state = "abc123", doc["run"]["name"], "finished"
        self.path = ["team", "mamlpp", self.id]
        self.config = {**doc["config"], "run": doc["run"]}
        self.rows = [
            {**json.loads(line), "_step": i, "_runtime": 1.0, "lslr_table": {"_type": "table-file"}}
            for i, line in enumerate((source / "metrics.jsonl").read_text().splitlines())
        ]
        self.summary = {"test/accuracy": 0.97, "test/ci95": 0.01, "test/std": 0.05}
        self.scans = 0

    def scan_history(self) -> list[dict[str, Any]]:
        self.scans += 1
        return self.rows

    def file(self, name: str) -> Any:
        raise ValueError(f"{name} was not saved")


class _FakeApi:
    def __init__(self, runs: list[_FakeWandbRun]) -> None:
        self._runs = runs

    def runs(self, path: str) -> list[_FakeWandbRun]:
        assert path == "team/mamlpp"
        return self._runs


def test_wandb_runs_are_cached_as_run_directories(tmp_path: Path) -> None:
    source = write_run(tmp_path / "remote", "omniglot_20way_1shot_mamlpp", 1, test_accuracy=None)
    fake = _FakeWandbRun(source)
    cache = tmp_path / "cache"
    folders = import_wandb("team/mamlpp", cache, api=_FakeApi([fake]))
    assert [f.name for f in folders] == ["omniglot_20way_1shot_mamlpp__default__seed1__smoke"]
    (run,) = load_runs(cache)
    assert (run.preset, run.seed, run.scale, run.test) == (
        "omniglot_20way_1shot_mamlpp",
        1,
        "smoke",
        {"accuracy": 0.97, "ci95": 0.01, "std": 0.05},
    )
    assert run.metrics() == [
        json.loads(line) for line in (source / "metrics.jsonl").read_text().splitlines()
    ]
    assert run.uses_lslr
    import_wandb("team/mamlpp", cache, api=_FakeApi([fake]))
    assert fake.scans == 1  # a finished, cached run is not downloaded again


def test_wandb_import_writes_one_line_per_integer_epoch(tmp_path: Path) -> None:
    """The mirror's history as W&B returns it: the run ends with the learned-lr chart logged as a
    step of its own that repeats the last epoch (tests/test_tracking.py reads it from an offline
    run), and an epoch may come back as a float; metrics.jsonl still holds one line per epoch,
    equal to the local one."""
    source = write_run(tmp_path / "remote", "omniglot_20way_1shot_mamlpp", 1, test_accuracy=None)
    fake = _FakeWandbRun(source)
    last = fake.rows[-1]["epoch"]
    fake.rows = [{**row, "epoch": float(row["epoch"])} for row in fake.rows] + [
        {"_step": len(fake.rows), "epoch": last, "charts/learned_lr": {"_type": "html-file"}}
    ]
    import_wandb("team/mamlpp", tmp_path / "cache", api=_FakeApi([fake]))
    (run,) = load_runs(tmp_path / "cache")
    local = [json.loads(line) for line in (source / "metrics.jsonl").read_text().splitlines()]
    assert run.metrics() == local
    assert all(type(row["epoch"]) is int for row in run.metrics())


def test_wandb_import_never_overwrites_a_local_run_and_checks_the_project_name(
    tmp_path: Path,
) -> None:
    source = write_run(tmp_path / "remote", "omniglot_20way_1shot_mamlpp", 1)
    local = write_run(tmp_path / "cache", "omniglot_20way_1shot_mamlpp", 1, test_accuracy=0.5)
    assert (
        import_wandb("team/mamlpp", tmp_path / "cache", api=_FakeApi([_FakeWandbRun(source)])) == []
    )
    assert json.loads((local / "test.json").read_text())["accuracy"] == 0.5
    result = CliRunner().invoke(
        main,
        [
            "report",
            "--runs-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--from-wandb",
            "no-slash",
        ],
    )
    assert result.exit_code == 2 and re.search(r"needs ENTITY/PROJECT", result.output)
