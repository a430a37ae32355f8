"""Interactive per-epoch curves for the report's index page (plotly): everything a run logs to
``metrics.jsonl``, one figure per kind and variant, every seed its own colour.

Per variant (runs that differ only in the seed) and scale:

* ``accuracy``  validation and training accuracy (%) against epoch, with the paper's test accuracy
  (mamlpp/presets.py) as a dashed reference line where the paper has one;
* ``loss``      validation and training loss against epoch;
* ``meta_lr``   the outer (meta) learning rate against epoch;
* ``msl``       the multi-step-loss weight of each inner step against epoch (line dash = step);
* ``gradients`` max and mean |g| of the meta-gradient of each weight tensor against epoch (log y).

Per scale with ``stability_*`` runs, ``stability``: the paper's Figure 2, training loss against
outer iteration from ``iterations.jsonl``, long runs averaged over consecutive iterations down to
at most ``MAX_POINTS`` points per run (the caption says so) to keep the page small.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mamlpp.analysis.figures import _grad_params
from mamlpp.analysis.runs import Run, iterations_frame, metrics_wide
from mamlpp.analysis.tables import _paper_rank
from mamlpp.presets import PRESETS
from mamlpp.runs.charts import seed_colour

MAX_POINTS = 2000
_MSL_KEY = re.compile(r"^msl/step(\d+)$")
_DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]


@dataclass(frozen=True)
class Curve:
    kind: str
    title: str
    figure: go.Figure


def variant_groups(runs: list[Run]) -> list[tuple[str, str, list[Run]]]:
    """[(variant, scale, runs sorted by seed)] in the paper's order."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.variant, r.scale), []).append(r)
    ordered = sorted(groups.items(), key=lambda kv: (_paper_rank(kv[1][0].preset), kv[0]))
    return [(v, s, sorted(g, key=lambda r: r.seed)) for (v, s), g in ordered]


def _layout(fig: go.Figure, title: str, height: int = 360) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01, "font": {"size": 14}},
        height=height,
        margin={"t": 60, "b": 40, "l": 60, "r": 20},
        template="plotly_white",
        legend={"title": {"text": "seed"}},
        hovermode="closest",
    )
    return fig


def _per_seed(
    fig: go.Figure,
    wide: pd.DataFrame,
    runs: list[Run],
    column: str,
    *,
    row: int | None = None,
    col: int | None = None,
    scale: float = 1.0,
    dash: str = "solid",
    suffix: str = "",
    show_legend: bool = True,
) -> None:
    for i, r in enumerate(runs):
        label = f"seed {r.seed}{suffix}"
        g = wide[wide["run"] == r.name]
        if column not in g or g[column].isna().all():
            continue
        g = g.dropna(subset=[column])
        fig.add_trace(
            go.Scatter(
                x=g["epoch"].tolist(),
                y=[scale * float(v) for v in g[column]],
                mode="lines+markers",
                name=label,
                legendgroup=f"seed {r.seed}",
                showlegend=show_legend,
                line={"color": seed_colour(i), "dash": dash, "width": 1.5},
                marker={"size": 5},
                hovertemplate=f"{label}<br>epoch %{{x}}<br>{column} %{{y:.4g}}<extra></extra>",
            ),
            row=row,
            col=col,
        )


def _two_panel(
    runs: list[Run],
    wide: pd.DataFrame,
    title: str,
    what: str,
    key: str,
    scale: float,
    paper: float | None,
) -> go.Figure:
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=[f"validation {what}", f"training {what}"], shared_yaxes=True
    )
    for c, split in enumerate(("val", "train"), start=1):
        _per_seed(fig, wide, runs, f"{split}/{key}", row=1, col=c, scale=scale, show_legend=c == 1)
        if paper is not None:
            fig.add_hline(
                y=paper,
                row=1,
                col=c,
                line={"dash": "dash", "color": "#444", "width": 1},
                annotation_text=f"paper (test) {paper:.2f}%",
                annotation_position="bottom right",
            )
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text=f"{what}{' (%)' if scale == 100 else ''}", row=1, col=1)
    return _layout(fig, title)


def variant_curves(variant: str, scale: str, runs: list[Run]) -> list[Curve]:
    """The figures of one variant's runs (kinds in the module docstring); those whose metrics
    are absent are left out."""
    wide = metrics_wide(runs)
    if wide.empty:
        return []
    name = f"{variant} ({scale})"
    preset = PRESETS.get(runs[0].preset)
    paper = preset.paper_accuracy if preset else None
    curves = [
        Curve("accuracy", f"{name}: accuracy", _two_panel(runs, wide, f"{name}: accuracy vs epoch", "accuracy", "acc", 100.0, paper)),
        Curve("loss", f"{name}: loss", _two_panel(runs, wide, f"{name}: loss vs epoch", "loss", "loss", 1.0, None)),
    ]  # fmt: skip
    if "meta_lr" in wide:
        fig = go.Figure()
        _per_seed(fig, wide, runs, "meta_lr")
        fig.update_xaxes(title_text="epoch")
        fig.update_yaxes(title_text="meta learning rate (outer Adam)", exponentformat="e")
        curves.append(
            Curve(
                "meta_lr",
                f"{name}: meta learning rate",
                _layout(fig, f"{name}: meta learning rate vs epoch", 300),
            )
        )
    steps = sorted(int(m.group(1)) for c in wide.columns if (m := _MSL_KEY.match(str(c))))
    if steps:
        fig = go.Figure()
        for k in steps:
            _per_seed(
                fig, wide, runs, f"msl/step{k}", dash=_DASHES[k % len(_DASHES)],
                suffix=f", step {k}",
            )  # fmt: skip
        fig.update_xaxes(title_text="epoch")
        fig.update_yaxes(title_text="multi-step-loss weight")
        _layout(fig, f"{name}: MSL weight of each inner step vs epoch (line dash = step)", 340)
        fig.update_layout(legend={"title": {"text": "seed, step"}})
        curves.append(Curve("msl", f"{name}: MSL weights", fig))
    grads = [c for c in wide.columns if str(c).startswith("grad/") and str(c).endswith("/max")]
    params = _grad_params(sorted(str(c)[5:-4] for c in grads))
    if params:
        fig = make_subplots(
            rows=2, cols=len(params), shared_xaxes=True, subplot_titles=params,
            horizontal_spacing=0.04, vertical_spacing=0.1,
        )  # fmt: skip
        for i, stat in enumerate(("max", "mean"), start=1):
            for j, param in enumerate(params, start=1):
                _per_seed(
                    fig, wide, runs, f"grad/{param}/{stat}", row=i, col=j,
                    show_legend=(i, j) == (1, 1),
                )  # fmt: skip
            fig.update_yaxes(title_text=f"{stat} |g|", row=i, col=1)
        fig.update_yaxes(type="log", exponentformat="e")
        fig.update_xaxes(title_text="epoch", row=2)
        title = f"{name}: meta-gradient |g| per weight tensor vs epoch (top max, bottom mean; log)"
        curves.append(Curve("gradients", f"{name}: gradient statistics", _layout(fig, title, 480)))
    return curves


def _binned(g: pd.DataFrame) -> pd.DataFrame:
    """At most MAX_POINTS rows: means over equal runs of consecutive iterations."""
    g = g.sort_values("iteration")
    width = math.ceil(len(g) / MAX_POINTS)
    if width <= 1:
        return g
    bins = pd.Series(range(len(g)), index=g.index) // width
    return g[["iteration", "train/loss"]].groupby(bins.values).mean()


def stability_curve(runs: list[Run], scale: str) -> Curve | None:
    """Figure 2 (training loss vs outer iteration, every stability run) for one scale."""
    chosen = [r for r in runs if r.preset.startswith("stability_") and r.scale == scale]
    frame = iterations_frame(chosen)
    if frame.empty:
        return None
    fig = go.Figure()
    binned = False
    for i, ((variant, seed), g) in enumerate(
        sorted(frame.groupby(["variant", "seed"]), key=lambda kv: kv[0])
    ):
        b = _binned(g)
        binned |= len(b) < len(g)
        fig.add_trace(
            go.Scatter(
                x=b["iteration"].tolist(), y=b["train/loss"].tolist(), mode="lines",
                name=f"{variant}, seed {seed}",
                line={"color": seed_colour(i), "width": 1.2,
                      "dash": "solid" if variant.startswith("stability_mamlpp") else "dot"},
            )
        )  # fmt: skip
    fig.update_xaxes(title_text="outer iteration")
    fig.update_yaxes(title_text="training loss (target set, after the inner steps)")
    note = (
        f" (mean over consecutive iterations, at most {MAX_POINTS} points per run)"
        if binned
        else ""
    )
    title = f"Stability (Figure 2), {scale} scale: stride-2 convs, MAML (dotted) vs MAML++ (solid){note}"
    _layout(fig, title, 420)
    fig.update_layout(legend={"title": {"text": "run"}})
    return Curve("stability", f"Stability (Figure 2), {scale} scale", fig)
