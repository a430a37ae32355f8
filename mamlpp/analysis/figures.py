"""Static figures (matplotlib, PNG for the page and PDF for papers).

* Stability (the paper's Figure 2): training loss against outer iteration (``iterations.jsonl``),
  stride-2-conv MAML (``stability_maml``) against MAML++ (``stability_mamlpp``), every seed.
* Gradient statistics: max, min and mean |g| of the meta-gradient of each weight tensor over the
  epochs, for runs without and with the multi-step loss (MSL) of the same task family. Where the
  family has both MAML and MAML + MSL runs only those two are compared (the paper's argument);
  otherwise every MSL-off run against every MSL-on run.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mamlpp.analysis.runs import Run, _param_order, grad_frame, iterations_frame  # noqa: E402
from mamlpp.analysis.tables import scale_note  # noqa: E402

STABILITY_COLOURS = {"stability_maml": "tab:red", "stability_mamlpp": "tab:blue"}
LINESTYLES = ["-", "--", ":", "-."]
GRAD_STATS = ["max", "min", "mean"]


def _save(fig: Figure, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=120, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _suffix(scale: str) -> str:
    return f" - {scale_note(scale)}" if scale_note(scale) else ""


def stability_figure(runs: list[Run], scale: str) -> Figure | None:
    """train/loss vs iteration for the stability_* runs of one scale; None when there are none."""
    chosen = [r for r in runs if r.preset.startswith("stability_") and r.scale == scale]
    frame = iterations_frame(chosen)
    if frame.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = dict(STABILITY_COLOURS)
    for i, ((variant, seed), g) in enumerate(
        sorted(frame.groupby(["variant", "seed"]), key=lambda kv: kv[0])
    ):
        colour = colours.setdefault(variant, f"C{i % 10}")
        g = g.sort_values("iteration")
        ax.plot(
            g["iteration"],
            g["train/loss"],
            color=colour,
            linestyle=LINESTYLES[seed % 4],
            lw=1,
            alpha=0.85,
            label=f"{variant}, seed {seed}",
        )
    ax.set_xlabel("outer iteration")
    ax.set_ylabel("training loss (target set, after the inner steps)")
    ax.set_title(
        f"Stability (Figure 2): stride-2 convs, MAML vs MAML++{_suffix(scale)}", fontsize=10
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _grad_params(params: list[str]) -> list[str]:
    weights = [
        p
        for p in params
        if (p.startswith("conv") or p.startswith("linear")) and p.endswith(".weight")
    ]
    return sorted(weights or params[:5], key=_param_order)


def _msl_pair(family: list[Run]) -> list[Run]:
    """MAML vs MAML + MSL where the family has both, else all MSL-off vs all MSL-on runs."""

    def per_step_bn(r: Run) -> bool:
        bn = r.config.get("bn", {})
        return bool(bn.get("per_step_stats") or bn.get("per_step_affine"))

    pure = [r for r in family if not r.uses_lslr and not per_step_bn(r)]
    for chosen in (pure, family):
        if {r.uses_msl for r in chosen} == {False, True}:
            return chosen
    return []


def _family(r: Run) -> tuple[str, ...]:
    data, model = r.config.get("data", {}), r.config.get("model", {})
    return (
        str(data.get("dataset")),
        f"{data.get('n_way')}-way",
        f"{data.get('k_shot')}-shot",
        str(model.get("downsample")),
        r.scale,
    )


def gradient_figures(runs: list[Run]) -> list[tuple[str, str, Figure]]:
    """One figure per task family and scale that has runs without and with MSL:
    [(file stem, title, fig)]."""
    families: dict[tuple[str, ...], list[Run]] = {}
    for r in runs:
        families.setdefault(_family(r), []).append(r)
    out = []
    for family, members in sorted(families.items()):
        frame = grad_frame(_msl_pair([r for r in members if r.metrics()]))
        if frame.empty:
            continue
        chosen = [r for r in members if r.name in set(frame["run"])]
        params = _grad_params(sorted(frame["param"].unique().tolist()))
        scale = family[-1]
        title = f"Meta-gradient |g| statistics, {' '.join(family[:3])} ({family[3]}): MSL off vs on{_suffix(scale)}"
        fig, axes = plt.subplots(
            len(GRAD_STATS),
            len(params),
            figsize=(3.0 * len(params), 2.4 * len(GRAD_STATS)),
            squeeze=False,
            sharex=True,
        )
        colours: dict[str, str] = {}
        labelled: set[str] = set()
        for (variant, seed), g in sorted(frame.groupby(["variant", "seed"]), key=lambda kv: kv[0]):
            msl = next(r.uses_msl for r in chosen if r.variant == variant)
            colour = colours.setdefault(variant, f"C{len(colours)}")
            for i, stat in enumerate(GRAD_STATS):
                for j, param in enumerate(params):
                    s = g[(g["stat"] == stat) & (g["param"] == param)].sort_values("epoch")
                    label = None
                    if variant not in labelled:
                        label = f"{variant} ({'MSL' if msl else 'no MSL'})"
                        labelled.add(variant)
                    axes[i][j].plot(
                        s["epoch"],
                        s["value"],
                        color=colour,
                        linestyle=LINESTYLES[seed % 4],
                        lw=1,
                        marker=".",
                        label=label,
                    )
        for i, stat in enumerate(GRAD_STATS):
            for j, param in enumerate(params):
                ax = axes[i][j]
                ax.set_yscale("log")
                ax.grid(alpha=0.3)
                if i == 0:
                    ax.set_title(param, fontsize=9)
                if j == 0:
                    ax.set_ylabel(f"{stat} |g|")
                if i == len(GRAD_STATS) - 1:
                    ax.set_xlabel("epoch")
        handles, labels = [], []
        for ax in axes.flat:
            h, lab = ax.get_legend_handles_labels()
            handles += h
            labels += lab
        fig.legend(
            handles,
            labels,
            loc="lower center",
            ncol=max(1, len(labels)),
            fontsize=8,
            bbox_to_anchor=(0.5, -0.04),
        )
        fig.suptitle(title + "\n(one line per seed; line style = seed)", fontsize=10)
        fig.tight_layout()
        out.append(("gradients_" + "_".join(family).replace("-", ""), title, fig))
    return out


def write_figures(runs: list[Run], out_dir: Path) -> list[tuple[str, str, list[Path]]]:
    """Write every figure as PNG and PDF: [(kind, title, [png, pdf])]."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for scale in sorted({r.scale for r in runs}):
        fig = stability_figure(runs, scale)
        if fig is not None:
            title = f"Stability (Figure 2), {scale} scale"
            written.append(("stability", title, _save(fig, out_dir / f"figure2_stability_{scale}")))
    for stem, title, fig in gradient_figures(runs):
        written.append(("gradients", title, _save(fig, out_dir / stem)))
    return written
