"""benchmarks/gpu_paper.py's plumbing, dry on the CPU: a lent GPU has minutes, so the script
that spends them must not fail on a path, a file name, a package the GPU machine lacks or the
run state it hands to the next session. The run state it packs resumes: unpacked into a fresh runs folder with the run's test
result taken away, the same script resumes it to the same test result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_ON_THE_CARD = ("plotly", "wandb", "submitit", "playwright")
"""Packages of ours the GPU machine's image lacks (the device tool's package list): the script
and the `mamlpp train` it starts must run without them."""
BLOCKER = f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {NOT_ON_THE_CARD!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not on the GPU machine)")
sys.meta_path.insert(0, _Block())
"""


def _dry_run(out: Path, runs: Path) -> str:
    out.mkdir(parents=True)
    block = out.parent / "block"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(BLOCKER)
    path = f"{block}{os.pathsep}{ROOT}"
    env = {**os.environ, "OUT": str(out), "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_paper.py", "--dry-run", "--budget", "300", "--runs-dir", str(runs)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_dry_run_leaves_results_and_a_run_state_that_resumes(tmp_path: Path) -> None:
    out = _dry_run(tmp_path / "out1", tmp_path / "runs1")
    assert "FAILED" not in out, out
    assert out.count("[skip] needs CUDA") == 3 and "[bench] 3 seeds" in out
    gaps = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if line.startswith("[kernels] omniglot")]
    assert len(gaps) == 8 and max(gaps) < 1e-12  # the kernel variants are exact (float64)
    results = tmp_path / "out1" / "results"
    assert sorted(p.name for p in results.iterdir()) == ["config.json", "metrics.jsonl", "test.json", "train.txt"]
    assert (results / "train.txt").read_text().startswith("command: mamlpp train --preset omniglot_5way_1shot_mamlpp")
    assert len((results / "metrics.jsonl").read_text().splitlines()) == 4
    first = json.loads((results / "test.json").read_text())

    with tarfile.open(tmp_path / "out1" / "run_state.tar.gz") as tar:
        names = tar.getnames()
        (run,) = {n.split("/")[0] for n in names}
        assert f"{run}/checkpoints/latest.pt" in names and not any("/wandb" in n for n in names)
        tar.extractall(tmp_path / "runs2", filter="data")
    (tmp_path / "runs2" / run / "test.json").unlink()

    again = _dry_run(tmp_path / "out2", tmp_path / "runs2")
    assert f"resuming {tmp_path / 'runs2' / run} after epoch 3" in again
    assert json.loads((tmp_path / "out2" / "results" / "test.json").read_text()) == first
