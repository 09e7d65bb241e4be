"""Retention: `Engine.purge` and the periodic purge of ``open_engine(retention=...)``.

A purge reads its plan on a reader cursor in a worker thread (`replay._store._purge`:
which finished runs, with their children, and which records of earlier generations),
writes the archive if asked (another worker thread), then deletes in batches of
`BATCH_RUNS` runs, each one transaction on the store's writer thread between two
group commits: the engine keeps serving, and other runs commit between batches.

Runs being deleted must not be used meanwhile. Before its batch is handed to the
writer, each tree of runs is held in the `RunTable` (`hold_for_purge`), unless one of
its runs is in use right now (read from the file, unfinished, or owned by a task: a
`resume` under way); a held run makes `adopt`, through which every call on a run from
outside goes, wait until the batch is done. So a `resume` (or a signal, a cancel)
either took the run before the purge held it (the purge leaves its tree alone, and the
delete's own check would spare it anyway), or finds it deleted (`RunNotFound`).
Records of earlier generations need no hold: a run only ever adds records to its
current generation, which a purge never deletes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from replay._checks import checked_duration, shown
from replay._engine._clock import busy_thread, in_thread
from replay._errors import DatabaseError, EngineClosed, ReplayError
from replay._store import (
    FINISHED,
    EngineStore,
    GenerationRows,
    PurgePlan,
    check_archive_path,
)
from replay._types import PurgeReport, RunState
from replay._workflows import workflow_name

if TYPE_CHECKING:
    from replay._engine._scheduler import Scheduler

log = logging.getLogger("replay")
T = TypeVar("T")

DEFAULT_OLDER_THAN = timedelta(days=30)
DEFAULT_STATES = FINISHED
# Runs per delete (a tree of child runs is never split); records of earlier generations
# per delete.
BATCH_RUNS = 1000
BATCH_RECORDS = 20_000
# The periodic purge of `open_engine(retention=...)`: first shortly after the engine
# opens (not during recovery), then every hour, on the engine clock.
FIRST_PURGE_SECONDS = 60.0
PURGE_PERIOD_SECONDS = 3600.0

_SIG = "engine.purge"
Progress = Callable[[PurgeReport], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PurgeRequest:
    """What to purge, checked (see `checked_request`)."""

    older_than: timedelta = DEFAULT_OLDER_THAN
    states: tuple[str, ...] = DEFAULT_STATES
    workflow: str | None = None
    archive_to: str | None = None


def checked_request(older_than: object = DEFAULT_OLDER_THAN,
                    states: object = DEFAULT_STATES, workflow: object = None,
                    archive_to: object = None) -> PurgeRequest:
    """Check `Engine.purge`'s arguments.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: `older_than` is negative, or `states` is empty or names a state
            that is not a finished one.
    """
    duration = checked_duration(f"{_SIG}(older_than=...)", "older_than", older_than,
                                positive=False)
    return PurgeRequest(duration, checked_states(states), _checked_workflow(workflow),
                        _checked_archive(archive_to))


def checked_states(states: object) -> tuple[str, ...]:
    """Return the finished states `states` names, in order, without repeats.

    Raises:
        TypeError: `states` is a single string or not an iterable of strings.
        ValueError: It is empty, or names an unknown or unfinished state.
    """
    sig = f"{_SIG}(states=...)"
    if isinstance(states, str) or not isinstance(states, Iterable):
        hint = f"; pass ({states!r},)" if isinstance(states, str) else ""
        raise TypeError(f"{sig}: states must be a tuple of state names such as "
                        f"('completed', 'failed'), got {shown(states)}{hint}")
    chosen: list[str] = []
    for state in states:
        if not isinstance(state, str):
            raise TypeError(f"{sig}: each state must be a state name (str), got {shown(state)}")
        if state not in {s.value for s in RunState}:
            raise ValueError(f"{sig}: unknown run state {state!r}; purge deletes finished "
                             f"runs: pass any of {', '.join(FINISHED)}")
        if state not in FINISHED:
            raise ValueError(f"{sig}: {state!r} is not a finished state, and purge never "
                             f"deletes a run that has not finished; pass any of "
                             f"{', '.join(FINISHED)}")
        if str(state) not in chosen:
            chosen.append(str(state))
    if not chosen:
        raise ValueError(f"{sig}: states is empty; pass at least one of {', '.join(FINISHED)}")
    return tuple(chosen)


def _checked_workflow(workflow: object) -> str | None:
    """A workflow's name: a function (registered here or not) or the name itself."""
    if workflow is None or (isinstance(workflow, str) and workflow):
        return workflow
    if isinstance(workflow, str):
        raise ValueError(f"{_SIG}(workflow=...): workflow must be a non-empty name or None")
    if callable(workflow):
        return workflow_name(workflow)
    raise TypeError(f"{_SIG}(workflow=...): workflow must be a workflow function, its "
                    f"name or None, got {shown(workflow)}")


def _checked_archive(archive_to: object) -> str | None:
    if archive_to is None or isinstance(archive_to, str):
        return archive_to
    if isinstance(archive_to, os.PathLike):
        return str(os.fspath(archive_to))
    raise TypeError(f"{_SIG}(archive_to=...): archive_to must be a path (str or "
                    f"pathlib.Path) or None, got {shown(archive_to)}")


class Retention:
    """Purges one engine's file.

    Args:
        scheduler: The engine's scheduler (its clock and its runs in memory).
        store: The engine's store.
    """

    def __init__(self, scheduler: Scheduler, store: EngineStore) -> None:
        self._scheduler = scheduler
        self._store = store

    async def purge(self, request: PurgeRequest, *, dry_run: bool = False,
                    progress: Progress | None = None) -> PurgeReport:
        """Purge what `request` asks for; with `dry_run`, only count it.

        `progress` is told the totals so far after each batch.

        Raises:
            ValueError: The archive cannot be written where asked (nothing is deleted).
            OSError: Writing the archive failed (nothing is deleted).
            DatabaseError: A delete failed (the batches before it stay deleted).
            EngineClosed: The engine is closed, or began to close before a batch.
        """
        scheduler = self._scheduler
        scheduler.check_open()
        cutoff = scheduler.clock.now() - request.older_than
        archive = request.archive_to
        if archive is not None:
            await in_thread(check_archive_path, archive)
        sharing = self._store.sharing
        if dry_run or sharing is None:
            return await self._purge(request, cutoff, dry_run, progress)
        # Engines sharing a store purge one at a time: two at once would plan, and
        # archive, the same runs.
        release = await in_thread(sharing.hold_purge)
        try:
            return await self._purge(request, cutoff, dry_run, progress)
        finally:
            with trio.CancelScope(shield=True):
                await in_thread(release)

    async def _purge(self, request: PurgeRequest, cutoff: datetime, dry_run: bool,
                     progress: Progress | None) -> PurgeReport:
        archive = request.archive_to
        planned = await in_thread(self._store.purge_plan, cutoff, request.states,
                                  request.workflow)
        if dry_run:
            return PurgeReport(planned.runs, planned.events + planned.generation_events,
                               planned.generation_count, None, cutoff)
        if archive is not None and (planned.trees or planned.generations):
            await in_thread(self._store.write_archive, archive, planned)
        else:
            archive = None
        totals = _Totals(archive, cutoff)
        await self._delete_runs(planned, request.states, totals, progress)
        await self._delete_generations(planned.generations, totals, progress)
        return totals.report()

    async def service(self, retention: timedelta,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Purge finished runs older than `retention` periodically, until cancelled.

        A purge that fails is logged and tried again at the next period: it never
        stops the engine.
        """
        task_status.started()
        await trio.sleep(FIRST_PURGE_SECONDS)
        while True:
            if not self._scheduler.closing:
                await self._purge_logged(PurgeRequest(older_than=retention))
            await trio.sleep(PURGE_PERIOD_SECONDS)

    async def _purge_logged(self, request: PurgeRequest) -> None:
        try:
            report = await self.purge(request)
        except EngineClosed:
            return
        except (ReplayError, OSError) as error:
            log.warning("the periodic purge (retention=%s) failed: %s; it runs again in "
                        "%g s", request.older_than, error, PURGE_PERIOD_SECONDS)
            return
        if report.runs_purged or report.events_deleted:
            log.info("purged %s", described(report))

    async def _delete_runs(self, planned: PurgePlan, states: Sequence[str], totals: _Totals,
                           progress: Progress | None) -> None:
        runs = self._scheduler.runs
        for batch in _batches(planned.trees, len, BATCH_RUNS):
            self._scheduler.check_open()
            held: dict[str, Any] = {}
            chosen = []
            for tree in batch:
                slots = runs.hold_for_purge(tree)
                if slots is not None:  # else in use: left alone
                    held.update(slots)
                    chosen.append(tree)
            deleted: set[str] = set()
            try:
                if chosen:
                    deleted, events = await self._on_writer(self._store.delete_runs, chosen, states,
                                                            totals.cutoff)
                    totals.runs += len(deleted)
                    totals.events += events
            finally:
                runs.release_purged(held, deleted)
            if progress is not None:
                await progress(totals.report())

    async def _delete_generations(self, planned: list[GenerationRows], totals: _Totals,
                                  progress: Progress | None) -> None:
        for batch in _batches(planned, lambda rows: len(rows.seqs), BATCH_RECORDS):
            self._scheduler.check_open()
            generations, events = await self._on_writer(self._store.delete_generations, batch,
                                                        totals.cutoff)
            totals.generations += generations
            totals.events += events
            if progress is not None:
                await progress(totals.report())

    async def _on_writer(self, job: Callable[..., T], *args: Any) -> T:
        """Run `job(cursor, *args)` on the writer thread and return its result.

        Raises:
            DatabaseError: The job failed (its transaction was rolled back).
        """
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()
        outcome: list[tuple[Any, BaseException | None]] = []

        def done(result: Any, error: BaseException | None) -> None:
            outcome.append((result, error))
            token.run_sync_soon(finished.set)

        with busy_thread():
            self._store.submit_job(lambda cursor: job(cursor, *args), done)
            with trio.CancelScope(shield=True):
                # A delete cannot be taken back once handed over: wait for its end.
                await finished.wait()
        result, error = outcome[0]
        if error is not None:
            raise DatabaseError(
                f"purging {self._store.path!r} failed: {error}; that batch deleted nothing "
                "(the batches before it stay deleted) and the engine goes on; fix the "
                "cause and purge again") from error
        return result  # type: ignore[no-any-return]


def described(report: PurgeReport) -> str:
    """Say what a purge deleted (or would): runs, generations, events, the cutoff."""
    what = _counted(report.runs_purged, "finished run")
    if report.generations_purged:
        what += (f" and {_counted(report.generations_purged, 'earlier generation')} of "
                 "runs that continued as new")
    when = report.cutoff.isoformat(timespec="seconds")
    return f"{what} ({_counted(report.events_deleted, 'event')}) from before {when}"


def _counted(count: int, thing: str) -> str:
    return f"{count} {thing}" if count == 1 else f"{count} {thing}s"


@dataclass(slots=True)
class _Totals:
    """What a purge has deleted so far."""

    archive: str | None
    cutoff: datetime
    runs: int = 0
    events: int = 0
    generations: int = 0

    def report(self) -> PurgeReport:
        return PurgeReport(self.runs, self.events, self.generations, self.archive, self.cutoff)


def _batches(items: Sequence[T], size: Callable[[T], int], limit: int) -> Iterator[list[T]]:
    """Split `items` into consecutive batches of at most `limit` (by `size`; one at least)."""
    batch: list[T] = []
    total = 0
    for item in items:
        if batch and total + size(item) > limit:
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += size(item)
    if batch:
        yield batch
