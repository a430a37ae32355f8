"""Table 2 of the paper (mini-ImageNet 5-way): MAML and MAML++ with 1 to 5 inner steps.

Rows (preset: the paper's test accuracy, %, mean +- std over 3 seeds where the paper gives one):

| preset | row | paper |
| --- | --- | --- |
| miniimagenet_5way_1shot_maml | 1-shot, MAML (local reproduction), 5 steps | 48.64 |
| miniimagenet_5way_1shot_mamlpp_1step | 1-shot, MAML++, 1 inner step | 51.05 +- 0.31 |
| miniimagenet_5way_1shot_mamlpp_2step | 1-shot, MAML++, 2 inner steps | 51.49 +- 0.25 |
| miniimagenet_5way_1shot_mamlpp_3step | 1-shot, MAML++, 3 inner steps | 51.11 +- 0.11 |
| miniimagenet_5way_1shot_mamlpp_4step | 1-shot, MAML++, 4 inner steps | 51.65 +- 0.34 |
| miniimagenet_5way_1shot_mamlpp | 1-shot, MAML++, 5 inner steps | 52.15 +- 0.26 |
| miniimagenet_5way_5shot_maml | 5-shot, MAML (local reproduction), 5 steps | 64.78 |
| miniimagenet_5way_5shot_mamlpp | 5-shot, MAML++, 5 inner steps | 68.32 +- 0.44 |

The two 5-step MAML++ values are the ICLR 2019 version's as secondary sources cite it; another
listing gives 52.40 and 67.15 (`mamlpp.presets.SOURCES`); no value here was read from the paper
itself, and the 1-4-step and MAML rows were found in no source.

8 presets x seeds 0, 1, 2 = 24 runs. Needs mini-ImageNet under the data root
(docs/data.md lists the accepted formats).

Runtime: docs/runtimes.md (generated from mamlpp/experiments/cost_*.jsonl by
`python -m mamlpp.experiments.cost docs`), per row and for the table, smoke and paper scale.

Command:
    make table2 SCALE=smoke             # = mamlpp sweep run table2 --scale smoke --jobs auto --runs-dir runs/smoke
    make table2 SCALE=paper             # one job per visible GPU
"""

from __future__ import annotations

from mamlpp.experiments.experiment import Experiment

EXPERIMENT = Experiment(
    name="table2",
    module="table2_miniimagenet",
    title="Table 2: mini-ImageNet 5-way 1-shot (1-5 inner steps) and 5-shot",
    presets=(
        "miniimagenet_5way_1shot_maml",
        "miniimagenet_5way_1shot_mamlpp_1step",
        "miniimagenet_5way_1shot_mamlpp_2step",
        "miniimagenet_5way_1shot_mamlpp_3step",
        "miniimagenet_5way_1shot_mamlpp_4step",
        "miniimagenet_5way_1shot_mamlpp",
        "miniimagenet_5way_5shot_maml",
        "miniimagenet_5way_5shot_mamlpp",
    ),
)
