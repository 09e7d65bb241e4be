"""One engine's side of sharing a PostgreSQL schema: its leases, claims and inbox.

`Sharing` knows which families this engine holds and under which tokens. The writer
thread asks it what each batch changes in the lease tables (`plan`) and tells it what
committed (`committed`); a thread of its own (`_loop`) renews the leases every third
of their length, claims free and expired families while the engine has room, and
fetches inbox messages for the runs it holds, woken by ``LISTEN`` or the safety poll.
See `replay._pg._leases` for the protocol itself.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from replay._core._records import Record
from replay._errors import DatabaseError, LeaseLost
from replay._pg import _feed, _leases
from replay._pg._connect import connect
from replay._pg._leases import CHANNEL, CLAIM_BATCH, Batch, Claim
from replay._store import WorkerOptions
from replay._store._protocol import Marks, News
from replay._store._rows import RunRow

log = logging.getLogger("replay")
Connection = psycopg.Connection[Any]

# Row positions (`replay._store._schema.TABLE_COLUMNS`).
_RUN_ID, _WORKFLOW, _KIND, _EVENT, _NAME, _RUN_STATE = 1, 2, 4, 5, 14, 16
_ENDED = frozenset({"completed", "failed", "cancelled"})
_NO_TOKEN = -1  # a run this engine does not hold: its batch fails the fence
_ENDED_KEPT = 10_000
# Seconds between looks while free runs wait for room (no query without room).
BACKLOG_LOOK = 0.02


class Sharing:
    """The leases one engine holds on a shared schema, and the thread that keeps them.

    Args:
        url: The database URL (the thread opens a connection of its own).
        schema: The schema's name (notifications name it).
        options: The engine's worker options.
        con: An open autocommit connection, for the claim at open.
        read: Runs a function on a connection of the store's pool (`PgStore._read`).
        shown: The database as messages show it.
    """

    def __init__(self, url: str, schema: str, options: WorkerOptions, con: Connection,
                 read: Callable[..., Any], shown: str) -> None:
        self.options = options
        self.lost = False  # another engine took families this one held: it stops
        self._shown = shown
        self._on_lost: Callable[[LeaseLost], None] = lambda error: None
        self._read = read
        self._url = url
        self._schema = schema
        self._lock = threading.Lock()
        self._root: dict[str, str] = {}  # each member run this engine holds: its root
        self._token: dict[str, int] = {}  # each family this engine holds: its token
        self._free: set[str] = set()  # runs to start with their family free
        # Runs this engine ended lately: records may follow the end (late outcomes).
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._start_token = _leases.new_token(con)  # for families this engine starts
        self.opening = self._claim(con, own=True, limit=self._room(0))
        self.first_block = _leases.seq_block(con, self.options.worker)
        self._stop = threading.Event()
        self._taken = threading.Event()
        self._taken.set()
        self._inflight: set[int] = set()  # inbox messages handed over, not yet done
        # The last claim came back full, so more may be free (the claim at open: look).
        self._backlog = self.opening is not None
        self._thread: threading.Thread | None = None

    # -- what the writer asks --

    def plan(self, con: Connection, rows: Sequence[tuple[Any, ...]]) -> Batch:
        """Return what committing `rows` changes in the lease tables, and its fence."""
        batch = Batch()
        joined: dict[str, str] = {}  # runs this batch makes members: their roots
        with self._lock:
            for row in rows:
                run_id = row[_RUN_ID]
                if row[_KIND] == "run" and row[_EVENT] in ("started", "resumed") and \
                        not self._joins(con, batch, joined, row):
                    continue  # a family started free: not this engine's to fence
                root = self._root.get(run_id) or joined.get(run_id)
                if root is None and run_id in self._ended:
                    continue  # a record after its run's end (a late outcome): no lease
                batch.fence[root or run_id] = (
                    self._token.get(root, _NO_TOKEN) if root else _NO_TOKEN)
                if row[_RUN_STATE] in _ENDED:
                    batch.ended.append(run_id)
        return batch

    def _joins(self, con: Connection, batch: Batch, joined: dict[str, str],
               row: tuple[Any, ...]) -> bool:
        """Add a run's start (or the resume of a run no longer a member) to `batch`.

        Returns False for the start of a family left free.
        """
        run_id, parent = row[_RUN_ID], row[_NAME]
        if row[_EVENT] == "resumed":
            if run_id in self._root or run_id in joined:
                return True
            root = _leases.root_in_database(con, run_id)
            if root not in self._token:  # its family ended: it starts one of its own
                root = run_id
        elif parent is None:
            root = run_id
        else:
            root = self._root.get(parent) or joined.get(parent) or parent
        batch.members.append((run_id, root, row[_WORKFLOW]))
        joined[run_id] = root
        if root != run_id:
            return True
        if run_id in self._free:
            batch.leases.append((root, row[_WORKFLOW], None, 0))
            batch.free = True
            return False
        batch.leases.append((root, row[_WORKFLOW], self.options.worker, self._start_token))
        self._token.setdefault(root, self._start_token)
        return True

    def committed(self, batch: Batch) -> None:
        """Remember the members and families a committed batch added or ended."""
        with self._lock:
            for run_id, root, _ in batch.members:
                if run_id in self._free:
                    self._free.discard(run_id)
                    continue
                self._root[run_id] = root
            for run_id in batch.ended:
                self._root.pop(run_id, None)
                self._ended[run_id] = None
                if len(self._ended) > _ENDED_KEPT:
                    self._ended.popitem(last=False)
                if run_id in self._token and run_id not in self._root.values():
                    del self._token[run_id]

    # -- what the engine asks --

    def leave_free(self, run_id: str) -> None:
        """Commit the start of run `run_id` with its family free for any engine."""
        with self._lock:
            self._free.add(run_id)

    def has_room(self, busy: int) -> bool:
        """Whether an engine executing `busy` runs may take another."""
        return self._room(busy) > 0

    def _room(self, busy: int) -> int:
        limit = self.options.max_runs
        return CLAIM_BATCH if limit is None else max(0, min(CLAIM_BATCH, limit - busy))

    def next_block(self) -> int:
        """Take a fresh block of `seq`; return the number it starts after (one query)."""
        return int(self._read(_leases.seq_block, self.options.worker))

    def send(self, run_id: str, action: str, key: str | None, payload: bytes | None,
             payload_json: str | None) -> None:
        """Queue a message for the engine that holds run `run_id`, and wake engines."""
        self._read(_leases.send, run_id, action, key, payload, payload_json)

    def hold_purge(self) -> Callable[[], None]:
        """Wait until no other engine purges the schema, and hold that (blocking).

        Returns the function that lets go (a session lock on a connection of its own).
        """
        con = connect(self._url)
        try:
            con.execute(_leases.HOLD_PURGE)
        except BaseException:
            con.close()
            raise

        def release() -> None:
            with contextlib.suppress(psycopg.Error):
                con.execute(_leases.RELEASE_PURGE)
            con.close()

        return release

    def claim_run(self, run_id: str) -> Claim | None:
        """Claim run `run_id`'s family now if no engine holds it (blocking); else None."""
        claimed: Claim | None = self._read(self._claim, False, 0, run_id)
        return claimed

    def hand_back(self, roots: Sequence[str]) -> None:
        """Free families this engine holds, for another engine to claim (blocking).

        The engine must have let go of their runs, and have nothing of theirs left to
        commit: its later records for them would fail the fence.
        """
        with self._lock:  # first, so that a renewal does not take the free lease as lost
            for root in roots:
                self._token.pop(root, None)
            freed = set(roots)
            for run_id in [run for run, root in self._root.items() if root in freed]:
                del self._root[run_id]
        self._read(_leases.hand_back, self.options.worker, roots)

    def done(self, ids: Sequence[int]) -> None:
        """Delete inbox messages `ids`, delivered (blocking: one statement)."""
        self._read(_leases.done, ids)
        self._not_in_flight(ids)

    # -- what engine-wide watches read (`replay._pg._feed`) --

    def watch_marks(self) -> Marks:
        """Return marks at the newest record of every live block of other engines."""
        marks: Marks = self._read(_feed.watch_marks, self.options)
        return marks

    def records_after(self, marks: Marks, workflow: str | None, limit: int) -> News:
        """Return other engines' records after `marks` (of `workflow` only), in `seq` order.

        At most `limit` records; the marks returned are past all of them, and past
        any beyond the limit too (the caller counts those as missed).
        """
        news: News = self._read(_feed.records_after, marks, self.options, workflow, limit)
        return news

    def histories(self, run_ids: Sequence[str]) -> dict[str, list[Record]]:
        """Return every record of each of `run_ids` that exists, in `seq` order."""
        found: dict[str, list[Record]] = self._read(_feed.histories, run_ids)
        return found

    def unfinished_runs(self, skip: Sequence[str]) -> list[RunRow]:
        """Return every unfinished run of the schema but `skip` (one query)."""
        rows: list[RunRow] = self._read(_feed.unfinished_runs, skip, self._shown)
        return rows

    def keep(self, ids: Sequence[int]) -> None:
        """Hand inbox messages `ids` over again at a later fetch (not delivered)."""
        self._not_in_flight(ids)

    def _not_in_flight(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._inflight.difference_update(ids)

    def taken(self) -> None:
        """Say that the last claim's runs are in the engine: the next claim may come."""
        self._taken.set()

    # -- the thread --

    def start(self, on_claim: Callable[[Claim], None],
              on_messages: Callable[[list[tuple[Any, ...]]], None],
              busy: Callable[[], int], on_lost: Callable[[LeaseLost], None]) -> None:
        """Start renewing, claiming and fetching messages in a thread of its own.

        `on_lost` is called once if a renewal finds that another engine has taken
        families this one holds (it then claims nothing more).
        """
        self._on_lost = on_lost
        self._thread = threading.Thread(
            target=self._run, args=(on_claim, on_messages, busy),
            name="replay-pg-leases", daemon=True)
        self._thread.start()

    def _run(self, on_claim: Callable[[Claim], None],
             on_messages: Callable[[list[tuple[Any, ...]]], None],
             busy: Callable[[], int]) -> None:
        con: Connection | None = None
        renew_every = self.options.lease / 3
        renewed = looked = time.monotonic()
        notified = True
        while not self._stop.is_set():
            try:
                if con is None or con.closed or con.broken:
                    con, notified = self._listening(), True
                if time.monotonic() - renewed >= renew_every:
                    self._renew(con)
                    renewed = time.monotonic()
                if notified or time.monotonic() - looked >= self.options.poll_interval:
                    self._claim_all(con, on_claim, busy)
                    self._fetch_messages(con, on_messages)
                    looked = time.monotonic()
                elif self._backlog:
                    self._claim_all(con, on_claim, busy)
                # While free runs wait (the last claim came back full), look again as
                # soon as the engine has taken the claim and has room.
                wait = BACKLOG_LOOK if self._backlog else min(
                    self.options.poll_interval,
                    max(0.0, renewed + renew_every - time.monotonic()))
                notified = any(True for _ in con.notifies(timeout=wait, stop_after=1))
            except (psycopg.Error, DatabaseError) as error:
                log.warning("replay: cannot reach %s to renew leases and claim work "
                            "(%s); trying again", self._schema, error)
                if con is not None:
                    con.close()
                con = None
                self._stop.wait(min(1.0, self.options.poll_interval))
        if con is not None:
            con.close()

    def _renew(self, con: Connection) -> None:
        """Renew every lease, and stop the engine if another engine took one meanwhile.

        Without this look, an engine that was paused past its lease would learn it at
        its next commit, and a long step could go on running in two places meanwhile.
        """
        with self._lock:
            held = dict(self._token)
        _leases.renew(con, self.options.worker, self.options.lease, list(held))
        if self.lost:
            return
        taken = _leases.taken(con, self.options.worker, held)
        with self._lock:  # a family claimed again since the look has a new token
            taken = [root for root in taken if self._token.get(root) == held[root]]
        if taken:
            self.lost = True
            self._on_lost(lease_lost(self.options, self._shown, len(taken)))

    def _listening(self) -> Connection:
        con = connect(self._url)
        con.autocommit = True
        con.execute(f"LISTEN {CHANNEL}")
        return con

    def _claim_all(self, con: Connection, on_claim: Callable[[Claim], None],
                   busy: Callable[[], int]) -> None:
        """Claim as much as the engine has room for, one claim at a time."""
        while not self.lost and self._taken.is_set() and (room := self._room(busy())) > 0:
            claimed = self._claim(con, own=False, limit=room)
            self._backlog = claimed is not None and len(claimed.roots) >= room
            if claimed is None:
                return
            self._taken.clear()
            on_claim(claimed)

    def _fetch_messages(self, con: Connection,
                        on_messages: Callable[[list[tuple[Any, ...]]], None]) -> None:
        with self._lock:
            inflight = list(self._inflight)
        messages = _leases.inbox(con, self.options.worker, inflight)
        if messages:
            with self._lock:
                self._inflight.update(message[0] for message in messages)
            on_messages(messages)

    def _claim(self, con: Connection, own: bool, limit: int,
               run_id: str | None = None) -> Claim | None:
        with self._lock:
            held = list(self._token)
        claimed = _leases.claim(con, self.options.worker, self.options.workflows,
                                self.options.lease, limit, own=own, run_id=run_id,
                                held=held)
        if claimed is not None:
            with self._lock:
                self._root.update(claimed.members)
                self._token.update(dict.fromkeys(claimed.roots, claimed.token))
        return claimed

    def close(self, con: Connection) -> None:
        """Stop the thread, and free this engine's leases for others to claim at once.

        `con` is the writer's connection, after its last batch.
        """
        self._stop.set()
        with contextlib.suppress(psycopg.Error):
            con.rollback()
            con.autocommit = True
            _leases.wake(con)  # the thread waits for a notification: not a whole poll
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(psycopg.Error):
            _leases.release(con, self.options.worker)


def lease_lost(options: WorkerOptions, shown: str, families: int | None = None) -> LeaseLost:
    """Return the error of an engine that lost leases (`families` found by a renewal).

    Without `families`, a commit found it, and nothing of that batch was written.
    """
    what = ("the lease of a run it executes" if families is None
            else f"the leases of {families} run famil{'y' if families == 1 else 'ies'} "
                 "it executes")
    then = ("Nothing of its last batch was written, and it stopped" if families is None
            else "It records nothing more for them, and it stopped")
    return LeaseLost(
        f"this engine (worker {options.worker!r}) lost {what} on {shown!r} to another "
        f"engine, which took the run over: it did not renew its leases within "
        f"lease={options.lease} s (it was paused, or cut off from the server). {then}; "
        "restart it, and give it a longer lease if it pauses that long")
