"""The seed-variance notebook executes top to bottom (nbclient) on hand-made runs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from mamlpp.analysis.report import NOTEBOOK
from tests.support.example_runs import write_example_runs


def test_seed_variance_notebook_runs_top_to_bottom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_example_runs(tmp_path)
    monkeypatch.setenv("MAMLPP_RUNS_DIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # One extra cell at the end reads the notebook's own agreement table back, as JSON.
    nb.cells.append(nbformat.v4.new_code_cell("print(agreement.to_json(orient='records'))"))
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    first = "".join(o.get("text", "") for o in code[0].outputs)
    assert f"16 runs (15 finished) under {tmp_path}" in first
    # The example seeds learn mirror-image rates: rate correlation -1, |rate| correlation +1.
    agreement = json.loads(code[-1].outputs[0]["text"])
    row = next(
        r
        for r in agreement
        if r["variant"] == "omniglot_20way_1shot_mamlpp" and r["view"] == "best epoch"
    )
    assert row["seeds"] == "0 vs 1" and row["tensors x steps"] == 50
    assert row["corr(rate)"] == pytest.approx(-1.0) and row["corr(|rate|)"] == pytest.approx(1.0)
    assert (
        len([r for r in agreement if r["variant"] == "miniimagenet_5way_1shot_mamlpp"]) == 2 * 3
    )  # 2 views x 3 pairs
    assert any(o.get("data", {}).get("image/png") for c in code for o in c.outputs)


def test_notebook_says_which_env_var_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAMLPP_RUNS_DIR", str(tmp_path / "missing"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = nb.cells[:2]
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    with pytest.raises(Exception, match="set MAMLPP_RUNS_DIR"):
        client.execute()
