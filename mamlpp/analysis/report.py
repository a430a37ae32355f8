"""The report: every table, chart and figure from one runs dir, linked from ``<out>/index.html``.

Layout of ``<out>``::

    index.html          the tables (each row linked to its runs), then per preset every per-epoch
                        curve of every seed (accuracy, loss, meta lr, MSL weights, gradient
                        statistics, learned inner lrs with the epoch slider) and Figure 2,
                        interactive (plotly), with a short text and the producing command per item
    plotly.min.js       the one copy of plotly.js every page loads (offline, a few MB in all)
    runs.csv            one row per run (identity, switches, test accuracy)
    tables/             <experiment>_<scale>.{md,csv,tex}
    charts/             lr_<preset>[__<overrides>]__<scale>.html (the lr chart on a page of its own)
    figures/            figure2_stability_<scale>.{png,pdf}, gradients_<family>.{png,pdf} (for papers)
    seed_variance.ipynb the executed notebook (only with --notebook)
"""

from __future__ import annotations

import datetime as dt
import html
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from mamlpp.analysis.curves import Curve, stability_curve, variant_curves, variant_groups
from mamlpp.analysis.figures import write_figures
from mamlpp.analysis.lr_charts import CHART_DIV_ID, lr_charts, write_lr_charts
from mamlpp.analysis.runs import Run, load_runs, runs_frame
from mamlpp.analysis.tables import SMOKE_LABEL, WrittenTable, display_table, write_tables

NOTEBOOK = Path(__file__).parent / "notebooks" / "seed_variance.ipynb"
PLOTLY_JS = "plotly.min.js"


def report_command(
    runs_dir: Path, out: Path, from_wandb: str | None = None, notebook: bool = False
) -> str:
    parts = ["mamlpp", "report", "--runs-dir", str(runs_dir), "--out", str(out)]
    if from_wandb:
        parts += ["--from-wandb", from_wandb]
    if notebook:
        parts.append("--notebook")
    return " ".join(shlex.quote(p) for p in parts)


@dataclass
class Section:
    """One variant and scale on the index: its runs and their interactive figures."""

    variant: str
    scale: str
    runs: list[Run]
    curves: list[Curve]
    lr_chart: tuple[str, str, go.Figure] | None = None
    """(title, div id, figure) for LSLR variants."""

    @property
    def anchor(self) -> str:
        return _slug(f"preset-{self.variant}-{self.scale}")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)


@dataclass
class Report:
    out: Path
    command: str
    runs: list[Run]
    tables: list[WrittenTable] = field(default_factory=list)
    charts: list[tuple[str, Path]] = field(default_factory=list)
    figures: list[tuple[str, str, list[Path]]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    stability: list[Curve] = field(default_factory=list)
    notebook: Path | None = None
    skipped: dict[Path, str] = field(default_factory=dict)
    """Run directories left out because they cannot be read, with the reason (`load_runs`)."""

    @property
    def index(self) -> Path:
        return self.out / "index.html"


def execute_notebook(runs_dir: Path, out: Path) -> Path:
    """Run the seed-variance notebook on ``runs_dir`` (nbclient) and save the executed copy."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    old = os.environ.get("MAMLPP_RUNS_DIR")
    os.environ["MAMLPP_RUNS_DIR"] = str(runs_dir.resolve())
    try:
        NotebookClient(
            nb,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOK.parent)}},
        ).execute()
    finally:
        if old is None:
            os.environ.pop("MAMLPP_RUNS_DIR", None)
        else:
            os.environ["MAMLPP_RUNS_DIR"] = old
    path = out / "seed_variance.ipynb"
    nbformat.write(nb, path)
    return path


def build_report(
    runs_dir: str | Path, out: str | Path, command: str | None = None, notebook: bool = False
) -> Report:
    """Write every output for the runs under ``runs_dir`` into ``out``; returns what was written."""
    runs_dir, out = Path(runs_dir), Path(out)
    skipped: dict[Path, str] = {}
    runs = load_runs(runs_dir, skipped)
    command = command or report_command(runs_dir, out, notebook=notebook)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out=out, command=command, runs=runs, skipped=skipped)
    runs_frame(runs).to_csv(out / "runs.csv", index=False)
    report.tables = write_tables(runs, out / "tables", command)
    (out / PLOTLY_JS).write_text(get_plotlyjs())
    built = lr_charts(runs)
    report.charts = write_lr_charts(runs, out / "charts", f"../{PLOTLY_JS}", built)
    report.figures = write_figures(runs, out / "figures")
    charts = {
        (v, s): (title, f"{CHART_DIV_ID}-{_slug(stem[3:])}", fig)
        for v, s, title, stem, fig in built
    }
    report.sections = [
        Section(
            variant,
            scale,
            group,
            variant_curves(variant, scale, group),
            charts.get((variant, scale)),
        )
        for variant, scale, group in variant_groups(runs)
    ]
    report.stability = [
        c for s in sorted({r.scale for r in runs}) if (c := stability_curve(runs, s))
    ]
    if notebook:
        report.notebook = execute_notebook(runs_dir, out)
    report.index.write_text(index_html(report, runs_dir))
    return report


# ---------------------------------------------------------------- the page

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
code, pre { background: #f4f4f4; padding: 0.1em 0.3em; border-radius: 3px; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f0f0f0; }
.warning { background: #fff3cd; border: 1px solid #e0c36a; padding: 0.6em 1em; font-weight: bold; }
.item { margin: 1.5em 0; }
img { max-width: 100%; border: 1px solid #ddd; }
.missing { color: #777; font-style: italic; }
.plot { border: 1px solid #eee; margin: 0.5em 0 1em 0; }
.runs li { margin: 0.15em 0; }
"""


def _plot(fig: go.Figure, div_id: str) -> str:
    """The figure's div and its Plotly.newPlot call; plotly.js itself is loaded once in <head>."""
    body = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id)
    return f'<div class="plot">{body}</div>'


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _table_html(t: WrittenTable, sections: list[Section]) -> str:
    """The table as it is in tables/, plus a column linking each row to its runs on this page."""
    shown = display_table(t.table).map(lambda v: html.escape(str(v)))
    by_key = {(s.variant, s.scale): s for s in sections}
    links = []
    for variant, scale in zip(t.table["preset"], t.table["scale"], strict=True):
        section = by_key.get((variant, scale))
        if section is None:
            links.append("")
            continue
        runs = " ".join(
            f'<a href="#{html.escape(_slug("run-" + r.name))}">seed {r.seed}</a>'
            for r in section.runs
        )
        links.append(f'<a href="#{html.escape(section.anchor)}">curves</a>: {runs}')
        shown.loc[len(links) - 1, "preset"] = (
            f'<a href="#{html.escape(section.anchor)}">{html.escape(variant)}</a>'
        )
    shown["runs"] = links
    return shown.to_html(index=False, border=0, escape=False)


def _section_html(section: Section, out: Path, command: str) -> list[str]:
    e = html.escape
    parts = [
        f'<div class="item" id="{e(section.anchor)}">',
        f"<h3>{e(section.variant)} ({e(section.scale)} scale)</h3>",
        '<ul class="runs">',
    ]
    for r in section.runs:
        acc = f"test accuracy {100 * float(r.test['accuracy']):.2f}%" if r.test else "unfinished"
        parts.append(
            f'<li id="{e(_slug("run-" + r.name))}">seed {r.seed}: {acc}; '
            f'<a href="{e(_rel(r.path, out))}/">{e(r.name)}</a> '
            f'(<a href="{e(_rel(r.path / "metrics.jsonl", out))}">metrics.jsonl</a>)</li>'
        )
    parts.append("</ul>")
    if not section.curves:
        parts.append('<p class="missing">No epoch finished yet: nothing to plot.</p>')
    for curve in section.curves:
        parts.append(_plot(curve.figure, _slug(f"{curve.kind}-{section.variant}-{section.scale}")))
    if section.lr_chart is not None:
        title, div_id, fig = section.lr_chart
        parts.append(_plot(fig, div_id))
    parts += [_produced_by(command), "</div>"]
    return parts


def _link(path: Path, base: Path, text: str | None = None) -> str:
    rel = path.relative_to(base).as_posix()
    return f'<a href="{html.escape(rel)}">{html.escape(text or rel)}</a>'


def _produced_by(command: str) -> str:
    return f"<p>Produced by: <code>{html.escape(command)}</code></p>"


def index_html(report: Report, runs_dir: Path) -> str:
    out, runs = report.out, report.runs
    finished = sum(r.finished for r in runs)
    scales = sorted({r.scale for r in runs})
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>mamlpp report</title>',
        f'<style>{_STYLE}</style><script src="{PLOTLY_JS}"></script></head><body>',
        "<h1>MAML++ reproduction: report</h1>",
        f"<p>{len(runs)} runs ({finished} finished, {len(runs) - finished} unfinished) from "
        f"<code>{e(str(runs_dir))}</code>, scale(s): {e(', '.join(scales))}. Generated "
        f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; every run listed in "
        f"{_link(out / 'runs.csv', out)}.</p>",
        _produced_by(report.command),
    ]
    if report.skipped:
        items = "".join(
            f'<li><a href="{e(_rel(path, out))}/">{e(path.name)}</a>: {e(reason)}</li>'
            for path, reason in report.skipped.items()
        )
        parts.append(
            '<div class="warning"><p>Left out of every table and chart below: run directories '
            f"that cannot be read ({len(report.skipped)}):</p><ul>{items}</ul></div>"
        )
    if any(s != "paper" for s in scales):
        parts.append(
            f'<p class="warning">{e(SMOKE_LABEL)}: runs below paper scale use shortened schedules; '
            "their numbers check that the pipeline works, not the paper's claims.</p>"
        )

    parts.append("<h2>Tables: test accuracy per preset</h2>")
    parts.append(
        "<p>One row per preset (paper order), mean ± sample std over seeds of the ensemble test "
        "accuracy in percent, the number of finished seeds, the paper's value and the difference. "
        "Runs are grouped by preset prefix: <code>omniglot_*</code> → Table 1, "
        "<code>miniimagenet_*</code> → Table 2, <code>stability_*</code> → Figure 2 runs.</p>"
    )
    for t in report.tables:
        links = " · ".join(_link(p, out, fmt) for fmt, p in t.files.items())
        parts += [
            '<div class="item">',
            f"<h3>{e(t.experiment.title)} ({e(t.scale)} scale)</h3>",
            f"<p>{e(t.caption)}</p>",
            _table_html(t, report.sections),
            f"<p>Files: {links}</p>",
            _produced_by(report.command),
            "</div>",
        ]

    parts.append("<h2>Every run, per preset: what it logged each epoch</h2>")
    parts.append(
        "<p>Interactive (plotly; zoom, hover, click a legend entry to hide a seed). One colour per "
        "seed. Per preset: validation and training accuracy and loss against epoch (dashed line: "
        "the paper's test accuracy, where the paper has one), the meta learning rate, the "
        "multi-step-loss weight of each inner step, the max and mean |g| of the meta-gradient of "
        "each weight tensor (other tensors are in each run's metrics.jsonl), and for MAML++ "
        "variants (LSLR) the learned inner learning rates: x = adapted tensor in network order "
        "with the inner steps unrolled; the chart opens with each seed at its own "
        "best-validation epoch, the slider (one step per epoch) moves every seed to epoch e, the "
        "button returns to the opening view. The same learning-rate chart, on a page of its own: "
        + (" · ".join(_link(path, out, title) for title, path in report.charts) or "none")
        + ".</p>"
    )
    for section in report.sections:
        parts += _section_html(section, out, report.command)

    parts.append("<h2>Stability (Figure 2)</h2>")
    if report.stability:
        for i, curve in enumerate(report.stability):
            parts += ['<div class="item">', _plot(curve.figure, f"stability-{i}"), "</div>"]
    else:
        parts.append(
            '<p class="missing">No stability_* runs with iterations.jsonl: no stability figure (run <code>make figure2</code>).</p>'
        )

    parts.append("<h2>Figures for papers (PNG, PDF)</h2>")
    texts = {
        "stability": "Training loss against outer iteration for the stride-2-conv networks, MAML vs "
        "MAML++, every seed (the paper's Figure 2: MAML++ trains stably where MAML does not).",
        "gradients": "Max, min and mean |g| of the meta-gradient of each weight tensor per epoch, runs "
        "without vs with the multi-step loss (log scale; the paper's argument for MSL).",
    }
    for kind, title, paths in report.figures:
        png = next(p for p in paths if p.suffix == ".png")
        parts += [
            '<div class="item">',
            f"<h3>{e(title)}</h3><p>{e(texts[kind])}</p>",
            f'<a href="{e(png.relative_to(out).as_posix())}"><img src="{e(png.relative_to(out).as_posix())}" alt="{e(title)}"></a>',
            f"<p>Files: {' · '.join(_link(p, out, p.suffix[1:].upper()) for p in paths)}</p>",
            _produced_by(report.command),
            "</div>",
        ]
    kinds = {kind for kind, _, _ in report.figures}
    if "gradients" not in kinds:
        parts.append(
            '<p class="missing">No task family with runs both without and with MSL: no gradient figure.</p>'
        )

    parts.append("<h2>Seed variance notebook</h2>")
    if report.notebook:
        parts.append(
            f"<p>Executed on these runs: {_link(report.notebook, out)} (per-seed curves, spread of "
            "final accuracies, agreement of learned rates across seeds).</p>"
        )
    else:
        nb_cmd = f"MAMLPP_RUNS_DIR={shlex.quote(str(runs_dir))} .venv/bin/jupyter execute analysis/notebooks/seed_variance.ipynb"
        parts.append(
            "<p>Per-seed curves, spread of final accuracies and the agreement of learned rates across "
            f"seeds: <code>analysis/notebooks/seed_variance.ipynb</code>. Run it on these runs with "
            f"<code>{e(nb_cmd)}</code>, or add <code>--notebook</code> to the report command to save an "
            "executed copy here.</p>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
