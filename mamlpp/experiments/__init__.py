"""The paper's experiments: one module per table or figure, each a grid of presets x seeds.

``EXPERIMENTS`` maps an experiment's name (``table1``, ``table2``, ``figure2``) to its
``Experiment``; ``get_experiment`` also accepts the module's name (``table1_omniglot``).
``mamlpp sweep run NAME`` trains the grid locally, ``mamlpp sweep export NAME`` writes it as a
W&B grid sweep; ``make table1`` etc. wrap the former and then build the report.
"""

from __future__ import annotations

from mamlpp.errors import MamlppError
from mamlpp.experiments import figure2_stability, table1_omniglot, table2_miniimagenet
from mamlpp.experiments.experiment import PAPER_SEEDS, Experiment, GridPoint

__all__ = ["EXPERIMENTS", "PAPER_SEEDS", "Experiment", "GridPoint", "get_experiment"]


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        table1_omniglot.EXPERIMENT,
        table2_miniimagenet.EXPERIMENT,
        figure2_stability.EXPERIMENT,
    )
}


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name`` (or defined in module ``name``); a clear error otherwise."""
    for e in EXPERIMENTS.values():
        if name in (e.name, e.module):
            return e
    raise MamlppError(
        f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)} "
        "(or their modules: " + ", ".join(e.module for e in EXPERIMENTS.values()) + ")"
    )
