"""Interactive learning-rate charts (plotly), as in the MAML++ blog.

One chart per MAML++ variant (runs whose config has ``inner.lslr`` true) and scale.
x = adapted tensor in network order with the inner steps unrolled (``conv0.weight/step0``, ...),
y = the learned inner learning rate (``lslr/<param>/step<k>``), one trace (colour) per seed.

Design of the slider: the chart opens with each seed's trace at that seed's best-``val/acc``
epoch (the checkpoints the test ensemble is built from, so seeds may show different epochs); the
slider has one step per epoch and moves every seed to epoch e; the "best epoch per seed" button
returns to the opening view. The title always says which view is shown. The HTML embeds
plotly.js, so it works offline.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from mamlpp.analysis.runs import Run, best_epochs, lslr_frame
from mamlpp.analysis.tables import scale_note

CHART_DIV_ID = "lr-chart"


def _clean(values: pd.Series) -> list[float | None]:
    return [
        None if (v is None or (isinstance(v, float) and math.isnan(v))) else float(v)
        for v in values
    ]


def lr_chart(runs: list[Run], title: str) -> go.Figure:
    """The chart for the runs of one variant (one run per seed)."""
    frame = lslr_frame(runs)
    if frame.empty:
        raise ValueError(f"no lslr/<param>/step<k> keys in the metrics of {title}")
    labels = frame.drop_duplicates("position").sort_values("position")["tensor_step"].tolist()
    epochs = sorted(frame["epoch"].unique().tolist())
    best = best_epochs(runs)
    by_run = {r.name: r for r in runs}
    seeds = sorted(frame["run"].unique(), key=lambda name: by_run[name].seed)

    def rates(run_name: str, epoch: int) -> list[float | None]:
        rows = frame[(frame["run"] == run_name) & (frame["epoch"] == epoch)].set_index("position")[
            "rate"
        ]
        return _clean(rows.reindex(range(len(labels))))

    opening: dict[str, int] = {}
    for name in seeds:
        run_epochs = frame.loc[frame["run"] == name, "epoch"]
        opening[name] = best.get(name, int(run_epochs.max()))
    palette = qualitative.Plotly
    fig = go.Figure()
    for i, name in enumerate(seeds):
        seed = by_run[name].seed
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=rates(name, opening[name]),
                mode="lines+markers",
                name=f"seed {seed} (best epoch {opening[name]})",
                line={"color": palette[i % len(palette)], "width": 1.5},
                marker={"size": 6},
                hovertemplate=f"seed {seed}<br>%{{x}}<br>rate %{{y:.4f}}<extra></extra>",
            )
        )
    opening_title = _title(
        title,
        "each seed at its best-validation epoch ("
        + ", ".join(f"seed {by_run[n].seed}: {opening[n]}" for n in seeds)
        + ")",
    )
    opening_args: list[dict[str, Any]] = [
        {
            "y": [rates(n, opening[n]) for n in seeds],
            "name": [f"seed {by_run[n].seed} (best epoch {opening[n]})" for n in seeds],
        },
        {"title.text": opening_title},
    ]
    steps = [
        {
            "label": str(e),
            "method": "update",
            "args": [
                {
                    "y": [rates(n, e) for n in seeds],
                    "name": [f"seed {by_run[n].seed} (epoch {e})" for n in seeds],
                },
                {"title.text": _title(title, f"all seeds at epoch {e}")},
            ],
        }
        for e in epochs
    ]
    # The handle starts at the most common best epoch (exact when all seeds agree).
    common = Counter(opening.values()).most_common()
    start = max(e for e, c in common if c == common[0][1])
    fig.update_layout(
        title={"text": opening_title, "x": 0.01, "font": {"size": 14}},
        xaxis={
            "title": "adapted tensor / inner step (network order, steps unrolled)",
            "type": "category",
            "tickangle": -60,
        },
        yaxis={"title": "learned inner learning rate", "zeroline": True},
        sliders=[
            {
                "active": epochs.index(start) if start in epochs else 0,
                "currentvalue": {"visible": False},
                "pad": {"t": 150},
                "steps": steps,
                "len": 0.82,
                "x": 0.18,
            }
        ],
        updatemenus=[
            {
                "type": "buttons",
                "showactive": False,
                "x": 0.0,
                "xanchor": "left",
                "y": 0.0,
                "yanchor": "top",
                "pad": {"t": 150},
                "buttons": [{"label": "best epoch per seed", "method": "update", "args": opening_args}],
            }
        ],
        margin={"t": 110, "b": 40},
        height=720,
        legend={"title": {"text": "seed"}},
        template="plotly_white",
    )
    return fig


def _title(title: str, view: str) -> str:
    return (
        f"{title}: learned inner learning rates - {view}"
        "<br><sup>Opens with each seed at its own best-val/acc epoch; the slider moves every seed to "
        "epoch e; the button returns to the opening view.</sup>"
    )


def chart_stem(run: Run) -> str:
    """File stem for a variant's chart: the run directory's name without its seed (run names
    already shorten long override slugs to 60 characters plus a hash), ``__default`` dropped."""
    stem = re.sub(r"__seed\d+", "", run.name).replace("__default", "")
    return "lr_" + re.sub(r"[^A-Za-z0-9._=,-]+", "-", stem)


def write_lr_charts(runs: list[Run], out_dir: Path) -> list[tuple[str, Path]]:
    """One self-contained HTML chart per LSLR variant and scale: [(variant title, path)]."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        if r.uses_lslr:
            groups.setdefault((r.variant, r.scale), []).append(r)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (variant, scale), group in sorted(groups.items()):
        title = f"{variant} ({scale_note(scale) or scale + ' scale'})"
        try:
            fig = lr_chart(group, title)
        except ValueError:
            continue
        path = out_dir / f"{chart_stem(group[0])}.html"
        fig.write_html(path, include_plotlyjs=True, full_html=True, div_id=CHART_DIV_ID)
        written.append((title, path))
    return written
