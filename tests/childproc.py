"""A child process for crash tests: stdout read line by line with a timeout, SIGKILL.

Shared by the SIGKILL tests (test_crash.py, test_crash_waits.py); a test that waits
on a child never blocks CI: every read has a time limit.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

LINE_TIMEOUT = 60.0  # seconds without a line from the child before the test fails


class ChildProcess:
    """A running Python script, its stdout read line by line with a timeout."""

    def __init__(self, script: Path, args: list[str], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self) -> str | None:
        """The next stdout line, or None once the child closed stdout (exited)."""
        try:
            return self._lines.get(timeout=LINE_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"the child printed nothing for {LINE_TIMEOUT:g}s; {self.stderr()}")

    def exited(self) -> int:
        """Wait for the child to exit on its own and return its exit status."""
        try:
            return self.proc.wait(timeout=LINE_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the child did not exit within {LINE_TIMEOUT:g}s; {self.stderr()}")

    def kill(self) -> None:
        """SIGKILL the child (if it still runs) and reap it."""
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
        text = self.stderr_path.read_text(errors="replace")
        return f"child stderr (tail):\n{text[-4000:]}"


def executions(side_file: Path) -> Counter[tuple[str, str]]:
    """How many times each (run_id, key) executed, from the side file."""
    counts: Counter[tuple[str, str]] = Counter()
    if side_file.exists():
        for line in side_file.read_text().splitlines():
            run_id, key, _attempt = line.split()
            counts[run_id, key] += 1
    return counts
