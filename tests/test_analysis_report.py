"""`mamlpp report` end to end on hand-made runs: the page, its links, the page in headless
Chromium (no console errors; moving the lr chart's slider changes the plotted values), and the
W&B import cache."""

from __future__ import annotations

import json
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
from tests.support.example_runs import example_rate, write_example_runs, write_run
from tests.support.headless import Chromium, find_chromium

N_POSITIONS = 50


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
    for target in targets:
        assert (report / target).is_file(), f"broken link {target}"
    assert (
        "tables/table1_omniglot_smoke.tex" in targets
        and "charts/lr_omniglot_20way_1shot_mamlpp__smoke.html" in targets
    )
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


# ---------------------------------------------------------------- headless Chromium

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="Chromium not found: `make browser` installs Debian's chromium (needs root and apt-get); "
    "or point MAMLPP_CHROMIUM at a Chromium/Chrome binary",
)

_CHART_STATE = f"""(() => {{
  const gd = document.getElementById('{CHART_DIV_ID}');
  return {{
    y: gd.data.map(t => Array.from(t.y)),
    active: gd._fullLayout.sliders[0].active,
    paths: [...gd.querySelectorAll('.scatterlayer .trace path.js-line')].map(p => p.getAttribute('d')),
    labels: Object.fromEntries([...gd.querySelectorAll('.slider-label')].map(e => {{
      const r = e.getBoundingClientRect(); return [e.textContent, r.x + r.width / 2]; }})),
    railY: (() => {{ const r = gd.querySelector('.slider-grip-rect').getBoundingClientRect(); return r.y + r.height / 2; }})(),
  }};
}})()"""


def _rates(seed: int, epoch: int) -> list[float]:
    return [example_rate(seed, epoch, p) for p in range(N_POSITIONS)]


@needs_chromium
def test_report_page_and_lr_chart_in_headless_chromium(report: Path) -> None:
    with Chromium() as browser:
        browser.open(report / "index.html")
        assert browser.console_errors() == []
        assert browser.evaluate("document.querySelectorAll('table').length") == 3
        assert browser.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")

        browser.open(report / "charts" / "lr_omniglot_20way_1shot_mamlpp__smoke.html")
        opening: dict[str, Any] = browser.evaluate(_CHART_STATE)
        # Opening view: seed 0 at its best epoch 1, seed 1 at its best epoch 2.
        assert opening["y"][0] == pytest.approx(_rates(0, 1))
        assert opening["y"][1] == pytest.approx(_rates(1, 2))
        assert sorted(opening["labels"]) == ["0", "1", "2", "3"]

        # A real mouse click on the slider's "0" moves every seed to epoch 0.
        browser.click(opening["labels"]["0"], opening["railY"])
        at0 = browser.evaluate(_CHART_STATE)
        assert at0["active"] == 0
        assert at0["y"][0] == pytest.approx(_rates(0, 0)) and at0["y"][1] == pytest.approx(
            _rates(1, 0)
        )
        assert at0["paths"] != opening["paths"]  # the plotted lines moved, not just the data

        browser.click(opening["labels"]["3"], opening["railY"])
        at3 = browser.evaluate(_CHART_STATE)
        assert at3["active"] == 3
        assert at3["y"][0] == pytest.approx(_rates(0, 3)) and at3["paths"] != at0["paths"]
        assert "all seeds at epoch 3" in browser.evaluate(
            f"document.getElementById('{CHART_DIV_ID}').layout.title.text"
        )

        # The button returns every seed to its best epoch (the opening view).
        button = browser.evaluate(
            "(() => { const r = document.querySelector('.updatemenu-button').getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        browser.click(*button)
        assert browser.evaluate(_CHART_STATE)["y"] == opening["y"]
        assert browser.console_errors() == []


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
