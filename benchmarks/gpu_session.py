"""What the one-command GPU checks share (a lent GPU has minutes, not hours): a log under $OUT
that is also printed as it is written, and parts run one after another, each reporting its
failure and its time instead of ending the session."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

OUT = Path(os.environ.get("OUT", "."))


def session_log(name: str) -> Callable[..., None]:
    """say(*parts): print the parts joined by spaces and append them to $OUT/<name>."""
    log = open(OUT / name, "a")

    def say(*parts: object) -> None:
        text = " ".join(str(p) for p in parts)
        print(text, flush=True)
        log.write(text + "\n")
        log.flush()

    return say


def run_parts(parts: dict[str, Callable[[], None]], names: list[str], say: Callable[..., None]) -> None:
    """Run the named parts (all when `names` is empty) in order, saying each one's failure and
    time: one failing part must not cost the session the others."""
    for name in names or list(parts):
        t0 = time.time()
        try:
            parts[name]()
        except Exception as e:
            say(f"[{name}] FAILED: {type(e).__name__}: {e}")
        say(f"[{name}] took {time.time() - t0:.0f} s")
