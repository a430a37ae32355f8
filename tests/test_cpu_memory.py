"""glibc malloc settings (mamlpp/cpu_memory.py): freed tensor memory is reused, not faulted in
again. Each case runs in a fresh Python process, since the settings are process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, resource, torch
from mamlpp.kernels.cpu_memory import keep_freed_memory
applied = keep_freed_memory()
for _ in range(20):  # warm-up: the heap grows to its working size once
    torch.empty(16 << 20).fill_(1.0)  # 64 MiB: above glibc's largest default mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.empty(16 << 20).fill_(1.0)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""


def probe(malloc: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "MAMLPP_MALLOC"}
    if malloc is not None:
        env["MAMLPP_MALLOC"] = malloc
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_are_reused_instead_of_faulted_in_again() -> None:
    default, tuned = probe("default"), probe(None)
    assert default["applied"] is False and tuned["applied"] is True
    pages = (64 << 20) // 4096
    # default: every 64 MiB tensor is a fresh mmap whose pages fault in again; tuned: reused
    assert default["faults"] > 4 * pages  # type: ignore[operator]
    assert tuned["faults"] < pages // 4  # type: ignore[operator]
