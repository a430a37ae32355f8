"""`mamlpp sweep run` against a fake `mamlpp train`, and the exported W&B grid sweep.

The fake trainer (a tiny script named by $MAMLPP_SWEEP_TRAIN_COMMAND) parses the same arguments
as `mamlpp train`, names its run directory with `mamlpp.runs.resolve.run_name`, records every call and
writes `test.json`, so these tests check the runner's logic without training anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mamlpp.cli import main
from mamlpp.experiments import EXPERIMENTS
from mamlpp.experiments.sweep import (
    TRAIN_COMMAND_ENV,
    build_sweep,
    is_finished,
    resolve_jobs,
    slot_environments,
    train_command_prefix,
    wandb_sweep_definition,
)
from mamlpp.runs.resolve import run_name

FAKE_TRAIN = """
import argparse, json, os, sys
from pathlib import Path
from mamlpp.runs.resolve import run_name
p = argparse.ArgumentParser()
p.add_argument("--preset"); p.add_argument("--seed", type=int); p.add_argument("--scale")
p.add_argument("--runs-dir"); p.add_argument("--set", action="append", default=[])
p.add_argument("--wandb"); p.add_argument("--device"); p.add_argument("--data-root")
p.add_argument("--time-limit", type=float)
a = p.parse_args()
run = Path(a.runs_dir) / run_name(a.preset, a.set, a.seed, a.scale)
from mamlpp.runs.tracking import RunDirectory
if RunDirectory(run).locked_by_other():
    sys.exit(2)  # as `mamlpp train` refuses a run another process holds
run.mkdir(parents=True, exist_ok=True)
with open(os.environ["FAKE_TRAIN_CALLS"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "run": run.name,
                        "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
if a.preset == os.environ.get("FAKE_TRAIN_FAIL"):
    sys.exit(3)
if os.environ.get("FAKE_TRAIN_SLEEP"):  # a long run: its pid, then a wait for a signal
    import time
    Path(os.environ["FAKE_TRAIN_CALLS"] + ".pid").write_text(str(os.getpid()))
    time.sleep(float(os.environ["FAKE_TRAIN_SLEEP"]))
if a.preset == os.environ.get("FAKE_TRAIN_STOP"):
    sys.exit(75)  # stopped at its time limit
if os.environ.get("FAKE_TRAIN_OTHER"):
    # a second sweep in the same runs dir takes (and maybe finishes) the run it names meanwhile
    import subprocess
    other, finish = os.environ["FAKE_TRAIN_OTHER"].split(":")
    code = ("import sys, time; from mamlpp.runs.tracking import RunDirectory; "
            "d = RunDirectory(sys.argv[1]); d.path.mkdir(parents=True, exist_ok=True); d.lock(); "
            "print(flush=True); time.sleep(float(sys.argv[2]))")
    holder = subprocess.Popen([sys.executable, "-c", code, str(Path(a.runs_dir) / other),
                               "0" if finish else "20"], stdout=subprocess.PIPE)
    holder.stdout.readline()  # it holds the lock now
    if finish:
        holder.wait()
        (Path(a.runs_dir) / other / "test.json").write_text(json.dumps({"accuracy": 0.5}))
    else:
        Path(os.environ["FAKE_TRAIN_CALLS"] + ".holder").write_text(str(holder.pid))
(run / "test.json").write_text(json.dumps({"accuracy": 0.5}))
"""
ROWS = ("omniglot_5way_1shot_maml", "omniglot_5way_1shot_mamlpp")


@pytest.fixture
def fake_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Route the runner to the fake trainer; returns the file that logs its calls."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    calls = tmp_path / "calls.jsonl"
    calls.touch()
    monkeypatch.setenv(TRAIN_COMMAND_ENV, shlex.join([sys.executable, str(script)]))
    monkeypatch.setenv("FAKE_TRAIN_CALLS", str(calls))
    monkeypatch.delenv("FAKE_TRAIN_FAIL", raising=False)
    monkeypatch.delenv("FAKE_TRAIN_STOP", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPUs, and no torch.cuda probing
    return calls


def _calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _sweep_run(runs: Path, *extra: str) -> tuple[int, str]:
    args = ["sweep", "run", "table1", "--scale", "smoke", "--runs-dir", str(runs)]
    args += ["--preset", ROWS[0], "--preset", ROWS[1], "--seed", "0", *extra]
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def test_runs_only_missing_runs_then_nothing(fake_train: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    done_already = runs / run_name(ROWS[0], {"model.filters": 8}, 0, "smoke")
    done_already.mkdir(parents=True)
    (done_already / "test.json").write_text("{}")
    unfinished = runs / run_name(ROWS[1], {"model.filters": 8}, 0, "smoke")
    unfinished.mkdir()

    code, out = _sweep_run(runs, "--set", "model.filters=8", "--jobs", "1")
    assert code == 0, out
    assert "1 finished, 1 unfinished (resume), 0 missing" in out
    calls = _calls(fake_train)
    assert [c["run"] for c in calls] == [unfinished.name]
    assert calls[0]["argv"] == [
        "--scale", "smoke", "--runs-dir", str(runs), "--set", "model.filters=8",
        "--preset", ROWS[1], "--seed", "0",
    ]  # fmt: skip
    assert (unfinished / "test.json").is_file()

    code, out = _sweep_run(runs, "--set", "model.filters=8")
    assert code == 0 and "Nothing to train" in out
    assert len(_calls(fake_train)) == 1  # the second invocation launched nothing


def test_a_run_of_another_config_is_not_counted_as_finished(fake_train: Path, tmp_path: Path) -> None:
    """A finished run trained before the code's defaults changed (here: the smoke scale had 10
    epochs) stops the sweep with a one-line error naming it, instead of entering its tables."""
    from mamlpp.runs.resolve import resolve_config

    runs = tmp_path / "runs"
    old = runs / run_name(ROWS[0], {}, 0, "smoke")
    old.mkdir(parents=True)
    config = resolve_config(ROWS[0], [], 0, "smoke")
    stored = json.loads(config.to_json())
    (old / "config.json").write_text(json.dumps({"config": stored, "run": {}}))
    (old / "test.json").write_text("{}")
    code, out = _sweep_run(runs, "--jobs", "1", "--dry-run")
    assert code == 0 and "1 finished" in out, out  # the same config: finished

    stored["schedule"]["epochs"] = 10
    (old / "config.json").write_text(json.dumps({"config": stored, "run": {}}))
    code, out = _sweep_run(runs, "--jobs", "1")
    assert code != 0 and "another config" in out and old.name in out, out
    assert "Traceback" not in out and _calls(fake_train) == []


def test_failed_run_is_reported_and_the_others_still_finish(
    fake_train: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TRAIN_FAIL", ROWS[0])
    runs = tmp_path / "runs"
    code, out = _sweep_run(runs)
    assert code == 2
    failed = run_name(ROWS[0], {}, 0, "smoke")
    assert f"1 of 2 runs did not finish: {failed} (exit 3)" in out
    assert "Traceback" not in out
    assert (runs / run_name(ROWS[1], {}, 0, "smoke") / "test.json").is_file()
    monkeypatch.delenv("FAKE_TRAIN_FAIL")
    code, out = _sweep_run(runs)  # the rerun retries only the failed run
    assert code == 0 and "1 finished, 1 unfinished (resume), 0 missing" in out
    assert [c["run"] for c in _calls(fake_train)][-1] == failed


def test_one_job_per_gpu_with_logs(
    fake_train: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    runs = tmp_path / "runs"
    code, out = _sweep_run(runs)  # --jobs defaults to auto: one per visible GPU
    assert code == 0, out
    assert "2 at a time on 2 GPU(s)" in out
    assert {c["gpu"] for c in _calls(fake_train)} <= {"3", "5"}
    for row in ROWS:
        assert (runs / ".sweep-logs" / f"{run_name(row, {}, 0, 'smoke')}.log").is_file()


@pytest.mark.parametrize("finish", [False, True])
def test_a_run_a_second_sweep_took_meanwhile_is_left_to_it(
    fake_train: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finish: bool
) -> None:
    """Two sweeps in one runs dir: while this one trains its first run, the other starts (or
    finishes) the second. This one must not launch it (its `mamlpp train` would refuse the held
    run, exit 2) nor report a failure: it leaves the run to the other and exits 0."""
    runs = tmp_path / "runs"
    other = run_name(ROWS[1], {}, 0, "smoke")
    monkeypatch.setenv("FAKE_TRAIN_OTHER", f"{other}:{'finish' if finish else ''}")
    try:
        code, out = _sweep_run(runs, "--jobs", "1")
    finally:
        holder = Path(f"{fake_train}.holder")
        if holder.exists():
            os.kill(int(holder.read_text()), 15)
    assert code == 0, out
    assert [c["run"] for c in _calls(fake_train)] == [run_name(ROWS[0], {}, 0, "smoke")]
    assert "FAILED" not in out and "did not finish" not in out
    if finish:
        assert f"[2/2] not started: another process finished it meanwhile ({other})" in out
        assert "All 2 runs of table1 are finished." in out
    else:
        assert "[2/2] not started: another process trains it (pid " in out
        assert "1 run(s) were left to the other process(es)" in out


def test_sigterm_stops_the_sweep_and_its_runs(
    fake_train: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kill PID` of the sweep (a container's stop, a scheduler) must stop its `mamlpp train`
    children too, not leave them training on, orphaned, holding their runs' locks; it exits
    143 with the rerun advice, as `mamlpp train` does."""
    import signal
    import time

    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "60")
    pid_file = Path(f"{fake_train}.pid")
    args = ["sweep", "run", "table1", "--scale", "smoke", "--runs-dir", str(tmp_path / "runs")]
    args += ["--preset", ROWS[0], "--preset", ROWS[1], "--seed", "0", "--jobs", "1"]
    sweep = subprocess.Popen(
        [sys.executable, "-m", "mamlpp.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    child = 0
    try:
        for _ in range(300):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.05)
        child = int(pid_file.read_text())
        sweep.send_signal(signal.SIGTERM)
        out, err = sweep.communicate(timeout=30)
        assert sweep.returncode == 128 + signal.SIGTERM, out + err
        assert "stopped by SIGTERM" in err and "run the same command to continue" in err
        assert "Traceback" not in err and "FAILED" not in out
        with pytest.raises(ProcessLookupError):  # stopped and reaped by the sweep
            os.kill(child, 0)
        assert len(_calls(fake_train)) == 1  # the second run never started
    finally:
        if sweep.poll() is None:
            sweep.kill()
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def test_job_slots() -> None:
    assert resolve_jobs("auto", []) == 1
    assert resolve_jobs("auto", ["0", "1", "2"]) == 3
    assert resolve_jobs("4", []) == 4
    envs = slot_environments(3, ["6", "7"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["6", "7", "6"]


def test_bad_input_gives_one_line_errors(fake_train: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    for args, message in [
        (["sweep", "run", "table9"], "unknown experiment 'table9'"),
        (["sweep", "run", "table1", "--jobs", "0"], "--jobs '0' must be a positive integer"),
        (["sweep", "run", "table1", "--jobs", "abc", "--dry-run"], "--jobs 'abc' must be a positive"),
        (["sweep", "run", "table1", "--set", "inner.stepz=2"], "unknown config key 'inner.stepz'"),
        (["sweep", "export", "figure2", "--preset", "omniglot_5way_1shot_maml"], "not rows"),
        # what `mamlpp train` would refuse is refused before the plan, not by every launch
        (["sweep", "run", "table1", "--set", "inner.steps=0", "--dry-run"],
         "inner.steps=0 is out of range; it must be at least 1"),
        (["sweep", "export", "table1", "--set", "seed=3"], "--set seed=... is not allowed"),
        (["sweep", "run", "table1", "--seed", str(2**64), "--dry-run"],
         f"seed={2**64} is out of range"),
    ]:
        result = runner.invoke(main, [*args, "--runs-dir", str(tmp_path / "r")])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {message}") or message in result.output
        assert "Traceback" not in result.output
    assert _calls(fake_train) == []
    # a runs dir that is a file: refused as `mamlpp train --runs-dir` refuses it, dry run too
    (tmp_path / "a-file").write_text("")
    for command in ("run", "export"):
        args = ["sweep", command, "table1", "--runs-dir", str(tmp_path / "a-file"), "--dry-run"]
        result = runner.invoke(main, args[:-1] if command == "export" else args)
        assert result.exit_code == 2 and "Invalid value for '--runs-dir'" in result.output
        assert "is a file" in result.output


# ---------------------------------------------------------------- the exported W&B sweep


def agent_argv(definition: dict, values: dict) -> list[str]:
    """The command W&B's agent runs for one grid point: its own macro expansion
    (wandb.wandb_agent.Agent._command_run), using wandb's own argument builder."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    sweep_vars["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for word in create_sweep_command(list(definition["command"])):
        word = str(word)
        if word.startswith("${") and word.endswith("}"):
            argv += sweep_vars[word[2:-1]]
        else:
            argv.append(word)
    return argv


def test_export_is_a_wandb_grid_sweep_over_the_experiment(tmp_path: Path) -> None:
    out = tmp_path / "table1.yaml"
    result = CliRunner().invoke(
        main, ["sweep", "export", "table1", "--scale", "paper", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    definition = yaml.safe_load(out.read_text())
    assert definition["method"] == "grid"
    assert set(definition["parameters"]) == {"preset", "seed"}
    presets = definition["parameters"]["preset"]["values"]
    seeds = definition["parameters"]["seed"]["values"]
    assert presets == list(EXPERIMENTS["table1"].presets) and seeds == [0, 1, 2]
    assert len(presets) * len(seeds) == len(EXPERIMENTS["table1"].grid()) == 33
    command = definition["command"]
    assert isinstance(command, list) and all(isinstance(w, str) for w in command)
    assert command[:3] == ["${env}", "mamlpp", "train"] and command[-1] == "${args_no_equals}"
    assert command[command.index("--wandb") + 1] == "online"
    assert command[command.index("--scale") + 1] == "paper"
    assert command[command.index("--runs-dir") + 1] == "runs/paper"

    as_json = tmp_path / "table1.json"
    CliRunner().invoke(
        main, ["sweep", "export", "table1", "--scale", "paper", "--out", str(as_json)]
    )
    assert json.loads(as_json.read_text()) == definition


def test_agent_command_is_the_local_runners_command(tmp_path: Path) -> None:
    """Every grid point: the W&B agent's argv equals the local runner's argv (same options), so
    both write the same run directory."""
    runs = tmp_path / "runs"
    sets = ("schedule.epochs=1", "model.filters=8")
    options = ("--data-root", "/data", "--wandb", "online")
    sweep = build_sweep("figure2", "smoke", runs, (), (), sets, options)
    definition = yaml.safe_load(yaml.safe_dump(wandb_sweep_definition(sweep, "mamlpp")))
    assert [p.preset for p in sweep.points][::3] == definition["parameters"]["preset"]["values"]
    prefix = train_command_prefix()
    assert Path(prefix[0]).name == "mamlpp" and prefix[1:] == ["train"]
    for point in sweep.points:
        agent = agent_argv(definition, {"preset": point.preset, "seed": point.seed})
        assert agent[:2] == ["/usr/bin/env", "mamlpp"]
        assert agent[2:] == ["train", *sweep.train_args(point)]

    result = CliRunner().invoke(
        main,
        ["sweep", "run", "figure2", "--runs-dir", str(runs), "--dry-run", "--set", sets[0],
         "--set", sets[1], "--data-root", "/data", "--wandb", "online"],
    )  # fmt: skip
    printed = [shlex.split(line) for line in result.output.splitlines() if "--preset" in line]
    assert [line[1:] for line in printed] == [
        agent_argv(definition, {"preset": p.preset, "seed": p.seed})[2:] for p in sweep.points
    ]


# ---------------------------------------------------------------- end to end, real training
# `make table1 SCALE=smoke` shrunk to two rows, one seed and a tiny schedule, on real Omniglot
# with the real `mamlpp train` and `mamlpp report`: one grid point is first run by the exported
# W&B sweep's own command; make's runner recognises it as finished and trains only the other,
# then builds the report; a second `make table1` trains nothing.

REPO = Path(__file__).resolve().parents[1]
TINY = (
    "schedule.epochs=1",
    "schedule.iterations_per_epoch=1",
    "schedule.val_tasks=2",
    "schedule.test_tasks=2",
    "model.filters=8",
    "outer.meta_batch_size=2",
    "inner.steps=1",
    "inner.eval_steps=1",
)


def _make_table1(runs: Path, reports: Path, data_root: Path) -> str:
    venv = Path(sys.prefix)  # this environment; -o: never rebuild it from the test
    command = ["make", "-s", "-C", str(REPO), "-o", str(venv / ".installed-stamp"), "table1"]
    command += [f"VENV={venv}", "SCALE=smoke", "SEEDS=0", "JOBS=1", f"ROWS={' '.join(ROWS)}"]
    command += [f"SET={' '.join(TINY)}", f"RUNS={runs}", f"REPORTS={reports}"]
    env = {**os.environ, "MAMLPP_DATA": str(data_root), "WANDB_MODE": "disabled"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_tiny_make_table1_end_to_end_with_the_wandb_command(
    tmp_path: Path, shared_data_root: Path
) -> None:
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    options = ("--data-root", str(shared_data_root), "--wandb", "online")
    sweep = build_sweep("table1", "smoke", runs / "smoke", ROWS, (0,), TINY, options)
    first, second = sweep.points
    definition = yaml.safe_load(yaml.safe_dump(wandb_sweep_definition(sweep, "mamlpp")))

    # What a W&B agent runs for the first grid point; only the mirror is switched off here
    # (no network): the W&B mode is not part of the run's name.
    argv = agent_argv(definition, {"preset": first.preset, "seed": first.seed})
    assert argv[:3] == ["/usr/bin/env", "mamlpp", "train"]
    argv = [*train_command_prefix(), *argv[3:]]
    argv[argv.index("--wandb") + 1] = "off"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert is_finished(sweep.run_dir(first))

    out = _make_table1(runs, reports, shared_data_root)
    assert "2 runs in" in out and "1 finished, 0 unfinished (resume), 1 missing" in out
    assert f"[1/1] start {sweep.run_dir(second).name}" in out
    assert is_finished(sweep.run_dir(first)) and is_finished(sweep.run_dir(second))
    assert sorted(p.name for p in (runs / "smoke").iterdir()) == sorted(
        [sweep.run_dir(first).name, sweep.run_dir(second).name]
    )
    assert (reports / "smoke" / "index.html").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}

    out = _make_table1(runs, reports, shared_data_root)
    assert "2 finished, 0 unfinished (resume), 0 missing" in out and "Nothing to train" in out
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()} == stamps


# ---------------------------------------------------------------- --executor slurm (submitit)

SYNTHETIC = (*TINY, "data.dataset=synthetic")


def test_slurm_executor_runs_the_grid_through_submitit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """submitit's local executor (what --executor slurm uses, minus the cluster) trains two tiny
    grid points with the real `mamlpp train`, into the run directories the local runner uses;
    the same command again submits nothing."""
    pytest.importorskip("submitit", reason="submitit is not installed (pip install submitit)")
    from mamlpp.experiments.slurm import CLUSTER_ENV

    monkeypatch.setenv(CLUSTER_ENV, "local")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv(TRAIN_COMMAND_ENV, raising=False)
    runs = tmp_path / "runs"
    args = ["sweep", "run", "table1", "--scale", "smoke", "--runs-dir", str(runs), "--seed", "0"]
    args += ["--preset", ROWS[0], "--preset", ROWS[1], "--device", "cpu", "--wandb", "off"]
    args += [a for o in SYNTHETIC for a in ("--set", o)]
    slurm = ["--executor", "slurm", "--slurm-time", "10", "--slurm-gpus", "0"]
    result = CliRunner().invoke(main, [*args, *slurm])
    assert result.exit_code == 0, result.output
    sweep = build_sweep("table1", "smoke", runs, ROWS, (0,), SYNTHETIC, ("--device", "cpu"))
    for point in sweep.points:
        assert is_finished(sweep.run_dir(point))
        assert f"submitted {sweep.run_dir(point).name} as job" in result.output
        assert json.loads((sweep.run_dir(point) / "test.json").read_text())["accuracy"] >= 0
    assert "All 2 runs of table1 are finished." in result.output
    assert sorted(p.name for p in runs.iterdir()) == sorted(
        [".submitit", *(sweep.run_dir(p).name for p in sweep.points)]
    )

    again = CliRunner().invoke(main, [*args, *slurm])
    assert again.exit_code == 0 and "Nothing to train" in again.output
    assert "submitted" not in again.output


def test_slurm_executor_without_submitit_is_a_one_line_error(
    fake_train: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    code, out = _sweep_run(tmp_path / "runs", "--executor", "slurm")
    assert code == 2 and out.strip().splitlines()[-1].startswith(
        "error: --executor slurm needs submitit"
    )
    assert _calls(fake_train) == []


def test_seeds_train_together_where_gpus_are_visible(
    fake_train: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a GPU each preset's seeds are one `mamlpp train --seed 0 --seed 1` process
    (mamlpp.runs.multiseed); --seeds-apart (and the CPU) keep one process per seed."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    runs = tmp_path / "runs"
    args = ["sweep", "run", "table1", "--scale", "smoke", "--runs-dir", str(runs)]
    args += ["--preset", ROWS[0], "--preset", ROWS[1], "--seed", "0", "--seed", "1", "--dry-run"]
    out = CliRunner().invoke(main, args).output
    commands = [line for line in out.splitlines() if "--preset" in line]
    assert len(commands) == 2 and all(c.endswith("--seed 0 --seed 1") for c in commands), out
    out = CliRunner().invoke(main, [*args, "--seeds-apart"]).output
    assert len([line for line in out.splitlines() if "--preset" in line]) == 4, out
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = CliRunner().invoke(main, args).output
    assert len([line for line in out.splitlines() if "--preset" in line]) == 4, out


def test_the_time_limit_is_shared_by_the_launches_and_the_rerun_continues(
    fake_train: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each launch gets what is left of the sweep's --time-limit; one stopped at it makes the
    sweep exit 75 with the rerun advice (not a failure), and the rerun trains what is left."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("FAKE_TRAIN_STOP", ROWS[0])
    result = CliRunner().invoke(main, ["sweep", "run", "table1", "--scale", "smoke", "--runs-dir",
        str(runs), "--preset", ROWS[0], "--preset", ROWS[1], "--seed", "0", "--jobs", "1",
        "--time-limit", "5"])  # fmt: skip
    assert result.exit_code == 75, result.output
    assert "stopped at the time limit" in result.output and "FAILED" not in result.output
    assert result.stderr.strip() == (
        "time limit of 5.0 min reached: 1 of 2 launches stopped at it or not started (every "
        "completed epoch is saved); run the same command to continue"
    )
    limits = [float(c["argv"][c["argv"].index("--time-limit") + 1]) for c in _calls(fake_train)]
    assert len(limits) == 2 and 5 >= limits[0] >= limits[1] > 4
    monkeypatch.delenv("FAKE_TRAIN_STOP")
    code, out = _sweep_run(runs, "--jobs", "1")
    assert code == 0 and "1 finished, 1 unfinished (resume), 0 missing" in out, out


def test_no_launch_starts_after_the_time_limit(fake_train: Path, tmp_path: Path) -> None:
    code, out = _sweep_run(tmp_path / "runs", "--jobs", "1", "--time-limit", "1e-9")
    assert code == 75, out
    assert out.count("not started: the time limit has passed") == 2
    assert _calls(fake_train) == []


def test_the_time_limit_is_refused_with_slurm(tmp_path: Path) -> None:
    code, out = _sweep_run(tmp_path / "runs", "--executor", "slurm", "--time-limit", "5")
    assert code == 2 and "--time-limit is for local runs; SLURM jobs take --slurm-time" in out
