"""Group commit: every record is durable before the task that made it continues.

A run's task calls `Committer.commit(record, apply)`: the record gets its `seq` and
timestamp, are validated and turned into rows *in that task* (so a bad value fails
its own run, never a batch), and join the pending batch. One flusher task waits one
scheduling round (unless every task the last commit woke has queued its next record
already, as a lone run's has), hands everything pending to the store's writer thread
as one transaction, and wakes all the waiting tasks from a callback on the loop as soon
as the commit returns. While a commit is in flight the next batch accumulates, so the
batch size follows the load with no timer: one record for a lone sequential run,
hundreds when hundreds of runs step.

A lone run's next sync step can take its batch along instead (`hand_over`): the step's
worker thread commits it, tells the loop, then calls the step function. That saves
the two hand-offs to the writer thread and back on every step; nothing else commits
until the loop has heard, so commits keep the order of their `seq`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import trio
from trio._core._run import GLOBAL_RUN_CONTEXT  # private: see `trio_is_guest`

from replay._core._records import Record
from replay._engine._clock import EngineClock, busy_thread
from replay._errors import DatabaseError, LeaseLost
from replay._store import SEQ_BLOCK, EngineStore

# What a commit applies once durable, in `seq` order: each record with its run's `apply`.
Applies = list[tuple[Callable[[Record], None], Record]]


class Committer:
    """Collects records from many tasks and commits them in batches.

    Args:
        store: The open store whose writer thread commits.
        clock: The engine clock that stamps records.
        last_seq: The largest `seq` already in the file.
        generations: The current generation of each run that has continued as new.
    """

    def __init__(self, store: EngineStore, clock: EngineClock, last_seq: int,
                 generations: dict[str, int] | None = None) -> None:
        self._store = store
        self._clock = clock
        self._seq = last_seq
        # On a shared store `seq` comes in blocks (`SharedStore.next_block`): the last
        # number of the current block; None: unbounded (one engine numbers the file).
        self._seq_end: int | None = None
        if store.sharing is not None:
            self._seq_end = last_seq + SEQ_BLOCK
        # Stamped on each record in `seq` order, so a record committed after a run's
        # `run/continued` (a signal, say) belongs to the new generation.
        self._generations = generations or {}
        self._rows: list[tuple[Any, ...]] = []
        self._waiters: list[trio.Event] = []
        self._applies: Applies = []
        self._wakeup = trio.Event()
        self._runs_ended = trio.Event()
        self._woken = 0  # how many tasks the last commit woke
        # Whether one run alone uses the engine (set by the scheduler): its batches are
        # committed on the loop's thread, without the two thread hand-offs (see `_write`).
        self.alone: Callable[[], bool] = _never
        # How many sync step functions went to worker threads so far (set by the
        # scheduler), and that count at the last commit.
        self.thread_calls: Callable[[], int] = _no_calls
        self._thread_calls = 0
        self._writing = False  # a batch of the flusher's is being committed
        self._handed: ThreadCommit | None = None  # a batch a worker thread commits
        self._failure: BaseException | None = None  # how the handed batch failed

    async def commit(self, record: Record, apply: Callable[[Record], None]) -> None:
        """Make `record` durable; return only once it is committed.

        Raises:
            trio.Cancelled: The engine stopped (a failed commit stops it).
        """
        await self.enqueue(record, apply).wait()

    def enqueue(self, record: Record, apply: Callable[[Record], None]) -> trio.Event:
        """Add `record` to the next batch; the returned event is set once it is durable.

        `apply(record)` is called when the batch is committed, in `seq` order with every
        other record of the batch and before any waiter wakes: in-memory state follows
        the file's order whatever order the waiting tasks then run in.
        """
        record.seq = self._next_seq()
        if record.recorded_at is None:
            record.recorded_at = self._clock.now()
        if self._generations or record.event == "continued":
            self._stamp_generation(record)
        self._rows.append(self._store.row(record))
        self._applies.append((apply, record))
        done = trio.Event()
        self._waiters.append(done)
        self._wakeup.set()
        return done

    def enqueue_all(self, records: Sequence[Record], apply: Callable[[Record], None],
                    ride: bool = False) -> trio.Event:
        """Add `records` of one run, in order, to the next batch (see `enqueue`).

        They share one timestamp and one event, set once all of them are durable.
        `ride`: nobody waits for them, so they start no commit of their own; they go
        with the next batch someone waits for (the outcomes of pure steps: a crash
        before then recomputes them equal).
        """
        now = self._clock.now()
        for record in records:
            record.seq = self._next_seq()
            if record.recorded_at is None:
                record.recorded_at = now
            if self._generations or record.event == "continued":
                self._stamp_generation(record)
            self._rows.append(self._store.row(record))
            self._applies.append((apply, record))
        done = trio.Event()
        self._waiters.append(done)
        if not ride:
            self._wakeup.set()
        return done

    def hand_over(self, records: Sequence[Record], apply: Callable[[Record], None]
                  ) -> ThreadCommit | None:
        """Take `records` (see `enqueue_all`) and the rest of the batch to a worker thread.

        For a lone run's sync step: the thread that calls it commits the batch first.
        None (nothing taken) while another commit is in flight: then commit `records`
        the usual way.
        """
        if self._writing or self._handed is not None:
            return None
        self.enqueue_all(records, apply, ride=True)
        self._handed = ThreadCommit(self._store, *self._take_batch(), self._thread_committed,
                                    self._put_back)
        return self._handed

    def _thread_committed(self, handed: ThreadCommit, error: BaseException | None) -> None:
        """On the loop: the worker thread committed the handed batch, or failed to."""
        self._handed = None
        if error is None:
            _apply_and_wake(handed.applies, handed.waiters)
        else:
            self._failure = self._failed(handed.rows, error)  # the flusher raises it
        handed.landed.set()
        self._wakeup.set()

    def _put_back(self, handed: ThreadCommit) -> None:
        """On the loop: no thread took the handed batch; it leads the next one."""
        self._handed = None
        self._rows[:0], self._waiters[:0] = handed.rows, handed.waiters
        self._applies[:0] = handed.applies
        handed.landed.set()
        self._wakeup.set()

    async def _handed_landed(self) -> None:
        """Wait until a handed batch is committed (or put back); raise if it failed."""
        while self._handed is not None:
            await self._handed.landed.wait()
        if self._failure is not None:
            raise self._failure

    def _next_seq(self) -> int:
        if self._seq_end is not None and self._seq >= self._seq_end:
            # One query per block of numbers, on the loop: rare enough not to matter.
            self.advance(self._store.sharing.next_block())  # type: ignore[union-attr]
        self._seq += 1
        return self._seq

    def advance(self, block: int) -> None:
        """Number the next records from the block after `block`, if it is ahead.

        An engine sharing its store takes a fresh block after claiming runs, so that
        their new records come after every record they have.
        """
        if block > self._seq:
            self._seq, self._seq_end = block, block + SEQ_BLOCK

    def numbers_after(self, seq: int) -> bool:
        """Whether the next record's `seq` will be above `seq`."""
        return self._seq >= seq

    def note_generations(self, records: Sequence[Record]) -> None:
        """Learn the generations of runs claimed from another engine (`records`)."""
        for record in records:
            if record.kind == "run" and record.event == "continued":
                self._generations[record.run_id] = record.generation

    def _stamp_generation(self, record: Record) -> None:
        if record.kind == "run" and record.event == "continued":
            self._generations[record.run_id] = record.generation
        elif record.kind == "run" and record.event == "started":
            # A new run: one of the same id that was purged had its own generations.
            self._generations.pop(record.run_id, None)
        else:
            record.generation = self._generations.get(record.run_id, 0)

    # Ctrl-C is delivered to the main task, never in the middle of a batch.
    @trio.lowlevel.enable_ki_protection
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The flusher task: commit pending batches until cancelled, then the rest.

        Records queued when the engine stops (abandoned attempts, outcomes whose
        tasks were cancelled while waiting) are committed before this returns,
        shielded from the cancellation that stops the engine.

        Raises:
            DatabaseError: A commit failed; nothing in it was acknowledged.
        """
        token = trio.lowlevel.current_trio_token()
        self._store.start_writer()
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                await self._handed_landed()
                if len(self._waiters) < self._woken:
                    # One scheduling round: tasks the last commit woke add theirs (a lone
                    # run's task, which already has, is not kept waiting for the round).
                    await trio.lowlevel.checkpoint()
                await self._flush(token)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                # The runs' tasks may still be queueing records as they are cancelled
                # (abandoned attempts): wait for them to end, then commit the rest.
                await self._runs_ended.wait()
                await self._handed_landed()
                await self._flush(token)
            raise

    def runs_ended(self) -> None:
        """Say that no run's task is left: a stopping flusher may commit the rest."""
        self._runs_ended.set()

    async def _flush(self, token: trio.lowlevel.TrioToken) -> None:
        """Commit everything pending, apply it in `seq` order, wake its waiters."""
        if not self._rows:
            return
        rows, waiters, applies = self._take_batch()

        def durable() -> None:
            # On the loop, as soon as the commit returns: the waiting tasks wake now,
            # not after this task is scheduled again.
            _apply_and_wake(applies, waiters)

        self._writing = True
        try:
            await self._write(token, rows, durable)
        finally:
            self._writing = False

    def _take_batch(self) -> tuple[list[tuple[Any, ...]], list[trio.Event], Applies]:
        """Take everything pending (rows, waiters, applies) for one commit."""
        rows, waiters, applies = self._rows, self._waiters, self._applies
        self._rows, self._waiters, self._applies = [], [], []
        self._woken = len(waiters)
        return rows, waiters, applies

    async def _write(self, token: trio.lowlevel.TrioToken, rows: list[tuple[Any, ...]],
                     durable: Callable[[], None]) -> None:
        calls = self.thread_calls()
        threaded, self._thread_calls = calls != self._thread_calls, calls
        lone = self.alone()
        # After a sync step that ran in a worker thread, the writer thread commits: the
        # loop's thread committing slows the hand-overs to and from the worker thread
        # more than it saves (measured).
        if lone and not threaded and self._commit_here(rows):
            durable()
            return
        finished = trio.Event()
        outcome: list[BaseException | None] = []
        broken: list[BaseException] = []

        def committed() -> None:
            try:
                if outcome[0] is None:
                    durable()
            except BaseException as error:  # a bug: raised in the flusher, which stops
                broken.append(error)
            finally:
                finished.set()

        def done(error: BaseException | None) -> None:
            outcome.append(error)
            token.run_sync_soon(committed)

        with busy_thread():
            self._store.submit(rows, done, lone)
            with trio.CancelScope(shield=True):
                # The commit cannot be taken back once handed over: wait for its end.
                await finished.wait()
        if broken:
            raise broken[0]
        if outcome[0] is not None:
            raise self._failed(rows, outcome[0])

    def _commit_here(self, rows: list[tuple[Any, ...]]) -> bool:
        """Commit `rows` on this thread if the store's writer is idle; False if busy.

        The loop waits for the commit (about a millisecond), which costs nothing when
        no other task has anything to do, and saves handing the batch to the writer
        thread and the result back to the loop.
        """
        try:
            return self._store.commit_now(rows)
        except Exception as error:
            raise self._failed(rows, error) from error

    def _failed(self, rows: list[tuple[Any, ...]], error: BaseException) -> BaseException:
        """The error that stops the engine when committing `rows` failed with `error`."""
        if isinstance(error, LeaseLost):
            return error
        failure = DatabaseError(
            f"committing {len(rows)} records to {self._store.path!r} failed: "
            f"{error}; nothing in that batch was acknowledged and the engine "
            "stopped. Fix the cause (e.g. free disk space) and reopen: every run "
            "continues from its last durable record")
        failure.__cause__ = error
        return failure


class ThreadCommit:
    """A batch that the worker thread of a lone run's next sync step commits first.

    It is the worker pool's `Prelude` for that call: `run` commits on the thread and
    tells the loop (which applies the records and wakes their waiters, or stops the
    engine if the commit failed); `skipped` puts the batch back when no thread took
    the call (the run was cancelled, or the engine stops), to commit the usual way.
    """

    __slots__ = ("_committed", "_put_back", "_store", "_token", "applies", "done_at", "landed",
                 "rows", "waiters")

    def __init__(self, store: EngineStore, rows: list[tuple[Any, ...]],
                 waiters: list[trio.Event], applies: Applies,
                 committed: Callable[[ThreadCommit, BaseException | None], None],
                 put_back: Callable[[ThreadCommit], None]) -> None:
        self._store = store
        self._committed, self._put_back = committed, put_back
        self._token = trio.lowlevel.current_trio_token()
        self.rows, self.waiters, self.applies = rows, waiters, applies
        self.landed = trio.Event()  # set on the loop once committed, failed or put back
        self.done_at: float | None = None

    def run(self) -> bool:
        """Commit the batch on this (worker) thread; False if that failed."""
        try:
            if not self._store.commit_now(self.rows, wait=True):
                raise RuntimeError("the store cannot commit on a worker thread")
        except BaseException as error:
            self._tell(error)
            return False
        self._tell(None)
        return True

    def skipped(self) -> None:
        """No thread took the call: the batch goes back to the committer (on the loop)."""
        self._put_back(self)

    def _tell(self, error: BaseException | None) -> None:
        def landed() -> None:
            self.done_at = trio.current_time()
            self._committed(self, error)

        # The loop hears before the call's outcome, which this thread hands back later.
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(landed)


def _apply_and_wake(applies: Applies, waiters: list[trio.Event]) -> None:
    """A batch is durable: apply its records in `seq` order, then wake its waiters."""
    for apply, record in applies:
        apply(record)
    for waiter in waiters:
        waiter.set()


def _never() -> bool:
    return False


def _no_calls() -> int:
    return 0


def trio_is_guest() -> bool:
    """Whether this trio run is a guest of another event loop (as under `replay.aio`).

    Then the loop's thread also runs the host loop's own work, which trio cannot see,
    so the engine never holds that thread for a commit. trio has no public way to ask:
    this reads its runner's flag, and answers yes if it cannot (the safe answer).
    """
    runner = getattr(GLOBAL_RUN_CONTEXT, "runner", None)
    return bool(getattr(runner, "is_guest", True))
