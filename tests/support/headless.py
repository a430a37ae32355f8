"""Drive headless Chromium over the DevTools protocol, to check report pages as a reader sees them.

Talks to Chromium through ``--remote-debugging-pipe`` (file descriptors 3 and 4, messages ended
by a NUL byte): no port, no extra dependency. Used by the report tests; usable by hand::

    python -m tests.support.headless reports/smoke/index.html   # prints console errors, exit 1 if any
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1280,1024",
    "--remote-debugging-pipe",
]


def find_chromium() -> str | None:
    """$MAMLPP_CHROMIUM, else the first Chromium/Chrome on PATH; None when there is none."""
    explicit = os.environ.get("MAMLPP_CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) else None
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


class BrowserError(RuntimeError):
    pass


class Chromium:
    """A headless Chromium with one page; ``with Chromium() as browser: browser.open(path)``."""

    def __init__(self, binary: str | None = None, timeout: float = 60.0) -> None:
        binary = binary or find_chromium()
        if binary is None:
            raise BrowserError(
                "no Chromium found: install Debian's `chromium` or set MAMLPP_CHROMIUM"
            )
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="mamlpp-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire_pipes() -> None:  # runs in the child before exec: fds 3 and 4 are the protocol
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=wire_pipes,  # noqa: PLW1509 - single-threaded at this point in tests
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=True)

    # -------------------------------------------------------------- protocol

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    self._lock.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        self._replies[message["id"]] = message
                        self._lock.notify_all()
                else:
                    self._events.put(message)

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: bool = False
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        with self._lock:
            while self._next_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise BrowserError(f"no reply to {method} from Chromium")
                self._lock.wait(min(left, 0.5))
            reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise BrowserError(f"{method} failed: {reply['error']}")
        return reply.get("result", {})

    def _drain(self, until: str | None = None, wait: float = 0.0) -> None:
        """Move queued events into ``self.events``; with ``until``, wait for that event."""
        deadline = time.monotonic() + (self.timeout if until else wait)
        while True:
            left = deadline - time.monotonic()
            try:
                event = (
                    self._events.get(timeout=max(left, 0.0))
                    if left > 0
                    else self._events.get_nowait()
                )
            except queue.Empty:
                if until:
                    raise BrowserError(f"timed out waiting for {until}") from None
                return
            self.events.append(event)
            if until and event.get("method") == until:
                return

    # -------------------------------------------------------------- page

    def open(self, path: str | Path, settle: float = 1.0) -> None:
        """Load a local file and wait for its load event, then ``settle`` seconds more."""
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=True)
        self._drain(until="Page.loadEventFired")
        self._drain(wait=settle)

    def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (promises awaited) and return its JSON value."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=True,
        )
        if "exceptionDetails" in result:
            raise BrowserError(
                f"JavaScript failed: {result['exceptionDetails'].get('text')} in {expression[:80]!r}"
            )
        return result["result"].get("value")

    def click(self, x: float, y: float) -> None:
        """A real left click (mouse down, up) at page coordinates."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            params = {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}
            self.send("Input.dispatchMouseEvent", params, session=True)
        self._drain(wait=0.5)

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        self._drain()
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(
                    "console: "
                    + " ".join(
                        str(a.get("value", a.get("description"))) for a in params.get("args", [])
                    )
                )
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                errors.append(
                    "exception: "
                    + str(details.get("exception", {}).get("description") or details.get("text"))
                )
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
        return errors

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except BrowserError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(paths: list[str]) -> int:
    failed = 0
    with Chromium() as browser:
        for path in paths:
            before = len(browser.console_errors())
            browser.open(path)
            errors = browser.console_errors()[before:]
            print(f"{path}: {'OK' if not errors else str(len(errors)) + ' console error(s)'}")
            for e in errors:
                print("  " + e)
            failed += bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
