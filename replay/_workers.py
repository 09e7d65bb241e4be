"""Worker threads for sync step functions, handing results back in batches.

`trio.to_thread.run_sync` costs tens of microseconds of loop time per call when many
runs step at once (one thread hand-off and one loop wake-up each). This pool keeps
long-lived threads and returns finished calls to the loop in batches: one
`run_sync_soon` wakes every call that finished since the last one. Threads start
lazily, up to the pool's size (`open_engine(max_threads=...)`).

A call whose waiter is cancelled (a step timeout, an abandoned engine) is abandoned:
the thread cannot be stopped, finishes it, and its result is dropped.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

import trio

# A job: the function and its arguments, the context to run it in, where to put the
# outcome, and the event to set.
_Job = tuple[Callable[..., Any], tuple[Any, ...], contextvars.Context, list[Any], trio.Event]


class WorkerPool:
    """At most `size` threads running sync functions for one trio run.

    Args:
        size: The most functions that run at once.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        # Threads waiting for a job. A new thread starts only when the queued jobs
        # outnumber them: short functions keep a few threads busy (less contention
        # for the GIL), blocking ones make the pool grow to its size.
        self._idle = 0
        self._idle_lock = threading.Lock()
        self._finished: list[tuple[list[Any], trio.Event, tuple[bool, Any]]] = []
        self._finished_lock = threading.Lock()
        self._wake_scheduled = False
        self._token: trio.lowlevel.TrioToken | None = None

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run `function(*args)` in a worker thread and return its result.

        Raises:
            BaseException: Whatever `function` raised.
        """
        self._token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[Any] = []
        if len(self._threads) < self._size and self._jobs.qsize() >= self._idle:
            self._start_thread()
        self._jobs.put((function, args, contextvars.copy_context(), box, done))
        await done.wait()
        ok, value = box[0]
        if ok:
            return value
        raise value

    def close(self) -> None:
        """Let every thread end once it has finished its current call."""
        for _ in self._threads:
            self._jobs.put(None)
        self._threads.clear()

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._work, name="replay-step", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while (job := self._next_job()) is not None:
            function, args, context, box, done = job
            try:
                outcome: tuple[bool, Any] = (True, context.run(function, *args))
            except BaseException as error:  # handed to the waiting task, as to_thread does
                outcome = (False, error)
            self._hand_back(box, done, outcome)

    def _next_job(self) -> _Job | None:
        with self._idle_lock:
            self._idle += 1
        job = self._jobs.get()
        with self._idle_lock:
            self._idle -= 1
        return job

    def _hand_back(self, box: list[Any], done: trio.Event, outcome: tuple[bool, Any]) -> None:
        with self._finished_lock:
            self._finished.append((box, done, outcome))
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        assert self._token is not None
        # If the trio run is over, nobody waits any more.
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._wake_finished)

    def _wake_finished(self) -> None:
        with self._finished_lock:
            finished, self._finished = self._finished, []
            self._wake_scheduled = False
        for box, done, outcome in finished:
            box.append(outcome)
            done.set()
