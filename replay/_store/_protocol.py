"""What the engine needs of a store, whichever database holds the history.

Two stores implement it: `replay._store.Store` (a DuckDB file, the default) and
`replay._pg._store.PgStore` (a PostgreSQL database). The engine sees only this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from replay._core._history import RunHistory
from replay._core._records import Record
from replay._errors import LeaseLost
from replay._store._purge import GenerationRows, PurgePlan
from replay._store._rows import ParkedRow, RunRow

# How many `seq` numbers an engine sharing its store takes at a time (from a sequence).
SEQ_BLOCK = 10_000


@dataclass(frozen=True)
class WorkerOptions:
    """How an engine shares a PostgreSQL schema with other engines (`open_engine`).

    Attributes:
        worker: This engine's worker name; one engine per name at a time.
        lease: Seconds a family's lease lasts unless renewed.
        max_runs: How many runs this engine executes at once, None: no limit.
        poll_interval: Seconds between looks for free work, besides notifications.
        workflows: The workflows this engine runs (it claims only their runs).
    """

    worker: str = "default"
    lease: float = 15.0
    max_runs: int | None = None
    poll_interval: float = 1.0
    workflows: tuple[str, ...] = ()


class Claimed(Protocol):
    """Runs an engine sharing its store has just claimed (`SharedStore.start`, `claim_run`).

    Attributes:
        roots: The root run ids of the claimed families.
        records: The records of each claimed run, a list per run in `seq` order.
        block: The `seq` the fresh block for their new records starts after.
    """

    roots: list[str]
    records: list[list[Record]]
    block: int


@dataclass
class OpenRuns:
    """The unfinished runs an engine takes as it opens (`EngineStore.load_open_runs`).

    Attributes:
        records: The records of each run that may need to run at once, a list per
            run in `seq` order.
        parked: The state of each quiet parked run, a row of `OPEN_STATES` (see
            `ParkedRow`): sleeping or suspended, with nothing recorded that it must
            wake for (a signal, a child's end, a cancellation). Its history is read
            only when it wakes. Raw rows, because opening a file with 100,000 of
            them has no time for an object per row that is thrown away at once.
    """

    records: list[list[Record]]
    parked: list[ParkedRow]


@dataclass
class Marks:
    """How far an engine-wide watch has read the records other engines commit.

    Every block of `seq` is handed to one engine (or `replay` command), which numbers
    its records from it in commit order; so a block's committed records are always
    the block's first numbers, and reading "after the newest one read" in each block
    misses none.

    Attributes:
        read: Each block of another engine that may still get records: the newest
            `seq` of it read (the block itself: none yet).
        newest: The newest block handed out at the last look (any block above it is
            new, and read from its start).
        own: This engine's newest block at the last look (its records above that
            block were numbered after the look).
        at: The database's time at the last look.
    """

    read: dict[int, int]
    newest: int
    own: int
    at: datetime


@dataclass
class News:
    """What one look at other engines' records found (`SharedStore.records_after`).

    Attributes:
        records: The new records, in `seq` order (at most the limit asked for).
        marks: The marks after them.
        complete: False if the look came so long after the previous one that a block
            may have been forgotten unread (the watch must start afresh).
    """

    records: list[Record]
    marks: Marks
    complete: bool


class SharedStore(Protocol):
    """A store several engines share: leases, an inbox, `seq` in blocks (PostgreSQL)."""

    options: WorkerOptions

    def start(self, on_claim: Callable[[Claimed], None],
              on_messages: Callable[[list[tuple[Any, ...]]], None],
              busy: Callable[[], int], on_lost: Callable[[LeaseLost], None]) -> None:
        """Start claiming work and renewing leases in a thread of the store's own.

        `on_claim`, `on_messages` and `on_lost` (once, if a renewal finds that another
        engine took families this one holds) are called in that thread; `busy` says
        how many runs the engine executes now.
        """
        ...

    def taken(self) -> None:
        """Say that the last claim's runs are in the engine: the next claim may come."""
        ...

    def leave_free(self, run_id: str) -> None:
        """Commit the start of run `run_id` with its family free for any engine."""
        ...

    def has_room(self, busy: int) -> bool:
        """Whether an engine executing `busy` runs may take another."""
        ...

    def hold_purge(self) -> Callable[[], None]:
        """Wait until no other engine purges, and hold that; return the release (blocking)."""
        ...

    def claim_run(self, run_id: str) -> Claimed | None:
        """Claim run `run_id`'s family now if no engine holds it (blocking); else None."""
        ...

    def hand_back(self, roots: Sequence[str]) -> None:
        """Free families this engine holds (and has let go of), for others (blocking)."""
        ...

    def next_block(self) -> int:
        """Take a fresh block of `seq`; return the number it starts after (blocking)."""
        ...

    def send(self, run_id: str, action: str, key: str | None, payload: bytes | None,
             payload_json: str | None) -> None:
        """Queue a message for the engine that holds run `run_id` (blocking)."""
        ...

    def done(self, ids: Sequence[int]) -> None:
        """Say that inbox messages `ids` were delivered (deleted in the thread)."""
        ...

    def keep(self, ids: Sequence[int]) -> None:
        """Say that inbox messages `ids` were not delivered: fetch them again later."""
        ...

    def watch_marks(self) -> Marks:
        """Return marks at the newest record of every block of other engines (blocking)."""
        ...

    def records_after(self, marks: Marks, workflow: str | None, limit: int) -> News:
        """Return other engines' records after `marks` (of `workflow` only) (blocking)."""
        ...

    def histories(self, run_ids: Sequence[str]) -> dict[str, list[Record]]:
        """Return every record of each of `run_ids` that exists, in `seq` order (blocking)."""
        ...

    def unfinished_runs(self, skip: Sequence[str]) -> list[RunRow]:
        """Return every unfinished run of the store but `skip` (blocking)."""
        ...


class UserQuery(Protocol):
    """One read-only user query (`engine.sql`, `replay sql`); see `ReadQuery`.

    `start`, `fetch`, `rows` and `arrow` run in a worker thread, one at a time; `stop`
    and `close` may be called from any thread at any moment.
    """

    columns: tuple[str, ...]
    types: tuple[str, ...]

    def start(self) -> None:
        """Check the query and run it in a read-only transaction."""
        ...

    def fetch(self, size: int) -> list[tuple[Any, ...]]:
        """Return up to `size` more rows (an empty list at the end)."""
        ...

    def rows(self) -> list[tuple[Any, ...]]:
        """Start the query, return all its rows, and close it."""
        ...

    def arrow(self) -> Any:
        """Start the query, return its result as a ``pyarrow.Table``, and close it."""
        ...

    def stop(self, error: BaseException) -> None:
        """Stop the query: the call in flight, and every later one, raises `error`."""
        ...

    def wait_idle(self) -> None:
        """Return once no call of this query is in flight."""
        ...

    def close(self) -> None:
        """Let go of the query, now or when the call in flight ends."""
        ...


class EngineStore(Protocol):
    """An open database: history reads, user queries, and a group-commit writer.

    Reads are synchronous (the engine calls them in worker threads); `submit` and
    `submit_job` hand work to the store's writer thread and report back through
    callbacks on that thread.
    """

    path: str
    """The database as messages show it (a file path, or a URL without password)."""

    @property
    def sharing(self) -> SharedStore | None:
        """Leases and the inbox when engines share the database (PostgreSQL), else None."""
        ...

    def row(self, record: Record) -> tuple[Any, ...]:
        """Turn `record` into a row this store can commit, or raise if it cannot."""
        ...

    def load_open_runs(self) -> OpenRuns:
        """Return every unfinished run: the records of most, the state of quiet ones."""
        ...

    def run_row(self, run_id: str) -> RunRow | None:
        """Return one run's state, or None if there is no such run."""
        ...

    def last_seq_and_time(self) -> tuple[int, datetime | None]:
        """Return the largest `seq` and `recorded_at` in the database."""
        ...

    def generations(self) -> dict[str, int]:
        """Return the current generation of every run that has continued as new."""
        ...

    def workflow_of(self, run_id: str) -> str | None:
        """Return the workflow of run `run_id`, or None if there is no such run."""
        ...

    def existing(self, run_ids: Sequence[str]) -> set[str]:
        """Return which of `run_ids` have a run."""
        ...

    def list_runs(self, state: str | None, workflow: str | None, limit: int) -> list[RunRow]:
        """Return runs newest first, filtered by state and workflow."""
        ...

    def load_history(self, run_id: str) -> list[Record]:
        """Return every record of one run in `seq` order."""
        ...

    def memo_at_hand(self, run_id: str, workflow: str, most: int) -> RunHistory | None:
        """Return one run's memo if its rows are in memory (no read), at most `most`."""
        ...

    def fold_memo(self, run_id: str, workflow: str) -> RunHistory:
        """Return one run's memo, read and folded on the calling thread."""
        ...

    def fold_memos(self, runs: dict[str, str]) -> dict[str, RunHistory]:
        """Return several runs' memos (`runs`: run id to workflow), read together.

        Every run of `runs` has one: a run with no record gets an empty memo.
        """
        ...

    def purge_plan(self, cutoff: datetime, states: Sequence[str],
                   workflow: str | None) -> PurgePlan:
        """Return what a purge would delete now."""
        ...

    def write_archive(self, path: str, planned: PurgePlan) -> int:
        """Write the records `planned` deletes to a new Parquet file; return how many."""
        ...

    def delete_runs(self, con: Any, trees: Sequence[tuple[str, ...]], states: Sequence[str],
                    cutoff: datetime) -> tuple[set[str], int]:
        """On the writer's connection, delete the runs of `trees` still deletable."""
        ...

    def delete_generations(self, con: Any, batch: Sequence[GenerationRows],
                           cutoff: datetime) -> tuple[int, int]:
        """On the writer's connection, delete earlier generations still deletable."""
        ...

    def read_query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None,
                   limit: float | None = None) -> UserQuery:
        """Return one user query, not started yet, to stop after `limit` seconds."""
        ...

    def start_writer(self) -> None:
        """Start the thread that commits batches handed to `submit`."""
        ...

    def commit_now(self, rows: list[tuple[Any, ...]], wait: bool = False) -> bool:
        """Commit `rows` in one transaction on the calling thread if the writer is idle.

        Returns False, having done nothing, when it cannot (hand them to `submit`).
        `wait`: wait for the writer to be idle (asked only from a thread that may block,
        and only of a store that commits on other threads than its writer's).
        """
        ...

    def submit(self, rows: list[tuple[Any, ...]],
               done: Callable[[BaseException | None], None], lone: bool = False) -> None:
        """Commit `rows` in one transaction on the writer thread, then call `done`.

        `lone`: the batch is a lone run's (the store may write it as it writes small
        batches).
        """
        ...

    def submit_job(self, job: Callable[[Any], Any],
                   done: Callable[[Any, BaseException | None], None]) -> None:
        """Run `job(connection)` on the writer thread between two batches."""
        ...

    def close(self) -> None:
        """Stop user queries and the writer, and let go of the database."""
        ...
