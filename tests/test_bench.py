"""`mamlpp bench` runs its rows with config overrides and several seeds per step (its timings
are not checked here: speed lives in benchmarks/RESULTS.md)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from mamlpp.cli import main

TINY = ["--set", "model.filters=4", "--set", "inner.steps=1", "--set", "outer.meta_batch_size=1"]


def test_bench_rows_with_seeds_and_overrides() -> None:
    args = ["bench", "--shape", "omniglot-5way-1shot", "--device", "cpu", "--engine", "folded",
            "--engine", "loop", "--iterations", "1", "--warmup", "0", "--seeds", "2", *TINY]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()[1:]
    assert header.split()[:4] == ["shape", "device", "engine", "seeds"]
    assert [r.split()[:4] for r in rows] == [["omniglot-5way-1shot", "cpu", "folded", "2"]]


def test_bench_refuses_an_unknown_key_in_one_line() -> None:
    result = CliRunner().invoke(main, ["bench", "--set", "model.filter=4"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "unknown config key 'model.filter'" in result.output


def test_bench_refuses_an_out_of_range_value_before_timing_anything() -> None:
    args = ["bench", "--device", "cpu", "--set", "inner.steps=0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr == "error: inner.steps=0 is out of range; it must be at least 1\n"
    # valid for mini-ImageNet's 84x84 images, not for Omniglot's 28x28: refused before any row
    args = ["bench", "--device", "cpu", "--shape", "miniimagenet-5way-1shot", "--shape",
            "omniglot-5way-1shot", "--set", "model.stages=5"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "shape" not in result.stdout
    assert "model.stages=5 is out of range; it must be at most 4" in result.stderr


@pytest.mark.parametrize(
    ("device", "words"),
    [
        ("foo", "error: --device 'foo' is not a device bench times; use cpu, cuda or cuda:N"),
        ("meta", "error: --device 'meta' is not a device bench times"),
        ("cuda:99", "error: --device cuda:99"),
    ],
)
def test_bench_refuses_a_device_this_machine_lacks_in_one_line(device: str, words: str) -> None:
    result = CliRunner().invoke(main, ["bench", "--device", "cpu", "--device", device])
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(words), line
    if device == "cuda:99" and not torch.cuda.is_available():
        assert "no CUDA GPU is visible; use --device cpu" in line


@pytest.mark.parametrize(("option", "value"), [("--iterations", "0"), ("--warmup", "-1")])
def test_bench_refuses_no_timed_iterations_or_a_negative_warmup(option: str, value: str) -> None:
    result = CliRunner().invoke(main, ["bench", "--device", "cpu", *TINY, option, value])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"Invalid value for '{option}'" in result.output
