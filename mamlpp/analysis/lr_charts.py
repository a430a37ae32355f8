"""Interactive learning-rate charts (plotly), as in the MAML++ blog.

One chart per MAML++ variant (runs whose config has ``inner.lslr`` true) and scale.
x = adapted tensor in network order with the inner steps unrolled (``conv0.weight/step0``, ...),
y = the learned inner learning rate (``lslr/<param>/step<k>``), one trace (colour) per seed.

Design of the slider: the chart opens with each seed's trace at that seed's best-``val/acc``
epoch (the checkpoints the test ensemble is built from, so seeds may show different epochs); the
slider has one step per epoch and moves every seed to epoch e; the "best epoch per seed" button
returns to the opening view. The title always says which view is shown. The figure itself is
built by mamlpp.runs.charts, which the W&B mirror uses too.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from mamlpp.analysis.runs import Run, best_epochs, lslr_frame
from mamlpp.analysis.tables import scale_note
from mamlpp.runs.charts import LrSeries, lr_figure

CHART_DIV_ID = "lr-chart"


def _clean(values: pd.Series) -> list[float | None]:
    return [
        None if (v is None or (isinstance(v, float) and math.isnan(v))) else float(v)
        for v in values
    ]


def lr_chart(runs: list[Run], title: str) -> go.Figure:
    """The chart for the runs of one variant (one run per seed), built by
    :func:`mamlpp.runs.charts.lr_figure` (the W&B mirror draws the same chart for one run)."""
    frame = lslr_frame(runs)
    if frame.empty:
        raise ValueError(f"no lslr/<param>/step<k> keys in the metrics of {title}")
    labels = frame.drop_duplicates("position").sort_values("position")["tensor_step"].tolist()
    best = best_epochs(runs)
    by_run = {r.name: r for r in runs}
    series = []
    for name in sorted(frame["run"].unique(), key=lambda n: by_run[n].seed):
        own = frame[frame["run"] == name]
        by_epoch = {
            int(epoch): _clean(g.set_index("position")["rate"].reindex(range(len(labels))))
            for epoch, g in own.groupby("epoch")
        }
        opening = best.get(name, int(own["epoch"].max()))
        series.append(LrSeries(by_run[name].seed, by_epoch, opening))
    return lr_figure(title, labels, series)


def chart_stem(run: Run) -> str:
    """File stem for a variant's chart: the run directory's name without its seed (run names
    already shorten long override slugs to 60 characters plus a hash), ``__default`` dropped."""
    stem = re.sub(r"__seed\d+", "", run.name).replace("__default", "")
    return "lr_" + re.sub(r"[^A-Za-z0-9._=,-]+", "-", stem)


def lr_charts(runs: list[Run]) -> list[tuple[str, str, str, str, go.Figure]]:
    """[(variant, scale, title, file stem, figure)], one per LSLR variant and scale."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        if r.uses_lslr:
            groups.setdefault((r.variant, r.scale), []).append(r)
    charts = []
    for (variant, scale), group in sorted(groups.items()):
        title = f"{variant} ({scale_note(scale) or scale + ' scale'})"
        try:
            fig = lr_chart(group, title)
        except ValueError:
            continue
        charts.append((variant, scale, title, chart_stem(group[0]), fig))
    return charts


def write_lr_charts(
    runs: list[Run],
    out_dir: Path,
    plotlyjs: bool | str = True,
    charts: list[tuple[str, str, str, str, go.Figure]] | None = None,
) -> list[tuple[str, Path]]:
    """One HTML chart per LSLR variant and scale: [(variant title, path)]. ``plotlyjs`` is
    plotly's ``include_plotlyjs``: True embeds plotly.js (a page that stands alone, about 4.8 MB),
    a path ending in ``.js`` references one shared copy (what the report does). ``charts``:
    :func:`lr_charts` of ``runs`` when the caller has it already."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for _, _, title, stem, fig in lr_charts(runs) if charts is None else charts:
        path = out_dir / f"{stem}.html"
        fig.write_html(path, include_plotlyjs=plotlyjs, full_html=True, div_id=CHART_DIV_ID)
        written.append((title, path))
    return written
