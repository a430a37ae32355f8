"""`mamlpp report`: run directories (local, or imported from W&B) -> tables, charts, figures, page."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.option(
    "--runs-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder holding run directories (searched at any depth); the W&B cache with --from-wandb.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for index.html, tables/, charts/ and figures/ (e.g. reports/smoke).",
)
@click.option(
    "--from-wandb",
    "from_wandb",
    metavar="ENTITY/PROJECT",
    default=None,
    help="First import every run of this W&B project into --runs-dir (cached).",
)
@click.option(
    "--notebook", is_flag=True, help="Also execute the seed-variance notebook and save it in --out."
)
def report(runs_dir: Path, out: Path, from_wandb: str | None, notebook: bool) -> None:
    """Write the paper's tables, learning-rate charts, figures and an index page.

    \b
    Example:
      mamlpp report --runs-dir runs/smoke --out reports/smoke
      mamlpp report --runs-dir runs/wandb --out reports/paper --from-wandb my-team/mamlpp
    """
    from mamlpp.analysis.report import build_report, report_command

    if from_wandb:
        from mamlpp.analysis.wandb_import import import_wandb

        folders = import_wandb(from_wandb, runs_dir)
        click.echo(f"imported {len(folders)} W&B runs of {from_wandb} into {runs_dir}")
    built = build_report(
        runs_dir, out, report_command(runs_dir, out, from_wandb, notebook), notebook=notebook
    )
    for path, reason in built.skipped.items():
        click.echo(f"warning: {path} left out of the report: {reason}", err=True)
    click.echo(
        f"{len(built.runs)} runs -> {len(built.tables)} tables, {len(built.charts)} learning-rate charts, "
        f"{len(built.figures)} figures; open {built.index}"
    )
