"""`mamlpp bench` runs its rows with config overrides and several seeds per step (its timings
are not checked here: speed lives in benchmarks/RESULTS.md)."""

from __future__ import annotations

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
