"""The `mamlpp` command line: one click group, one subcommand per job.

Every subcommand lives in the module that owns its job; this file only wires them together and
turns user errors (MamlppError) into a one-line message with exit code 2.
"""

from __future__ import annotations

import sys

import click

from mamlpp.errors import MamlppError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except MamlppError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mamlpp")
def main() -> None:
    """mamlpp: MAML++ reproduced, measured and explained.

    \b
    Example:
      mamlpp presets
      mamlpp train --preset omniglot_5way_1shot_mamlpp --scale smoke --seed 0
    """
    from mamlpp.kernels.cpu_memory import keep_freed_memory

    keep_freed_memory()  # mamlpp/kernels/cpu_memory.py; measured: benchmarks/RESULTS.md#cpu


@main.command()
@click.option("--verbose", "-v", is_flag=True, help="Also print each preset's full config.")
def presets(verbose: bool) -> None:
    """List every paper configuration with the table and row it reproduces.

    \b
    Example:
      mamlpp presets
    """
    from mamlpp.presets import PRESETS

    width = max(len(n) for n in PRESETS)
    for name, p in PRESETS.items():
        click.echo(f"{name:<{width}}  {p.description}")
        if verbose:
            click.echo(p.config.to_json())


def _register() -> None:
    """Attach the subcommands owned by other modules."""
    from mamlpp.analysis.cli import report
    from mamlpp.bench import bench
    from mamlpp.data.cli import data
    from mamlpp.experiments.sweep import sweep
    from mamlpp.runs.cli import test, train

    for command in (train, test, data, sweep, report, bench):
        main.add_command(command)


_register()

if __name__ == "__main__":
    main()
