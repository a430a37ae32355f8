"""Shared test fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Triton kernels run under Triton's interpreter in the tests (tests/test_triton_bn.py runs them
# on the CPU). Triton reads this when a kernel is decorated, its own library's included, and
# torch may import Triton during any test (e.g. through torch._dynamo), so it is set for the
# whole session before any test runs.
os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """The read-only shared data root (holds omniglot/); override with $MAMLPP_TEST_DATA."""
    env = os.environ.get("MAMLPP_TEST_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (root / "omniglot").is_dir():
        pytest.skip(f"shared Omniglot not found under {root}; set MAMLPP_TEST_DATA")
    return root


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test session caches preprocessed data in a temporary folder, never in ~/.cache."""
    folder = tmp_path_factory.mktemp("mamlpp-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAMLPP_CACHE", str(folder))
        yield folder
