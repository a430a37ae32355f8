"""The paper's accuracy tables from run directories: one row per preset, mean ± std over seeds.

Runs are grouped into experiments by preset prefix (``omniglot_*`` -> Table 1,
``miniimagenet_*`` -> Table 2, ``stability_*`` -> the Figure 2 runs, anything else -> other
runs), one table per experiment and scale. Rows follow the paper's order
(``mamlpp.presets.PRESETS``); a preset run with overrides is a row of its own. Accuracies are
percentages (the files hold fractions); std is the sample standard deviation over seeds (ddof=1;
with one seed there is none: the accuracy shows the mean alone and the CSV's std is empty). Only finished runs (with ``test.json``) count; unfinished ones are counted in
their own column, so a missing seed shows as a smaller n, never as an error. Runs of another
fidelity (`Config.fidelity`, docs/fidelity.md) are rows of their own with a 'fidelity' column.
The paper column marks how sure each value is (`mamlpp.presets.Preset.paper_status`): '*' for a
value agreed by secondary sources, '(unconfirmed)' for one where sources conflict or none was found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mamlpp.analysis.runs import Run
from mamlpp.presets import PRESETS

SMOKE_LABEL = "SMOKE SCALE - not comparable to the paper"
STATUS_MARK = {"secondary": "*", "conflicting": " (unconfirmed)", "unsourced": " (unconfirmed)"}
"""Suffix of a paper value in the display tables, by `Preset.paper_status`."""
PAPER_NOTE = (
    "paper values: * = given alike by secondary sources, not read from the paper itself; "
    "(unconfirmed) = sources conflict or none was found (mamlpp.presets.SOURCES)"
)


@dataclass(frozen=True)
class Experiment:
    slug: str
    title: str


EXPERIMENTS = {
    "omniglot_": Experiment("table1_omniglot", "Table 1: Omniglot 20-way and 5-way"),
    "miniimagenet_": Experiment("table2_miniimagenet", "Table 2: mini-ImageNet 5-way"),
    "stability_": Experiment("figure2_stability", "Figure 2 runs: stability (stride-2 convs)"),
}
OTHER = Experiment("other", "Other runs (no paper table)")


def experiment_of(preset: str) -> Experiment:
    for prefix, experiment in EXPERIMENTS.items():
        if preset.startswith(prefix):
            return experiment
    return OTHER


def scale_note(scale: str) -> str:
    return (
        ""
        if scale == "paper"
        else (
            SMOKE_LABEL
            if scale == "smoke"
            else f"{scale.upper()} SCALE - not comparable to the paper"
        )
    )


def _paper_rank(preset: str) -> int:
    order = list(PRESETS)
    return order.index(preset) if preset in order else len(order)


def accuracy_table(runs: list[Run]) -> pd.DataFrame:
    """One row per (variant, scale) of ``runs``, numbers in percent, in the paper's order."""
    rows = []
    variants: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        variants.setdefault((r.variant, r.scale, r.fidelity), []).append(r)
    for (variant, scale, fidelity), group in sorted(
        variants.items(), key=lambda kv: (_paper_rank(kv[1][0].preset), kv[0])
    ):
        preset = PRESETS.get(group[0].preset)
        done = sorted((r for r in group if r.test is not None), key=lambda r: r.seed)
        acc = pd.Series([100.0 * float(r.test["accuracy"]) for r in done if r.test], dtype=float)
        mean = acc.mean() if len(acc) else math.nan
        paper = preset.paper_accuracy if preset and preset.paper_accuracy is not None else math.nan
        rows.append(
            {
                "preset": variant,
                "row": preset.description if preset else "",
                "scale": scale,
                "fidelity": fidelity,
                "n_seeds": len(done),
                "seeds": " ".join(str(r.seed) for r in done),
                "unfinished": len(group) - len(done),
                "mean": mean,
                "std": acc.std(ddof=1) if len(acc) > 1 else math.nan,
                "paper": paper,
                "paper_std": preset.paper_std
                if preset and preset.paper_std is not None
                else math.nan,
                "paper_status": preset.paper_status if preset and not math.isnan(paper) else "",
                "difference": mean - paper,
                "note": scale_note(scale),
            }
        )
    return pd.DataFrame(rows)


def _pm(mean: float, std: float, sep: str = " ± ") -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.2f}" + ("" if math.isnan(std) else f"{sep}{std:.2f}")


def _signed(x: float) -> str:
    if math.isnan(x):
        return "–"
    text = f"{x:+.2f}"
    return "+0.00" if text == "-0.00" else text  # a rounding of zero has no sign


def display_table(table: pd.DataFrame, pm: str = " ± ") -> pd.DataFrame:
    """Human-readable columns: accuracy as 'mean ± std', paper value, difference in points."""
    return pd.DataFrame(
        {
            "preset": table["preset"],
            "n seeds": table["n_seeds"],
            "test accuracy (%)": [
                _pm(m, s, pm) for m, s in zip(table["mean"], table["std"], strict=True)
            ],
            "paper (%)": [
                _pm(m, s, pm) + (STATUS_MARK.get(st, "") if not math.isnan(m) else "")
                for m, s, st in zip(
                    table["paper"], table["paper_std"], table["paper_status"], strict=True
                )
            ],
            "difference (points)": [_signed(d) for d in table["difference"]],
            "unfinished runs": table["unfinished"],
            "scale": [n or s for s, n in zip(table["scale"], table["note"], strict=True)],
            "fidelity": table["fidelity"],
        }
    )


def caption(title: str, table: pd.DataFrame) -> str:
    notes = sorted({n for n in table["note"] if n})
    label = f" - {'; '.join(notes)}" if notes else ""
    return (
        f"{title}{label}. Ensemble test accuracy, mean ± sample std (ddof=1) over seeds; "
        f"paper values from Antoniou et al. (2019); difference = ours - paper; {PAPER_NOTE}."
    )


def _latex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
        ("–", "--"),
    ):
        text = text.replace(a, b)
    return text


def _latex_number(text: str) -> str:
    """'mean PLUSMINUS std' plus any paper-status mark -> the number in math mode, mark after."""
    number, mark = text, ""
    for suffix in sorted(set(STATUS_MARK.values()), key=len, reverse=True):
        if text.endswith(suffix):
            number, mark = text[: -len(suffix)], suffix
            break
    return "$" + number.replace("PLUSMINUS", r"\pm") + "$" + mark


@dataclass(frozen=True)
class WrittenTable:
    experiment: Experiment
    scale: str
    table: pd.DataFrame
    caption: str
    files: dict[str, Path]
    """Format ('md', 'csv', 'tex') -> path."""


def write_tables(runs: list[Run], out_dir: Path, command: str) -> list[WrittenTable]:
    """One table per experiment and scale as Markdown, CSV and LaTeX, the command beside each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((experiment_of(r.preset).slug, r.scale), []).append(r)
    experiments = {e.slug: e for e in [*EXPERIMENTS.values(), OTHER]}
    order = [e.slug for e in experiments.values()]
    written = []
    for (slug, scale), group in sorted(
        groups.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])
    ):
        experiment = experiments[slug]
        table = accuracy_table(group)
        text = caption(experiment.title, table)
        stem = out_dir / f"{slug}_{scale}"
        files = {
            "md": stem.with_suffix(".md"),
            "csv": stem.with_suffix(".csv"),
            "tex": stem.with_suffix(".tex"),
        }
        files["md"].write_text(
            f"**{text}**\n\n{display_table(table).to_markdown(index=False, disable_numparse=True)}\n\n"
            f"Produced by: `{command}`\n"
        )
        table.to_csv(files["csv"], index=False)
        latex = display_table(table, pm=" PLUSMINUS ").map(lambda v: _latex_escape(str(v)))
        for column in ("test accuracy (%)", "paper (%)"):
            latex[column] = [
                v if v == "--" else _latex_number(v)
                for v in latex[column]
            ]
        latex.columns = [_latex_escape(c) for c in latex.columns]
        files["tex"].write_text(
            f"% Produced by: {command}\n"
            + latex.to_latex(
                index=False,
                caption=_latex_escape(text).replace("±", r"$\pm$"),
                label=f"tab:{slug}_{scale}",
            )
        )
        written.append(WrittenTable(experiment, scale, table, text, files))
    return written
