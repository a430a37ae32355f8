"""Loading run directories into tidy frames (mamlpp.analysis.runs), on hand-made runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mamlpp.analysis.runs import (
    RunsError,
    best_epochs,
    grad_frame,
    iterations_frame,
    load_runs,
    lslr_frame,
    metrics_long,
    metrics_wide,
    runs_frame,
)
from tests.support.example_runs import EXAMPLE_VAL_ACC, example_rate, write_example_runs, write_run


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_example_runs(root)
    return root


def test_every_run_is_found_with_its_identity(runs_dir: Path) -> None:
    frame = runs_frame(load_runs(runs_dir))
    assert len(frame) == 16
    mamlpp = frame[frame["preset"] == "omniglot_20way_1shot_mamlpp"]
    assert sorted(mamlpp["seed"]) == [0, 1]
    assert set(frame["scale"]) == {"smoke"}
    unfinished = frame[~frame["finished"]]
    assert list(unfinished["run"]) == ["omniglot_20way_1shot_maml__default__seed3__smoke"]
    assert unfinished["test_accuracy"].isna().all()
    assert (
        frame.loc[
            frame["run"] == "omniglot_20way_1shot_maml__default__seed1__smoke", "test_accuracy"
        ].item()
        == 0.92
    )


def test_tidy_frame_has_one_row_per_run_epoch_key(runs_dir: Path) -> None:
    runs = [
        r
        for r in load_runs(runs_dir)
        if r.name == "omniglot_20way_1shot_mamlpp__default__seed1__smoke"
    ]
    long = metrics_long(runs)
    keys_per_epoch = (
        len(json.loads((runs[0].path / "metrics.jsonl").read_text().splitlines()[0])) - 1
    )
    assert len(long) == 4 * keys_per_epoch
    assert not long.duplicated(["run", "epoch", "key"]).any()
    val = long[long["key"] == "val/acc"].sort_values("epoch")["value"].tolist()
    assert val == list(EXAMPLE_VAL_ACC[1])
    assert set(long.columns) == {
        "run",
        "preset",
        "variant",
        "seed",
        "scale",
        "epoch",
        "key",
        "value",
    }


def test_best_epoch_is_the_highest_val_acc(runs_dir: Path) -> None:
    best = best_epochs(load_runs(runs_dir))
    assert best["omniglot_20way_1shot_mamlpp__default__seed0__smoke"] == 1
    assert best["omniglot_20way_1shot_mamlpp__default__seed1__smoke"] == 2
    assert best["miniimagenet_5way_1shot_mamlpp__default__seed2__smoke"] == 0


def test_lslr_frame_orders_tensors_in_network_order_with_steps_unrolled(runs_dir: Path) -> None:
    runs = [
        r
        for r in load_runs(runs_dir)
        if r.name == "omniglot_20way_1shot_mamlpp__default__seed1__smoke"
    ]
    frame = lslr_frame(runs)
    epoch2 = frame[frame["epoch"] == 2].sort_values("position")
    labels = epoch2["tensor_step"].tolist()
    assert labels[:6] == [f"conv0.weight/step{k}" for k in range(5)] + ["conv0.bias/step0"]
    assert labels[-1] == "linear.bias/step4" and labels[-6] == "linear.weight/step4"
    assert labels.index("conv3.bias/step4") < labels.index("linear.weight/step0")
    assert epoch2["rate"].tolist() == pytest.approx([example_rate(1, 2, p) for p in range(50)])


def test_grad_and_iteration_frames(runs_dir: Path) -> None:
    runs = [r for r in load_runs(runs_dir) if r.preset == "stability_maml"]
    grads = grad_frame(runs)
    assert set(grads["stat"]) == {"max", "min", "mean", "norm"}
    assert "bn0.weight" in set(grads["param"])
    its = iterations_frame(runs)
    assert len(its) == 2 * 4 * 4  # 2 seeds x 4 epochs x 4 iterations
    assert its["iteration"].max() == 15


def test_torn_last_line_is_dropped_but_a_bad_middle_line_is_an_error(tmp_path: Path) -> None:
    path = write_run(tmp_path, "omniglot_20way_1shot_mamlpp", 0, val_acc=(0.5, 0.6))
    metrics = path / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 2, "val/a')
    assert metrics_wide(load_runs(tmp_path))["epoch"].tolist() == [0, 1]
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "not json", lines[1]]) + "\n")
    with pytest.raises(RunsError, match=r"metrics.jsonl line 2 is not a JSON object"):
        load_runs(tmp_path)[0].metrics()
    # binary garbage and a JSON value that is not an object: the same one-line error
    for bad in (b"\xff\xfe\x00garbage", b"[1, 2]"):
        metrics.write_bytes(b"\n".join([lines[0].encode(), bad, lines[1].encode()]) + b"\n")
        with pytest.raises(RunsError, match=r"metrics.jsonl line 2 is not a JSON object"):
            load_runs(tmp_path)[0].metrics()


def test_missing_or_empty_runs_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunsError, match="does not exist; train first"):
        load_runs(tmp_path / "nope")
    with pytest.raises(RunsError, match="no runs under"):
        load_runs(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(RunsError, match="lacks the 'config' and 'run' sections"):
        load_runs(tmp_path)
    # sections of the wrong JSON type: the same kind of one-line error, not an AttributeError
    for doc, bad in [
        ({"config": None, "run": {}}, "config"),
        ({"config": {}, "run": []}, "run"),
        ({"config": {"data": "x"}, "run": {}}, "config.data"),
    ]:
        (tmp_path / "broken" / "config.json").write_text(json.dumps(doc))
        with pytest.raises(RunsError, match=rf"config.json: {bad} must be a JSON object"):
            load_runs(tmp_path)


def test_a_real_tiny_training_run_is_read_as_the_contract_says(tmp_path: Path) -> None:
    """Contract check against the trainer: two epochs on synthetic data, then the frames."""
    from click.testing import CliRunner

    from mamlpp.analysis.tables import accuracy_table
    from mamlpp.cli import main

    sets = [
        "data.dataset=synthetic", "model.filters=4", "schedule.epochs=2", "schedule.iterations_per_epoch=1",
        "schedule.val_tasks=4", "schedule.test_tasks=4", "schedule.ensemble_top_k=1", "inner.steps=2", "inner.eval_steps=2",
    ]  # fmt: skip
    args = [
        "train",
        "--preset",
        "omniglot_5way_1shot_mamlpp",
        "--seed",
        "0",
        "--scale",
        "smoke",
        "--runs-dir",
        str(tmp_path),
    ]
    args += ["--wandb", "off", "--device", "cpu", "--no-progress"] + [
        a for s in sets for a in ("--set", s)
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (run,) = load_runs(tmp_path)
    assert (run.preset, run.seed, run.scale, run.finished, run.uses_lslr) == (
        "omniglot_5way_1shot_mamlpp",
        0,
        "smoke",
        True,
        True,
    )
    assert run.overrides["inner.steps"] == 2
    rates = lslr_frame([run])
    assert len(rates) == 2 * 10 * 2  # epochs x adapted tensors x steps
    assert rates.drop_duplicates("position").sort_values("position")["tensor_step"].iloc[:3].tolist() == [
        "conv0.weight/step0", "conv0.weight/step1", "conv0.bias/step0",
    ]  # fmt: skip
    assert {"max", "min", "mean", "norm"} <= set(grad_frame([run])["stat"])
    assert len(iterations_frame([run])) == 2
    assert best_epochs([run])[run.name] in (0, 1)
    table = accuracy_table([run])
    assert table["n_seeds"].item() == 1
    assert table["mean"].item() == pytest.approx(100 * run.test["accuracy"])  # type: ignore[index]


def test_a_copy_of_a_run_counts_once(tmp_path: Path) -> None:
    import shutil

    from mamlpp.analysis.tables import accuracy_table

    finished = write_run(tmp_path, "omniglot_5way_1shot_mamlpp", 0, test_accuracy=0.9)
    write_run(tmp_path, "omniglot_5way_1shot_mamlpp", 1, test_accuracy=0.8)
    copy = tmp_path / "backup" / finished.name
    shutil.copytree(finished, copy)
    (copy / "test.json").unlink()  # the older, unfinished copy

    with pytest.raises(RunsError, match=rf"2 run directories under .* hold the run {finished.name}"):
        load_runs(tmp_path)
    skipped: dict[Path, str] = {}
    runs = load_runs(tmp_path, skipped)
    assert sorted(str(r.path) for r in runs) == sorted([str(finished), str(tmp_path / finished.name.replace("seed0", "seed1"))])
    assert list(skipped) == [copy]
    assert f"another copy of the run {finished.name} (kept: {finished}, finished)" in skipped[copy]
    row = accuracy_table(runs).set_index("preset").loc["omniglot_5way_1shot_mamlpp"]
    assert row["n_seeds"] == 2 and row["mean"] == pytest.approx(85.0)
