"""The accuracy tables (mamlpp.analysis.tables): hand-computed means and stds, missing seeds, labels."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from mamlpp.analysis.runs import load_runs
from mamlpp.analysis.tables import SMOKE_LABEL, accuracy_table, experiment_of, write_tables
from tests.support.example_runs import write_example_runs, write_run

COMMAND = "mamlpp report --runs-dir RUNS --out OUT"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("runs")
    write_example_runs(root)
    out = tmp_path_factory.mktemp("tables")
    return {t.experiment.slug: t for t in write_tables(load_runs(root), out, COMMAND)}


def test_one_table_per_experiment_grouped_by_preset_prefix(written: dict) -> None:
    assert list(written) == ["table1_omniglot", "table2_miniimagenet", "figure2_stability"]
    assert experiment_of("omniglot_5way_5shot_mamlpp").slug == "table1_omniglot"
    assert experiment_of("synthetic").slug == "other"


def test_mean_and_std_equal_a_hand_computation(written: dict) -> None:
    table = written["table1_omniglot"].table.set_index("preset")
    # omniglot_20way_1shot_maml: 90, 92, 94 -> mean 92, sample std sqrt(((-2)^2 + 0 + 2^2) / 2) = 2
    row = table.loc["omniglot_20way_1shot_maml"]
    assert row["mean"] == pytest.approx(92.0)
    assert row["std"] == pytest.approx(2.0)
    assert row["n_seeds"] == 3 and row["seeds"] == "0 1 2"
    assert row["paper"] == 91.27 and row["paper_std"] == 1.07
    assert row["difference"] == pytest.approx(92.0 - 91.27)
    # maml_msl: 91, 93, 92 -> mean 92, std 1
    assert table.loc["omniglot_20way_1shot_maml_msl", "std"] == pytest.approx(1.0)


def test_a_missing_seed_shows_as_n2_and_an_unfinished_run_is_counted(written: dict) -> None:
    table = written["table1_omniglot"].table.set_index("preset")
    row = table.loc["omniglot_20way_1shot_mamlpp"]
    assert row["n_seeds"] == 2
    assert row["mean"] == pytest.approx(97.5)
    assert row["std"] == pytest.approx(math.sqrt(0.5))  # 97 and 98: sqrt(2 * 0.5^2 / 1)
    assert table.loc["omniglot_20way_1shot_maml", "unfinished"] == 1  # seed 3 has no test.json
    assert table.loc["omniglot_20way_1shot_maml", "n_seeds"] == 3


def test_rows_follow_the_papers_order(written: dict) -> None:
    assert written["table1_omniglot"].table["preset"].tolist() == [
        "omniglot_20way_1shot_maml",
        "omniglot_20way_1shot_maml_msl",
        "omniglot_20way_1shot_mamlpp",
    ]


def test_files_carry_the_smoke_label_and_the_command(written: dict) -> None:
    t = written["table1_omniglot"]
    md, tex = t.files["md"].read_text(), t.files["tex"].read_text()
    assert SMOKE_LABEL in md.splitlines()[0]  # caption
    table_rows = [line for line in md.splitlines() if line.startswith("| omniglot")]
    assert len(table_rows) == 3 and all(SMOKE_LABEL in line for line in table_rows)
    assert "| 92.00 ± 2.00" in md and "+0.73" in md
    assert f"Produced by: `{COMMAND}`" in md
    assert tex.startswith(f"% Produced by: {COMMAND}")
    assert r"$92.00 \pm 2.00$" in tex and r"omniglot\_20way\_1shot\_maml" in tex
    assert SMOKE_LABEL in tex
    csv = pd.read_csv(t.files["csv"])
    assert csv.loc[csv["preset"] == "omniglot_20way_1shot_maml", "mean"].item() == pytest.approx(
        92.0
    )
    assert (csv["note"] == SMOKE_LABEL).all()


def test_paper_scale_has_no_smoke_label_and_one_seed_has_no_std(tmp_path: Path) -> None:
    write_run(tmp_path, "omniglot_20way_1shot_mamlpp", 0, scale="paper", test_accuracy=0.97)
    table = accuracy_table(load_runs(tmp_path))
    assert table["note"].tolist() == [""]
    assert math.isnan(table["std"].item())
    assert table["mean"].item() == pytest.approx(97.0)
    (written,) = write_tables(load_runs(tmp_path), tmp_path / "out", COMMAND)
    (row,) = [line for line in written.files["md"].read_text().splitlines() if "| omniglot" in line]
    assert "| 97.00 " in row and row.count("±") == 1  # the paper's std only
    assert r"$97.00$ &" in written.files["tex"].read_text()
    assert pd.isna(pd.read_csv(written.files["csv"])["std"].item())


def test_a_difference_that_rounds_to_zero_has_no_minus_sign() -> None:
    from mamlpp.analysis.tables import _signed

    assert [_signed(x) for x in (-0.001, 0.0, 0.004, -0.006, 1.234, math.nan)] == [
        "+0.00", "+0.00", "+0.00", "-0.01", "+1.23", "–",
    ]  # fmt: skip
