"""Table 1 of the paper (Omniglot): MAML, the single-component ablations, and MAML++.

Rows (preset: the paper's test accuracy, %, mean +- std over 3 seeds where the paper gives one):

| preset | row | paper |
| --- | --- | --- |
| omniglot_20way_1shot_maml | 20-way 1-shot, MAML (local replication) | 91.27 +- 1.07 |
| omniglot_20way_1shot_maml_msl | 20-way 1-shot, MAML + MSL | 91.53 +- 0.69 |
| omniglot_20way_1shot_maml_lslr | 20-way 1-shot, MAML + LSLR | 95.77 +- 0.38 |
| omniglot_20way_1shot_maml_bnwb_bnrs | 20-way 1-shot, MAML + BNWB + BNRS | 95.35 +- 0.23 |
| omniglot_20way_1shot_mamlpp | 20-way 1-shot, MAML++ | 97.65 +- 0.05 |
| omniglot_20way_5shot_maml | 20-way 5-shot, MAML (local replication) | 98.78 |
| omniglot_20way_5shot_mamlpp | 20-way 5-shot, MAML++ | 99.33 +- 0.03 |
| omniglot_5way_1shot_maml | 5-way 1-shot, MAML (original MAML paper's value) | 98.7 +- 0.4 |
| omniglot_5way_1shot_mamlpp | 5-way 1-shot, MAML++ | 99.47 |
| omniglot_5way_5shot_maml | 5-way 5-shot, MAML (original MAML paper's value) | 99.9 +- 0.1 |
| omniglot_5way_5shot_mamlpp | 5-way 5-shot, MAML++ | 99.93 |

Sources of these values: `mamlpp.presets.SOURCES` (none was read from the paper itself; 99.93 is
given by one source and 99.85 by another; the MAML rows and ablations of 20-way were found in no
source).

11 presets x seeds 0, 1, 2 = 33 runs. The MAML++ runs also feed the learning-rate charts.

Runtime: docs/runtimes.md (generated from mamlpp/experiments/cost_*.jsonl by
`python -m mamlpp.experiments.cost docs`), per row and for the table, smoke and paper scale.

Command:
    make table1 SCALE=smoke JOBS=1      # = mamlpp sweep run table1 --scale smoke --jobs 1 --runs-dir runs/smoke
    make table1 SCALE=paper             # one job per visible GPU
"""

from __future__ import annotations

from mamlpp.experiments.experiment import Experiment

EXPERIMENT = Experiment(
    name="table1",
    module="table1_omniglot",
    title="Table 1: Omniglot 20-way and 5-way, 1-shot and 5-shot",
    presets=(
        "omniglot_20way_1shot_maml",
        "omniglot_20way_1shot_maml_msl",
        "omniglot_20way_1shot_maml_lslr",
        "omniglot_20way_1shot_maml_bnwb_bnrs",
        "omniglot_20way_1shot_mamlpp",
        "omniglot_20way_5shot_maml",
        "omniglot_20way_5shot_mamlpp",
        "omniglot_5way_1shot_maml",
        "omniglot_5way_1shot_mamlpp",
        "omniglot_5way_5shot_maml",
        "omniglot_5way_5shot_mamlpp",
    ),
)
