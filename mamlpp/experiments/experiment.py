"""What an experiment is: a grid of presets x seeds with shared overrides."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from mamlpp.errors import MamlppError

PAPER_SEEDS: tuple[int, ...] = (0, 1, 2)


@dataclass(frozen=True)
class GridPoint:
    """One run of an experiment: a preset and a seed (the experiment's overrides apply to all)."""

    preset: str
    seed: int


@dataclass(frozen=True)
class Experiment:
    name: str
    """Short name used by the CLI and make: table1, table2, figure2."""
    module: str
    """The module defining it (accepted as an alias of ``name``)."""
    title: str
    """Which paper artefact it reproduces."""
    presets: tuple[str, ...]
    """The rows, in the paper's order; every one a key of ``mamlpp.presets.PRESETS``."""
    seeds: tuple[int, ...] = PAPER_SEEDS
    overrides: tuple[str, ...] = ()
    """``key=value`` overrides applied to every run (none for the paper's grids)."""

    def grid(self, presets: tuple[str, ...] = (), seeds: tuple[int, ...] = ()) -> list[GridPoint]:
        """The grid points, presets outer and seeds inner; optionally only some rows or seeds.

        A row that is not in this experiment is an error; any seed may be asked for. A row or
        seed asked for twice is one grid point (one run directory), not two."""
        unknown = [p for p in presets if p not in self.presets]
        if unknown:
            raise MamlppError(
                f"preset(s) {', '.join(unknown)} are not rows of experiment {self.name}; "
                f"its rows are: {', '.join(self.presets)}"
            )
        rows = [p for p in self.presets if p in presets] if presets else list(self.presets)
        seeds = tuple(dict.fromkeys(seeds)) or self.seeds
        return [GridPoint(p, s) for p, s in itertools.product(rows, seeds)]
