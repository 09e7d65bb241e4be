"""Helpers for the web view's end-to-end tests (tests/test_ui_browser.py).

The browser is the system's Chromium (``/usr/bin/chromium``, or ``$REPLAY_CHROMIUM``)
driven headless by Playwright, never a browser Playwright downloads. Without it the
tests skip, except under CI (``$CI`` set), where they fail: CI installs it
(``.ci/run``) and must prove the page works.

The servers are other processes: the engine (``examples/stuck_orders.py --ui 0``,
which serves the page itself) and ``replay ui DB --port 0``. Each prints the page's
URL on a line of its own; the tests read those lines with a time limit and never
sleep.
"""

from __future__ import annotations

import faulthandler
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from childproc import ChildProcess

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "stuck_orders.py"
IMAGES = ROOT / "docs" / "images"
VIEWPORT = {"width": 1200, "height": 800}
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SERVING = re.compile(r"^replay ui: serving (?P<db>.+) at (?P<url>http://127\.0\.0\.1:\d+/)"
                     r"(?: \((?P<how>.*)\))?$")
WEB_VIEW = re.compile(r"^web view: (?P<url>http://127\.0\.0\.1:\d+/) \(stop with Ctrl-C\)$")


def chromium() -> str:
    """Return the Chromium to drive, or skip (fail under CI) when there is none."""
    path = os.environ.get("REPLAY_CHROMIUM", "/usr/bin/chromium")
    if os.access(path, os.X_OK):
        return path
    reason = (f"no Chromium at {path}: install Debian's chromium (apt-get install chromium) "
              "or point REPLAY_CHROMIUM at one")
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests; {reason}", pytrace=False)
    pytest.skip(reason)


@contextmanager
def browser_context() -> Iterator[object]:
    """Open headless Chromium with a fresh profile; yield its Playwright BrowserContext."""
    from playwright import sync_api  # the test module checked that it is installed

    executable = chromium()
    profile = tempfile.mkdtemp(prefix="replay-chromium-")
    try:
        with sync_api.sync_playwright() as playwright:
            # A persistent context is the only way to hand Chromium the profile folder.
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=executable, args=CHROMIUM_ARGS, headless=True,
                viewport=VIEWPORT, timeout=60_000)
            context.set_default_timeout(15_000)
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class Server:
    """A process serving the web view, started at once; `ready` waits for its address."""

    def __init__(self, args: list[str], stderr: Path, pattern: re.Pattern[str]) -> None:
        self.args = args
        self.child = ChildProcess(Path(args[0]), args[1:], stderr)
        self.pattern = pattern
        self.lines: list[str] = []
        self.stderr = ""
        self.found: re.Match[str] | None = None
        self.url = ""

    def ready(self) -> Server:
        """Wait until the server prints where it serves; set `url` (and `found`)."""
        while self.found is None:
            line = self.child.line()
            if line is None:
                pytest.fail(f"{self.args} ended without serving; it printed {self.lines}; "
                            f"{self.child.stderr()}")
            self.lines.append(line)
            self.found = self.pattern.match(line)
        self.url = self.found["url"]
        return self

    @property
    def pid(self) -> int:
        return self.child.proc.pid

    def stop(self) -> int:
        """SIGINT (Ctrl-C) the server, wait for it to end; return its exit status."""
        if self.child.proc.poll() is None:
            self.child.proc.send_signal(signal.SIGINT)
        while (line := self.child.line()) is not None:
            self.lines.append(line)
        status = self.child.exited()
        self.stderr = self.child.stderr()  # for the test's message: read it before closing
        self.child.close()
        return status


def serve_example(db: Path, stderr: Path) -> Server:
    """Run examples/stuck_orders.py on `db` with its engine serving the page."""
    return Server([str(EXAMPLE), str(db), "--ui", "0"], stderr, WEB_VIEW)


def replay_ui(db: Path, stderr: Path) -> Server:
    """Run ``replay ui DB --port 0`` (the command as installed next to this Python)."""
    command = Path(sys.executable).with_name("replay")
    return Server([str(command), "ui", str(db), "--port", "0"], stderr, SERVING)


def own_children(*, named: str) -> list[int]:
    """The ids of this process's child processes whose command line contains `named`."""
    found: list[int] = []
    if not os.path.isdir("/proc"):  # not Linux: the guard stops only the servers
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # it ended meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and named.encode() in command:
            found.append(int(entry))
    return found


@contextmanager
def hang_guard(seconds: float, servers: list[Server]) -> Iterator[None]:
    """Fail a test that hangs instead of letting it block CI.

    Playwright's expectations time out by themselves, but some calls do not (a page
    that never finishes closing, say). After `seconds`, this prints every thread's
    stack and kills Playwright's driver (its browser goes with it) and the servers:
    the call that hangs then raises, the test fails and the module's teardown runs.
    """
    def fire() -> None:
        sys.stderr.write(f"\nthe test still runs after {seconds:g} s: stopping it\n")
        faulthandler.dump_traceback(all_threads=True)
        for pid in [*own_children(named="playwright"), *(s.pid for s in servers)]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def screenshot(page: object, name: str, folder: Path) -> Path:
    """Save a PNG of the page to `folder`, and to docs/images with REPLAY_SCREENSHOTS=1."""
    path = folder / name
    page.screenshot(path=str(path))  # type: ignore[attr-defined]
    if os.environ.get("REPLAY_SCREENSHOTS") == "1":
        IMAGES.mkdir(exist_ok=True)
        shutil.copyfile(path, IMAGES / name)
    return path
