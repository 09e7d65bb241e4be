"""`replay serve` as a child process for tests: started, ready, stopped, killed.

Nothing waits on the clock: `Served` reads the server's stdout line by line with a
time limit (``serving ...`` once its socket listens), and `wait_for` joins a thread
with one.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
LINE_TIMEOUT = 60.0


class Served:
    """``replay serve DB --workflows MODULES`` in a child process (cwd: tests/)."""

    def __init__(self, db: str, stderr_path: Path, *options: str,
                 modules: str = "connect_flows") -> None:
        self.db = db
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "replay", "serve", db, "--workflows", modules, *options],
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=HERE)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self) -> str | None:
        """The next stdout line, or None once the server closed stdout (exited)."""
        try:
            return self._lines.get(timeout=LINE_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"replay serve printed nothing for {LINE_TIMEOUT:g}s; {self.stderr()}")

    def ready(self) -> Served:
        """Wait until the server says it serves (its socket listens by then)."""
        line = self.line()
        assert line is not None and line.startswith(f"serving {self.db} (pid {self.pid})"), (
            f"{line!r}; {self.stderr()}")
        return self

    def stop(self, number: int = signal.SIGTERM) -> int:
        """Send `number` and return the exit status."""
        self.proc.send_signal(number)
        return self.exited()

    def exited(self) -> int:
        try:
            return self.proc.wait(timeout=LINE_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"replay serve did not exit within {LINE_TIMEOUT:g}s; {self.stderr()}")

    def kill(self) -> None:
        """SIGKILL the server (if it still runs) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=LINE_TIMEOUT)

    def close(self) -> None:
        self.kill()
        self._pump.join(timeout=LINE_TIMEOUT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()

    def stderr(self) -> str:
        self._stderr.flush()
        return "server stderr (tail):\n" + self.stderr_path.read_text(errors="replace")[-4000:]


def in_thread(function: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """Run `function(*args)` in a thread now; return a function that joins it (bounded)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = function(*args)
        except BaseException as error:  # handed to the joining test
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join() -> Any:
        thread.join(timeout=LINE_TIMEOUT)
        if thread.is_alive():
            pytest.fail(f"{function.__name__} did not return within {LINE_TIMEOUT:g}s")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    return join


def open_gate(fifo: str) -> Callable[[], Any]:
    """Open the FIFO for writing in a thread; the join returns its descriptor.

    The open returns once a step has opened the FIFO for reading, so joining it means
    that the step runs; it returns what the writer writes before closing it.
    """
    return in_thread(os.open, fifo, os.O_WRONLY)


def pass_gate(fifo: str, text: str) -> Callable[[], Any]:
    """Write `text` to the FIFO's next reader (a step) in a thread, and close it."""
    def write() -> None:
        fd = os.open(fifo, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    return in_thread(write)
