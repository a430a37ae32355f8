"""Headless Chromium for tests, through Playwright, with the system's (Debian's) chromium.

Playwright drives the chromium found on PATH via ``executable_path`` (it never downloads a
browser). Function-based API::

    from tests.support.browser_support import needs_browser, launch, open_file, console_errors, \
        evaluate, click, screenshot, close

    @needs_browser
    def test_page(tmp_path):
        b = launch()
        try:
            open_file(b, "reports/smoke/index.html")
            assert console_errors(b) == []
            assert evaluate(b, "document.querySelectorAll('table').length") == 3
            screenshot(b, tmp_path / "page.png")
        finally:
            close(b)

``python -m tests.support.browser_support REPORT/index.html OUT.png`` saves a screenshot of a
report index (``make screenshot``).

Needs: ``pip install playwright`` (one wheel; bundles its node driver; depends only on greenlet)
and a Chromium on PATH (``apt-get install chromium`` on Debian) or $MAMLPP_CHROMIUM. When
either is missing, tests marked ``needs_browser`` (or calling ``require_browser()``) skip and
say why. Playwright's sync API must not be used inside a running asyncio loop.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = (
    "`make browser` installs Debian's chromium (needs root and apt-get), "
    "or point MAMLPP_CHROMIUM at a Chromium/Chrome binary"
)


def find_chromium() -> str | None:
    """$MAMLPP_CHROMIUM, else the first Chromium/Chrome on PATH; None when there is none."""
    explicit = os.environ.get("MAMLPP_CHROMIUM")
    if explicit:
        return shutil.which(explicit)
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def skip_reason() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed: pip install playwright (the dev extra)"
    if find_chromium() is None:
        return f"Chromium not found: {INSTALL_HINT}"
    return None


def require_browser() -> str:
    """The Chromium path; skips the calling test (with the reason) when there is none."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    path = find_chromium()
    assert path is not None
    return path


_REASON = skip_reason()
needs_browser = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


@dataclass
class Browser:
    """One headless Chromium with one page; ``errors`` collects console errors as they come."""

    playwright: Any
    browser: Any
    page: Any
    errors: list[str] = field(default_factory=list)


def launch(
    executable: str | None = None,
    width: int = 1280,
    height: int = 1024,
    timeout_s: float = 60.0,
) -> Browser:
    """Start headless Chromium (Playwright adds --headless and, as root-safe default, --no-sandbox)."""
    from playwright.sync_api import sync_playwright

    executable = executable or require_browser()
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(
            executable_path=executable,
            headless=True,
            args=["--disable-gpu"],
            timeout=timeout_s * 1000,
        )
        page = browser.new_page(viewport={"width": width, "height": height})
    except Exception:
        pw.stop()
        raise
    page.set_default_timeout(timeout_s * 1000)
    b = Browser(pw, browser, page)

    def on_console(message: Any) -> None:
        if message.type in ("error", "assert"):
            where = message.location.get("url", "") if message.location else ""
            b.errors.append(f"console: {message.text} {where}".strip())

    page.on("console", on_console)
    page.on("pageerror", lambda error: b.errors.append(f"exception: {error}"))
    page.on("crash", lambda _page: b.errors.append("crash: the page crashed"))
    return b


def open_file(
    b: Browser, path: str | Path, wait_for: str | None = None, settle_ms: int = 300
) -> None:
    """Load a local file (or an URL), wait for its load event, for the JS condition ``wait_for``
    (e.g. ``"document.querySelector('.js-plotly-plot')"``) when given, then ``settle_ms`` more."""
    text = str(path)
    url = text if "://" in text else Path(text).resolve().as_uri()
    b.page.goto(url, wait_until="load")
    if wait_for:
        b.page.wait_for_function(wait_for)
    if settle_ms:
        b.page.wait_for_timeout(settle_ms)


def console_errors(b: Browser) -> list[str]:
    """Console errors/asserts, uncaught exceptions and failed loads seen since ``launch``."""
    return list(b.errors)


def evaluate(b: Browser, expression: str, arg: Any = None) -> Any:
    """Evaluate JavaScript in the page and return its JSON value (promises are awaited).
    ``expression`` may be an expression or a function source (``"x => x * 2"``, called with arg)."""
    return b.page.evaluate(expression, arg)


def click(b: Browser, x: float, y: float, settle_ms: int = 500) -> None:
    """A real left click at page (viewport) coordinates, then ``settle_ms`` for transitions."""
    b.page.mouse.click(x, y)
    if settle_ms:
        b.page.wait_for_timeout(settle_ms)


def screenshot(b: Browser, path: str | Path, full_page: bool = True) -> Path:
    """Save a PNG of the page; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    b.page.screenshot(path=str(path), full_page=full_page)
    return path


def close(b: Browser) -> None:
    try:
        b.browser.close()
    finally:
        b.playwright.stop()


def save_report_screenshot(index: Path, png: Path, height: int = 2200) -> Path:
    """The top ``height`` pixels of a report index (1280 wide: header, tables and the first
    preset's charts) as a 256-colour PNG, small enough to commit (``make screenshot``)."""
    from PIL import Image

    b = launch(height=height)
    try:
        open_file(b, index, wait_for="window.Plotly !== undefined", settle_ms=1500)
        if console_errors(b):
            raise RuntimeError(f"{index}: console errors {console_errors(b)}")
        screenshot(b, png, full_page=False)
    finally:
        close(b)
    Image.open(png).convert("RGB").quantize(colors=256).save(png, optimize=True)
    return png


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m tests.support.browser_support REPORT/index.html OUT.png")
    reason = skip_reason()
    if reason:
        sys.exit(f"no screenshot: {reason}")
    print(f"wrote {save_report_screenshot(Path(sys.argv[1]), Path(sys.argv[2]))}")
