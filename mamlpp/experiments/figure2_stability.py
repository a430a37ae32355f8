"""Figure 2 of the paper (stability): strided-conv MAML against strided-conv MAML++.

Both use stride-2 convolutions instead of max-pooling (Omniglot 20-way 1-shot), the setting in
which the paper shows MAML's training loss oscillating and MAML++'s staying smooth. The paper
gives a figure, not numbers:

| preset | row | paper |
| --- | --- | --- |
| stability_maml | MAML, stride-2 convs, no max-pool | figure only (unstable training loss) |
| stability_mamlpp | MAML++, stride-2 convs, no max-pool | figure only (stable training loss) |

2 presets x seeds 0, 1, 2 = 6 runs. The curve is the training loss of every outer iteration,
which every run writes to ``iterations.jsonl`` (docs/run-directory.md); nothing extra to log.

Runtime: docs/runtimes.md (generated from mamlpp/experiments/cost_*.jsonl by
`python -m mamlpp.experiments.cost docs`), per row and for the figure, smoke and paper scale.

Command:
    make figure2 SCALE=smoke            # = mamlpp sweep run figure2 --scale smoke --jobs auto --runs-dir runs/smoke
"""

from __future__ import annotations

from mamlpp.experiments.experiment import Experiment

EXPERIMENT = Experiment(
    name="figure2",
    module="figure2_stability",
    title="Figure 2: training stability of strided-conv MAML vs MAML++",
    presets=("stability_maml", "stability_mamlpp"),
)
