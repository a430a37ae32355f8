"""The learned-learning-rate chart (plotly) from plain per-epoch numbers, shared by the report
(mamlpp.analysis.lr_charts, all seeds of a variant) and the W&B mirror (mamlpp.runs.tracking,
one run), so both show the same picture. No run loading and no pandas here: callers pass the
rates.

The chart, as in the MAML++ blog: x = adapted tensor in network order with the inner steps
unrolled (``conv0.weight/step0``, ...), y = learned inner learning rate, one trace (colour) per
seed. It opens with each seed at its own opening epoch (the report uses each seed's
best-``val/acc`` epoch, the checkpoints the test ensemble is built from); the slider has one step
per epoch and moves every seed to epoch e; the "best epoch per seed" button returns to the
opening view. The title always says which view is shown.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative

PALETTE = qualitative.Plotly
LSLR_KEY = re.compile(r"^lslr/(?P<param>.+)/step(?P<step>\d+)$")


@dataclass(frozen=True)
class LrSeries:
    """One seed's learned rates: ``by_epoch[e][i]`` is the rate at x position ``i`` after epoch e."""

    seed: int
    by_epoch: Mapping[int, Sequence[float | None]]
    opening: int


def seed_colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def lr_figure(title: str, labels: Sequence[str], series: Sequence[LrSeries]) -> go.Figure:
    """The chart with its epoch slider and "best epoch per seed" button."""
    epochs = sorted({e for s in series for e in s.by_epoch})

    def rates(s: LrSeries, epoch: int) -> list[float | None]:
        return list(s.by_epoch.get(epoch, [None] * len(labels)))

    fig = go.Figure()
    for i, s in enumerate(series):
        fig.add_trace(
            go.Scatter(
                x=list(labels),
                y=rates(s, s.opening),
                mode="lines+markers",
                name=f"seed {s.seed} (best epoch {s.opening})",
                line={"color": seed_colour(i), "width": 1.5},
                marker={"size": 6},
                hovertemplate=f"seed {s.seed}<br>%{{x}}<br>rate %{{y:.4f}}<extra></extra>",
            )
        )
    opening_title = _title(
        title,
        "each seed at its best-validation epoch ("
        + ", ".join(f"seed {s.seed}: {s.opening}" for s in series)
        + ")",
    )
    opening_args: list[dict[str, Any]] = [
        {
            "y": [rates(s, s.opening) for s in series],
            "name": [f"seed {s.seed} (best epoch {s.opening})" for s in series],
        },
        {"title.text": opening_title},
    ]
    steps = [
        {
            "label": str(e),
            "method": "update",
            "args": [
                {
                    "y": [rates(s, e) for s in series],
                    "name": [f"seed {s.seed} (epoch {e})" for s in series],
                },
                {"title.text": _title(title, f"all seeds at epoch {e}")},
            ],
        }
        for e in epochs
    ]
    # The handle starts at the most common opening epoch (exact when all seeds agree).
    common = Counter(s.opening for s in series).most_common()
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
                "buttons": [
                    {"label": "best epoch per seed", "method": "update", "args": opening_args}
                ],
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


def run_lr_figure(rows: Sequence[Mapping[str, Any]], title: str, seed: int) -> go.Figure | None:
    """The chart of one run from its ``metrics.jsonl`` rows (x in the order the trainer logs the
    ``lslr/<param>/step<k>`` keys: network order); None when the rows hold no learned rates."""
    rows = [r for r in rows if "epoch" in r]
    keys = [key for key in (rows[0] if rows else {}) if LSLR_KEY.match(key)]
    if not keys:
        return None
    labels = [key.removeprefix("lslr/") for key in keys]
    by_epoch = {int(r["epoch"]): [_number(r.get(k)) for k in keys] for r in rows}
    scored = [r for r in rows if isinstance(r.get("val/acc"), int | float)]
    opening = (
        int(max(scored, key=lambda r: (r["val/acc"], -r["epoch"]))["epoch"])
        if scored
        else max(by_epoch)
    )
    return lr_figure(title, labels, [LrSeries(seed, by_epoch, opening)])


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and value == value:  # NaN != NaN
        return float(value)
    return None
