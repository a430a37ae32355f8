"""Run directory files, atomic writes, run naming, top-k bookkeeping (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mamlpp.errors import MamlppError
from mamlpp.runs.checkpoints import TopK
from mamlpp.runs.resolve import run_name
from mamlpp.runs.tracking import (
    RunDirectory,
    RunDirectoryError,
    atomic_torch_save,
    read_jsonl,
    resolve_wandb_mode,
)


def test_run_name_follows_the_contract() -> None:
    assert run_name("p", [], 3, "smoke") == "p__default__seed3__smoke"
    name = run_name("p", ["outer.lr=0.01", "inner.steps=3"], 0, "paper")
    assert name == "p__inner.steps=3,outer.lr=0.01__seed0__paper"


def test_run_name_is_canonical_and_separates_configs() -> None:
    a = run_name("p", ["inner.steps=3", "outer.lr=0.01"], 0, "smoke")
    assert a == run_name("p", ["outer.lr=0.01", "inner.steps=3"], 0, "smoke")
    assert a == run_name("p", {"inner.steps": 3, "outer.lr": 0.01}, 0, "smoke")
    assert a != run_name("p", ["inner.steps=4", "outer.lr=0.01"], 0, "smoke")
    assert a != run_name("p", ["inner.steps=3", "outer.lr=0.01"], 1, "smoke")
    assert a != run_name("p", ["inner.steps=3", "outer.lr=0.01"], 0, "paper")


def test_run_name_slug_is_safe_and_bounded() -> None:
    name = run_name("p", ["outer.betas=[0.9, 0.99]"], 0, "smoke")
    assert name == "p__outer.betas=-0.9,-0.99-__seed0__smoke"
    long_a = run_name("p", ["model.downsample=" + "x" * 100], 0, "smoke")
    long_b = run_name("p", ["model.downsample=" + "x" * 99 + "y"], 0, "smoke")
    slug_a = long_a.split("__")[1]
    assert len(slug_a) == 60 + 1 + 8
    assert long_a != long_b


def test_atomic_torch_save_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "latest.pt"
    atomic_torch_save({"epoch": 1}, path)
    (tmp_path / "latest.pt.tmp").write_bytes(b"half a checkpoint from a killed writer")
    assert torch.load(path)["epoch"] == 1
    atomic_torch_save({"epoch": 2}, path)
    assert torch.load(path)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


def test_jsonl_skips_a_torn_last_line_and_truncates_by_epoch(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    run.create()
    for epoch in range(3):
        run.append_metrics({"epoch": epoch, "val/acc": 0.5})
        run.append_iterations([{"iteration": 2 * epoch + i, "epoch": epoch} for i in range(2)])
    with open(run.metrics_path, "a") as f:
        f.write('{"epoch": 3, "val/a')
    assert [r["epoch"] for r in run.read_metrics()] == [0, 1, 2]
    run.truncate_logs(1)
    assert [r["epoch"] for r in run.read_metrics()] == [0, 1]
    assert [r["iteration"] for r in read_jsonl(run.iterations_path)] == [0, 1, 2, 3]
    assert run.metrics_path.read_text().endswith("\n")


def test_run_directory_refuses_an_unwritable_place(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(RunDirectoryError, match="--runs-dir"):
        RunDirectory(blocker / "run").create()


def test_read_config_names_a_non_run_folder(tmp_path: Path) -> None:
    with pytest.raises(RunDirectoryError, match="not a run directory"):
        RunDirectory(tmp_path).read_config()


def test_config_json_round_trips(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    run.create()
    run.write_config({"seed": 1}, {"name": "x"})
    assert json.loads(run.config_path.read_text()) == {"config": {"seed": 1}, "run": {"name": "x"}}


def test_top_k_keeps_the_best_and_reports_evictions() -> None:
    top = TopK(2)
    assert top.offer(0, 0.5) == (True, [])
    assert top.offer(1, 0.7) == (True, [])
    assert top.offer(2, 0.6) == (True, [0])
    assert top.offer(3, 0.1) == (False, [3])
    assert top.offer(4, 0.7) == (True, [2])  # a tie ranks the earlier epoch first
    assert top.epochs == [1, 4]
    assert TopK.from_state(2, top.state()).entries == top.entries


def test_wandb_mode_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_wandb_mode(None) == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolve_wandb_mode(None) == "online"
    assert resolve_wandb_mode("off") == "off"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode(None) == "off"
    monkeypatch.setenv("WANDB_MODE", "sideways")
    with pytest.raises(MamlppError, match="offline, online or off") as e:
        resolve_wandb_mode(None)
    assert str(e.value).startswith("$WANDB_MODE='sideways' is not a valid choice")  # not --wandb
    with pytest.raises(MamlppError, match="^--wandb 'up' is not a valid choice"):
        resolve_wandb_mode("up")


def test_wandb_online_without_a_login_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    from mamlpp.runs.tracking import WandbMirror

    def no_key(**kwargs: object) -> None:
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", no_key)
    with pytest.raises(MamlppError) as e:
        WandbMirror("online", tmp_path / "run", "r", "g", [], {"seed": 1})
    assert str(e.value) == (
        "cannot start the W&B online run (No API key configured. Use `wandb login` to log in.); "
        "run `wandb login` or set WANDB_API_KEY, or use --wandb offline (no account needed)"
    )


def test_wandb_mirror_plots_against_epoch_and_carries_the_lr_chart(tmp_path: Path) -> None:
    """An offline W&B run, read back from its .wandb file: `epoch` is the x axis of every metric,
    each epoch's metrics.jsonl row is a history step, and the run ends with the learned-lr chart
    as an HTML panel (the same chart as the report's, slider included)."""
    from mamlpp.runs.tracking import WandbMirror
    from tests.support import wandb_records
    from tests.support.example_runs import example_rate, write_run

    source = write_run(tmp_path / "src", "omniglot_20way_1shot_mamlpp", 1, val_acc=(0.5, 0.7, 0.6))
    rows = read_jsonl(source / "metrics.jsonl")
    mirror = WandbMirror("offline", tmp_path / "run", "r", "g", [], {"seed": 1})
    for row in rows:
        mirror.log_epoch(row, {"conv0.weight": [0.1, 0.2]})
    assert mirror.log_lr_chart(rows, "omniglot_20way_1shot_mamlpp seed 1", seed=1)
    mirror.finish()
    import wandb

    wandb.teardown()  # waits for wandb-core to write everything out

    (run_file,) = (tmp_path / "run").rglob("run-*.wandb")
    definitions = {
        (m.name or m.glob_name): m.step_metric for m in wandb_records.metric_definitions(run_file)
    }
    assert definitions == {"epoch": "", "*": "epoch"}
    history = wandb_records.history(run_file)
    assert [h["epoch"] for h in history] == [0, 1, 2, 2]
    for logged, row in zip(history, rows, strict=False):
        assert {k: logged[k] for k in row} == pytest.approx(row)
    panel = history[-1]
    assert panel["charts/learned_lr/_type"] == "html-file"
    (page,) = run_file.parent.rglob(Path(panel["charts/learned_lr/path"]).name)
    text = page.read_text()
    # Opens at the best-val epoch (1) and has one slider step per epoch.
    call = text[text.index("Plotly.newPlot(") :]
    figure, _ = json.JSONDecoder().raw_decode(call[call.index("[") :])
    assert figure[0]["y"][:3] == pytest.approx([example_rate(1, 1, p) for p in range(3)])
    assert text.count('"label":"') >= 3 and "cdn.plot.ly" in text


def test_wandb_group_holds_the_seeds_of_one_table_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W&B aggregates a group's runs into one curve: the group is the run name without the seed,
    so smoke and paper scale, or a preset with and without overrides, never share one."""
    from mamlpp.config import apply_scale
    from mamlpp.presets import get_preset
    from mamlpp.runs import trainer

    seen: list[dict[str, object]] = []
    monkeypatch.setattr(trainer, "WandbMirror", lambda *a, **kw: seen.append(kw))
    groups = {}
    for overrides, seed, scale in [([], 0, "smoke"), ([], 1, "smoke"), ([], 0, "paper"),
                                   (["inner.steps=3"], 0, "smoke")]:  # fmt: skip
        name = run_name("omniglot_5way_1shot_mamlpp", overrides, seed, scale)
        config = apply_scale(get_preset("omniglot_5way_1shot_mamlpp").config, scale)
        trainer.open_mirror(RunDirectory(tmp_path / name), config, {"name": name}, "offline")
        groups[(tuple(overrides), seed, scale)] = seen[-1]["group"]
    assert groups[((), 0, "smoke")] == "omniglot_5way_1shot_mamlpp__default__smoke"
    assert groups[((), 1, "smoke")] == groups[((), 0, "smoke")]
    assert len({groups[((), 0, "smoke")], groups[((), 0, "paper")],
                groups[(("inner.steps=3",), 0, "smoke")]}) == 3  # fmt: skip
    assert "preset:omniglot_5way_1shot_mamlpp" in seen[-1]["tags"]  # type: ignore[operator]
