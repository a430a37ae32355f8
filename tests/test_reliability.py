"""Runs that survive their users: each known failure injected, with its exit code, its one-line
message and, where it applies, a rerun that ends identical to an uninterrupted run.

The faults: a second process on one run (lock), out-of-range config values, a flipped byte in a
checkpoint, random bytes in latest.pt, a full file system (a 3 MB tmpfs; skipped where it cannot
be mounted, the write path is also checked with an injected ENOSPC), SIGTERM and SIGINT, damaged
run files, a damaged data cache, a corrupt image, data missing before the run directory exists.
Tiny synthetic runs as in tests/test_trainer_resume.py; reruns in this process with one thread
(the same arithmetic as the `OMP_NUM_THREADS=1` subprocesses)."""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from mamlpp.cli import main
from mamlpp.config import Config, ConfigError, ModelConfig, downsampled_side
from mamlpp.data import cache, omniglot
from mamlpp.data import cli as data_cli
from mamlpp.data.cache import SplitImages
from mamlpp.engine.model import NetSpec
from mamlpp.errors import DataError
from mamlpp.experiments.sweep import build_sweep
from mamlpp.runs import cli as runs_cli
from mamlpp.runs import stops, tracking
from mamlpp.runs.resolve import resolve_config, run_name
from mamlpp.runs.tracking import RunDirectory, RunDirectoryError
from tests.support.deadline import ScriptedDeadline
from tests.support.tiny import TINY_RUN_OVERRIDES

PRESET = "omniglot_5way_1shot_mamlpp"
OVERRIDES = TINY_RUN_OVERRIDES


def _train_args(runs: Path, *extra: str) -> list[str]:
    sets = [arg for o in OVERRIDES for arg in ("--set", o)]
    return [
        "train", "--preset", PRESET, "--seed", "0", "--scale", "smoke", "--runs-dir", str(runs),
        "--wandb", "off", "--device", "cpu", "--no-progress", *sets, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result: Result, *words: str, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    for w in words:
        assert w in line, line
    return line


def _without_timings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def assert_same_run(a: RunDirectory, b: RunDirectory) -> None:
    assert [r["epoch"] for r in a.read_metrics()] == [0, 1, 2, 3]
    assert _without_timings(a.read_metrics()) == _without_timings(b.read_metrics())
    assert tracking.read_jsonl(a.iterations_path) == tracking.read_jsonl(b.iterations_path)
    assert a.read_test() == b.read_test()
    assert sorted(p.name for p in a.checkpoints.iterdir()) == sorted(
        p.name for p in b.checkpoints.iterdir()
    )


def _only_run(runs: Path) -> RunDirectory:
    (path,) = [p for p in runs.iterdir() if p.is_dir()]
    return RunDirectory(path)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> RunDirectory:
    """The uninterrupted run every interrupted one must end identical to."""
    runs = tmp_path_factory.mktemp("straight")
    result = cli(*_train_args(runs))
    assert result.exit_code == 0, result.output
    return _only_run(runs)


def _copy_unfinished(straight: RunDirectory, runs: Path) -> RunDirectory:
    runs.mkdir(parents=True, exist_ok=True)
    copy = RunDirectory(runs / straight.path.name)
    shutil.copytree(straight.path, copy.path)
    copy.test_path.unlink()
    return copy


# ---------------------------------------------------------------- 1. two processes on one run


def _hold_lock(path: str, ready: Any, release: Any) -> None:
    RunDirectory(path).lock()
    ready.set()
    release.wait(60)


@contextlib.contextmanager
def _held_by_another_process(path: Path) -> Iterator[int]:
    path.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(path), ready, release))
    child.start()
    try:
        assert ready.wait(30)
        yield child.pid or 0
    finally:
        release.set()
        child.join(30)


def test_a_second_command_on_a_held_run_refuses_and_the_sweep_skips_it(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    sweep = build_sweep("figure2", "smoke", runs, (), (), ("schedule.epochs=1",))
    held_point = sweep.run_dir(sweep.points[0])
    with _held_by_another_process(held_point) as pid:
        assert RunDirectory(held_point).locked_by_other()
        out = cli("sweep", "run", "figure2", "--runs-dir", str(runs), "--dry-run", "--set",
                  "schedule.epochs=1")  # fmt: skip
        assert out.exit_code == 0, out.output
        assert f"Skipping {held_point.name}: another process trains it (pid {pid} on host" in out.output
        assert f"--preset {sweep.points[0].preset} --seed {sweep.points[0].seed}" not in out.output

        first = cli(*_train_args(runs, "--set", "schedule.epochs=1"))  # a run of its own: free
        assert first.exit_code == 0, first.output
        run = RunDirectory(runs / run_name(PRESET, [*OVERRIDES, "schedule.epochs=1"], 0, "smoke"))
        assert run.test_path.exists()
    with _held_by_another_process(run.path) as pid:
        line = assert_one_line_error(
            cli(*_train_args(runs, "--set", "schedule.epochs=1")),
            f"is in use by pid {pid} on host {socket.gethostname()}",
        )
        assert "run the same command again" in line
    # the holder is gone: flock released its lock with it, nothing stale is left
    assert not RunDirectory(run.path).locked_by_other()
    again = cli(*_train_args(runs, "--set", "schedule.epochs=1"))
    assert again.exit_code == 0 and "already finished" in again.output


# ---------------------------------------------------------------- 3. out-of-range config values


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("inner.steps=0", "inner.steps=0 is out of range; it must be at least 1"),
        ("inner.steps=-1", "inner.steps=-1 is out of range"),
        ("inner.eval_steps=0", "inner.eval_steps=0 is out of range"),
        ("model.filters=0", "model.filters=0 is out of range"),
        ("model.stages=7", "model.stages=7 is out of range; it must be at most 4"),
        ("outer.lr=-0.001", "outer.lr=-0.001 is out of range; it must be greater than 0"),
        ("outer.betas=[2,0.99]", "outer.betas=[2.0, 0.99] is out of range; it must be two values, each in [0, 1)"),
        ("inner.lr=-0.1", "inner.lr=-0.1 is out of range"),
        ("data.n_way=1", "data.n_way=1 is out of range; it must be at least 2"),
        ("data.k_shot=0", "data.k_shot=0 is out of range"),
        ("bn.momentum=1.5", "bn.momentum=1.5 is out of range; it must be in [0, 1]"),
        ("outer.grad_clip=0", "outer.grad_clip=0.0 is out of range"),
        ("outer.msl_epochs=0", "outer.msl_epochs=0 is out of range"),
        ("outer.min_lr=0.1", "outer.min_lr=0.1 is out of range; it must be at most outer.lr"),
        ("schedule.ensemble_top_k=0", "schedule.ensemble_top_k=0 is out of range"),
        ("seed=5", "--set seed=... is not allowed; use --seed"),
        ("preset=foo", "--set preset=... is not allowed; use --preset (given: --preset omniglot_"),
        ("scale=custom", "--set scale=... is not allowed; use --scale (given: --scale smoke)"),
        ("inner.lr=1e999", "inner.lr=Infinity is out of range; it must be a finite number"),
        ("outer.lr=NaN", "outer.lr=NaN is out of range; it must be a finite number"),
        ("outer.betas=[0.9,Infinity]", "outer.betas=Infinity is out of range; it must be a finite"),
        ("data.val_seed=18446744073709551616", "data.val_seed=18446744073709551616 is out of range"),
        ("model.init_seed=-9223372036854775809", "model.init_seed=-9223372036854775809 is out"),
    ],
)
def test_out_of_range_values_are_refused_before_anything_is_written(
    tmp_path: Path, override: str, words: str
) -> None:
    assert_one_line_error(cli(*_train_args(tmp_path / "runs", "--set", override)), words)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("seed", [str(2**64), str(-(2**63) - 1)])
def test_a_seed_outside_torchs_range_is_refused_before_anything_is_written(
    tmp_path: Path, seed: str
) -> None:
    args = _train_args(tmp_path / "runs")
    args[args.index("--seed") + 1] = seed
    assert_one_line_error(cli(*args), f"seed={seed} is out of range", "torch's seed range")
    assert not (tmp_path / "runs").exists()
    resolve_config(PRESET, [], -1, "smoke")  # negative seeds inside the range are fine


def test_the_stage_limit_follows_the_model() -> None:
    for downsample in ("max_pool", "stride", "avg_pool"):
        for stages in range(1, 7):
            config = Config(model=ModelConfig(filters=3, stages=stages, downsample=downsample))
            side = downsampled_side(config.image_size, stages, downsample)
            assert NetSpec.from_config(config).final_side == side
            # the strided network averages each last map to 1x1 before its head (docs/fidelity.md)
            assert NetSpec.from_config(config).feature_size == (3 if downsample == "stride" else 3 * side * side)
    with pytest.raises(ConfigError, match="at most 6 for 84x84 miniimagenet images"):
        resolve_config("miniimagenet_5way_1shot_maml", ["model.stages=7"], 0, "smoke")
    resolve_config("miniimagenet_5way_1shot_maml", ["model.stages=6"], 0, "smoke")


# ---------------------------------------------------------------- 2. damaged checkpoints


def _flip_a_tensor_byte(path: Path) -> None:
    def tensors(value: Any) -> Iterator[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from tensors(v)

    state = torch.load(path, weights_only=False)
    tensor = next(t for t in tensors(state) if t.numel() >= 8)
    data = bytearray(path.read_bytes())
    at = data.find(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    assert at > 0
    data[at + 3] ^= 0x40
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=False)  # torch itself notices nothing


def test_a_damaged_top_k_checkpoint_is_left_out_of_the_ensemble(
    straight: RunDirectory, tmp_path: Path
) -> None:
    run = RunDirectory(tmp_path / straight.path.name)
    shutil.copytree(straight.path, run.path)
    used = straight.read_test()["checkpoint_epochs"]  # type: ignore[index]
    _flip_a_tensor_byte(run.epoch_checkpoint(used[0]))
    result = cli("test", str(run.path))
    assert result.exit_code == 0, result.output
    assert f"checkpoint {run.epoch_checkpoint(used[0])} fails its checksum" in result.output
    assert f"the ensemble leaves epoch {used[0]} out" in result.output
    test = run.read_test()
    assert test is not None and test["checkpoint_epochs"] == used[1:]
    assert list(test["skipped_checkpoints"]) == [str(used[0])]


def test_random_bytes_in_latest_pt_and_the_advice_that_follows(
    straight: RunDirectory, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    run = _copy_unfinished(straight, runs)
    run.latest_path.write_bytes(os.urandom(3000))
    line = assert_one_line_error(cli(*_train_args(runs)), f"checkpoint {run.latest_path} is unreadable")
    assert f"Delete {run.latest_path} and run the same command again" in line
    run.latest_path.unlink()  # the advice
    rerun = cli(*_train_args(runs))
    assert rerun.exit_code == 0, rerun.output
    assert_same_run(run, straight)


def test_mamlpp_test_scores_the_checkpoints_present_when_latest_pt_is_damaged(
    straight: RunDirectory, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    run = _copy_unfinished(straight, runs)
    run.latest_path.write_bytes(os.urandom(3000))
    result = cli("test", str(run.path))
    assert result.exit_code == 0, result.output
    expected = json.loads(straight.test_path.read_text())
    assert f"scoring the epoch checkpoints present instead: {sorted(expected['checkpoint_epochs'])}" in result.output
    assert f"{100 * expected['accuracy']:.2f}%" in result.output
    assert not run.test_path.exists()
    for path in run.checkpoints.glob("epoch_*.pt"):
        path.unlink()
    assert_one_line_error(cli("test", str(run.path)), f"checkpoint {run.latest_path} is unreadable")


# ---------------------------------------------------------------- 4. a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?); the injected ENOSPC test covers it")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1"}


def _start_and_wait_for_first_epoch(runs: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mamlpp.cli", *_train_args(runs)], env=_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("epoch   1/4"):
            return process
    process.wait(30)
    raise AssertionError(f"no epoch line: {process.stderr.read() if process.stderr else ''}")


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_a_full_disk_is_one_line_and_the_rerun_is_exact(
    straight: RunDirectory, small_disk: Path
) -> None:
    process = _start_and_wait_for_first_epoch(small_disk)
    process.send_signal(signal.SIGSTOP)  # fill the disk while epoch 2 is in flight
    with contextlib.suppress(OSError):
        filler = _fill(small_disk)
    process.send_signal(signal.SIGCONT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2, err
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: cannot write {small_disk}")
    assert "No space left on device (ENOSPC); free some space, then run the same command again" in line
    assert not list(small_disk.rglob("*.tmp"))
    filler.unlink()
    rerun = cli(*_train_args(small_disk))
    assert rerun.exit_code == 0, rerun.output
    assert_same_run(_only_run(small_disk), straight)


def test_an_injected_write_error_removes_the_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(tracking.os, "fsync", no_space)
    target = tmp_path / "latest.pt"
    with pytest.raises(RunDirectoryError) as caught:
        tracking.atomic_torch_save({"epoch": 1}, target)
    assert str(caught.value).startswith(f"cannot write {target}: Disk quota exceeded (EDQUOT)")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 5. SIGTERM and SIGINT


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_cleanly_and_the_rerun_is_exact(
    straight: RunDirectory, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    runs = tmp_path / "runs"
    process = _start_and_wait_for_first_epoch(runs)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    [line] = err.strip().splitlines()
    assert line.startswith(f"stopped by {sig.name} at epoch ")
    assert "(every completed epoch is saved); at this pace the rest takes ~" in line
    assert line.endswith("; run the same command to resume")
    run = _only_run(runs)
    stopped_at = int(line.split(" at epoch ")[1].split("/")[0])
    assert stopped_at == len(run.read_metrics()) >= 1 and not run.test_path.exists()
    rerun = cli(*_train_args(runs))
    assert rerun.exit_code == 0, rerun.output
    assert f"resuming {run.path} after epoch {stopped_at - 1}" in rerun.output
    assert_same_run(run, straight)


def test_the_previous_signal_handlers_are_restored(straight: RunDirectory, tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    run = _copy_unfinished(straight, tmp_path / "runs")
    assert cli(*_train_args(tmp_path / "runs")).exit_code == 0
    assert run.read_test() == straight.read_test()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# ---------------------------------------------------------------- 5b. the time limit


def _stopped_line(result: Result) -> str:
    assert result.exit_code == stops.TIME_LIMIT_EXIT == 75, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("time limit of 1.0 min reached at epoch ")
    assert line.endswith("; run the same command to resume")
    return line


@pytest.mark.parametrize(
    ("room", "stopped_at"),
    [([False], 1), ([True, True, True, False], 4)],
    ids=["after-the-first-epoch", "before-the-test"],
)
def test_the_time_limit_stops_at_an_epoch_boundary_and_the_rerun_is_exact(
    straight: RunDirectory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    room: list[bool], stopped_at: int,
) -> None:  # fmt: skip
    monkeypatch.setattr(runs_cli, "Deadline", ScriptedDeadline)
    monkeypatch.setattr(ScriptedDeadline, "ROOM", list(room))
    runs = tmp_path / "runs"
    line = _stopped_line(cli(*_train_args(runs, "--time-limit", "1")))
    assert f" at epoch {stopped_at}/4 " in line
    assert ("(training done, the test left)" in line) == (stopped_at == 4)
    pace = re.search(r"\(every completed epoch is saved\); at this pace the rest takes ~([\d.]+) s and the whole run ~([\d.]+) s;", line)
    assert pace is not None, line
    rest, whole = float(pace[1]), float(pace[2])
    assert whole > rest >= 0 and (rest > 0 or stopped_at == 4)  # 3 epochs left take time
    run = _only_run(runs)
    assert len(run.read_metrics()) == stopped_at and not run.test_path.exists()
    rerun = cli(*_train_args(runs))
    assert rerun.exit_code == 0, rerun.output
    assert_same_run(run, straight)


def test_a_time_limit_passing_inside_the_first_epoch_projects_from_its_iterations(
    straight: RunDirectory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs_cli, "Deadline", ScriptedDeadline)
    monkeypatch.setattr(ScriptedDeadline, "EXPIRES_AFTER", 2)  # iterations 0 and 1 run
    runs = tmp_path / "runs"
    line = _stopped_line(cli(*_train_args(runs, "--time-limit", "1")))
    assert " at epoch 0/4, in epoch 1 at iteration 2/3 (abandoned) (every completed epoch is saved)" in line
    assert line.endswith(" (training alone: validation and the test are not timed yet); run the same command to resume")
    run = _only_run(runs)
    assert run.read_metrics() == []
    rerun = cli(*_train_args(runs))
    assert rerun.exit_code == 0, rerun.output
    assert_same_run(run, straight)


def test_a_time_limit_that_has_passed_stops_before_the_first_iteration(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = cli(*_train_args(runs, "--time-limit", "1e-6"))
    assert result.exit_code == 75, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("time limit of 0.0 s reached at epoch 0/4 (every completed epoch is saved); ")
    assert _only_run(runs).read_metrics() == []


@pytest.mark.parametrize("minutes", ["0", "-1", "nan"])
def test_the_time_limit_is_refused_unless_positive(tmp_path: Path, minutes: str) -> None:
    result = cli(*_train_args(tmp_path / "runs", "--time-limit", minutes))
    assert result.exit_code == 2 and "--time-limit" in result.output
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- 6. damaged run files


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda text: text.replace("\n", "\n\xff\xfe garbage\n", 1).encode("latin-1"),
         "line 2 of {path} is not a JSON object; delete that line"),
        (lambda text: text.replace('"epoch": 1, ', "", 1).encode(),
         "line 2 of {path} has no integer epoch; delete that line"),
    ],
)  # fmt: skip
def test_a_damaged_metrics_file_is_named(
    straight: RunDirectory, tmp_path: Path, damage: Any, words: str
) -> None:
    runs = tmp_path / "runs"
    run = _copy_unfinished(straight, runs)
    run.metrics_path.write_bytes(damage(run.metrics_path.read_text()))
    assert_one_line_error(cli(*_train_args(runs)), words.format(path=run.metrics_path))


def test_binary_garbage_at_the_end_of_metrics_is_a_torn_line(
    straight: RunDirectory, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    run = _copy_unfinished(straight, runs)
    with open(run.metrics_path, "ab") as f:
        f.write(b"\x80\x81\xff")
    assert cli(*_train_args(runs)).exit_code == 0
    assert_same_run(run, straight)


def test_metrics_lines_lost_outside_mamlpp_are_named_and_the_run_goes_on(
    straight: RunDirectory, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    run = _copy_unfinished(straight, runs)
    lines = run.metrics_path.read_text().splitlines(keepends=True)
    assert len(lines) >= 2
    run.metrics_path.write_text("".join(lines[:1] + lines[2:]))  # epoch 1's line lost
    result = cli(*_train_args(runs))
    assert result.exit_code == 0, result.output
    assert f"warning: {run.metrics_path} lacks the lines of epochs 1 (1 of {len(lines)};" in result.output
    assert json.loads(run.test_path.read_text()) == json.loads(straight.test_path.read_text())
    # an intact file: no warning
    intact = _copy_unfinished(straight, tmp_path / "intact")
    assert "lacks the lines" not in cli(*_train_args(tmp_path / "intact")).output
    assert intact.test_path.exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\xff\xfe not json", "config.json is unreadable (UnicodeDecodeError); it is not a mamlpp run"),
        (b'{"name": "some other tool"', "config.json is unreadable (JSONDecodeError)"),
        (b'{"name": "some other tool"}', "is not a mamlpp run directory (its config.json has no config"),
        (b'{"config": {"lr": 1}, "run": {}}', "does not hold a mamlpp config (unknown config key(s) ['lr']"),
        (b'{"config": {"inner": {"eval_steps": 0}}, "run": {}}',
         "does not hold a mamlpp config (inner.eval_steps=0 is out of range"),
    ],
)
def test_mamlpp_test_recognises_a_folder_that_is_not_a_run(
    tmp_path: Path, content: bytes, words: str
) -> None:
    (tmp_path / "config.json").write_bytes(content)
    assert_one_line_error(cli("test", str(tmp_path)), words)


# ---------------------------------------------------------------- 7. the data cache


def _tiny_sets() -> cache.ImageSets:
    rng = np.random.default_rng(0)
    return {
        s: SplitImages.from_classes(
            [(f"{s}{c}", rng.integers(0, 255, (4, 1, 28, 28), dtype=np.uint8)) for c in range(3)]
        )
        for s in cache.SPLITS
    }


@pytest.mark.parametrize("damage", ["empty", "empty, cache without checksums", "zeroed pixels"])
def test_a_damaged_cache_is_refused_with_the_rebuild_command(tmp_path: Path, damage: str) -> None:
    key = f"{len(damage):020d}"
    folder = cache.write_cache("omniglot", key, _tiny_sets(), "test")
    assert cache.load_cache("omniglot", key) is not None
    npy = folder / "train.npy"
    if damage.startswith("empty"):
        npy.write_bytes(b"")
        if "without" in damage:  # as written before checksums: the shape checks still apply
            meta = json.loads((folder / "meta.json").read_text())
            del meta["sha256"]
            (folder / "meta.json").write_text(json.dumps(meta))
    else:
        data = bytearray(npy.read_bytes())
        data[-500:-100] = bytes(400)  # the header and shape stay valid
        npy.write_bytes(bytes(data))
        assert np.load(npy).shape == (12, 1, 28, 28)
    with pytest.raises(DataError) as caught:
        cache.load_cache("omniglot", key)
    message = str(caught.value)
    assert message.startswith(f"cache file {npy} ")
    assert ("is unreadable (EOFError" if "without" in damage else "fails its checksum") in message
    assert message.endswith(f"run `mamlpp data prepare omniglot --rebuild` (or delete {folder})")


def test_data_check_decodes_on_request_and_names_a_corrupt_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_data_errors import fake_omniglot, png

    bad = "images_evaluation/Alpha/character02/0002_01.png"
    root = fake_omniglot(tmp_path, {"images_background/Beta/character01/0001_01.png": png(), bad: png()[:40]})
    monkeypatch.setattr(omniglot, "check_counts", lambda counts, where: None)  # a tiny root
    monkeypatch.setattr(data_cli, "_echo_counts", lambda counts: None)
    plain = cli("data", "check", "omniglot", "--root", str(root))
    assert plain.exit_code == 0, plain.output
    assert "images: counted, not decoded; add --decode to decode every image" in plain.output
    assert_one_line_error(cli("data", "check", "omniglot", "--root", str(root), "--decode"), bad)


# ---------------------------------------------------------------- 8. data checked first


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (("--set", "data.dataset=omniglot", "--data-root", "/nonexistent"), "/nonexistent"),
        (("--set", "data.n_way=41"), "val split has only 40 classes; lower data.n_way"),
    ],
)
def test_no_run_directory_before_the_data_is_checked(
    tmp_path: Path, extra: tuple[str, ...], words: str
) -> None:
    assert_one_line_error(cli(*_train_args(tmp_path / "runs", *extra)), words)
    assert not (tmp_path / "runs").exists()


def test_every_preset_passes_the_ranges() -> None:
    from mamlpp.presets import PRESETS

    for name in PRESETS:
        for scale in ("smoke", "paper"):
            resolve_config(name, [], 0, scale)
