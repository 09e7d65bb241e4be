"""Worker threads for sync step functions, handing results back in batches.

`trio.to_thread.run_sync` costs tens of microseconds of loop time per call when many
runs step at once (one thread hand-off and one loop wake-up each). This pool keeps
long-lived threads and returns finished calls to the loop in batches: one
`run_sync_soon` wakes every call that finished since the last one. Threads start
lazily, up to the pool's size (`open_engine(max_threads=...)`).

A call whose waiter is cancelled (an engine that stops, a race lost) before a thread
took it never starts. A call already running when its waiter gives up (a step timeout,
a stopping engine, a race lost) is abandoned: the thread cannot be stopped, finishes
it, and its result goes to the call's `late` callback if it has one, else nowhere. A
call's timeout counts from when a thread starts it, not from when it was queued, so a
busy pool never times out calls that have not run.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

import trio


class Prelude(Protocol):
    """Work a thread does before a call, with it (a commit the call must follow).

    Attributes:
        done_at: The loop's time (`trio.current_time`) when it was done, as the loop
            learnt it: before the call's outcome arrives, since `run` tells the loop
            first. None until then.
    """

    done_at: float | None

    def run(self) -> bool:
        """Do it, on the thread that then makes the call; False: make no call.

        A False call hands nothing back: its waiter waits until it gives up.
        """
        ...

    def skipped(self) -> None:
        """Called on the loop when the call was given up before any thread took it."""
        ...


class WorkerTimeout(Exception):
    """A call ran longer than its timeout (counted from when a thread started it)."""


class _Job:
    """One call: the function and its arguments, where its outcome goes, and its state."""

    __slots__ = ("args", "box", "cancelled", "context", "done", "function", "given_up", "late",
                 "prelude", "started")

    def __init__(self, function: Callable[..., Any], args: tuple[Any, ...],
                 started: trio.Event | None, prelude: Prelude | None) -> None:
        self.function = function
        self.args = args
        self.prelude = prelude
        self.context = contextvars.copy_context()
        self.box: list[tuple[bool, Any]] = []
        self.done = trio.Event()
        # Set (from the thread) when a thread starts the call; only calls with a timeout
        # ask for it, since it costs one more loop wake-up.
        self.started = started
        # None: queued; False: a thread took it; True: its waiter gave up while queued.
        self.cancelled: bool | None = None
        self.given_up = False  # its waiter gave up, before or after a thread took it
        # Told the outcome of a call whose waiter gave up while it ran (on the loop).
        self.late: Callable[[bool, Any], None] | None = None


class WorkerPool:
    """At most `size` threads running sync functions for one trio run.

    Args:
        size: The most functions that run at once.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # Guards each job's `cancelled`: a job is either taken by a thread or given up.
        self._claim_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # Threads waiting for a job. A new thread starts only when the queued jobs
        # outnumber them: short functions keep a few threads busy (less contention
        # for the GIL), blocking ones make the pool grow to its size.
        self._idle = 0
        self._idle_lock = threading.Lock()
        self._finished: list[tuple[_Job, tuple[bool, Any]]] = []
        self._finished_lock = threading.Lock()
        self._wake_scheduled = False
        self._token: trio.lowlevel.TrioToken | None = None
        self.calls = 0  # how many calls `run` was given

    async def run(self, function: Callable[..., Any], *args: Any,
                  timeout: float | None = None,
                  late: Callable[[bool, Any], None] | None = None,
                  prelude: Prelude | None = None) -> Any:
        """Run `function(*args)` in a worker thread and return its result.

        Args:
            function: The sync function.
            *args: Its arguments.
            timeout: Seconds the call may run once a thread has started it.
            late: Called on the loop with ``(ok, value)`` when a call whose waiter was
                cancelled while it ran finishes.
            prelude: Done by the thread first (its time is not the call's: a timeout
                counts from the end of it); skipped with the call if it never starts.

        Raises:
            WorkerTimeout: The call ran longer than `timeout` (it is abandoned).
            BaseException: Whatever `function` raised.
        """
        self._token = trio.lowlevel.current_trio_token()
        self.calls += 1
        job = _Job(function, args, None if timeout is None else trio.Event(), prelude)
        if len(self._threads) < self._size and self._jobs.qsize() >= self._idle:
            self._start_thread()
        self._jobs.put(job)
        try:
            if job.started is not None and timeout is not None:
                await job.started.wait()
                with trio.move_on_after(timeout):
                    await job.done.wait()
                if not job.box:
                    raise WorkerTimeout(timeout)
            else:
                await job.done.wait()
        except BaseException:
            self._give_up(job, late)
            raise
        ok, value = job.box[0]
        if ok:
            return value
        raise value

    def has_idle_thread(self) -> bool:
        """Whether a call handed over now would start at once (a thread is free for it)."""
        return self._idle > self._jobs.qsize() or len(self._threads) < self._size

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
            if not self._take(job):
                continue  # its waiter gave up before it started: it never runs
            if job.prelude is not None and (not job.prelude.run() or job.given_up):
                continue  # the prelude failed, or the waiter gave up meanwhile: no call
            if job.started is not None:
                self._notify(job.started.set)
            try:
                outcome: tuple[bool, Any] = (True, job.context.run(job.function, *job.args))
            except BaseException as error:  # handed to the waiting task, as to_thread does
                outcome = (False, error)
            self._hand_back(job, outcome)

    def _take(self, job: _Job) -> bool:
        with self._claim_lock:
            if job.cancelled:
                return False
            job.cancelled = False
            return True

    def _give_up(self, job: _Job, late: Callable[[bool, Any], None] | None = None) -> None:
        with self._claim_lock:
            never_ran = job.cancelled is None
            if never_ran:
                job.cancelled = True
            job.given_up = True
        if never_ran:
            if job.prelude is not None:
                job.prelude.skipped()
            return
        if late is not None and job.box:
            late(*job.box[0])  # it finished as its waiter gave up
        else:
            job.late = late  # a thread runs it: its outcome comes later

    def _next_job(self) -> _Job | None:
        with self._idle_lock:
            self._idle += 1
        job = self._jobs.get()
        with self._idle_lock:
            self._idle -= 1
        return job

    def _hand_back(self, job: _Job, outcome: tuple[bool, Any]) -> None:
        with self._finished_lock:
            self._finished.append((job, outcome))
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        self._notify(self._wake_finished)

    def _notify(self, callback: Callable[[], None]) -> None:
        assert self._token is not None
        # If the trio run is over, nobody waits any more.
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(callback)

    def _wake_finished(self) -> None:
        with self._finished_lock:
            finished, self._finished = self._finished, []
            self._wake_scheduled = False
        for job, outcome in finished:
            job.box.append(outcome)
            job.done.set()
            if job.late is not None:
                job.late(*outcome)
