"""Retention in SQL: which records a purge deletes, the deletes, and the archive.

Two kinds of records go. **Finished runs** whose newest state-carrying record (their
end) is older than the cutoff, each with its child runs: a child run goes only with its
parent (unless its parent no longer exists), and a parent only once every run under it
has finished. **Earlier generations** of runs that continued as new, once the
generation that replaced them started before the cutoff, minus what the run's state
still reads (see `generation_rows`): folding what is left gives the same mailbox,
arguments, code version, cancellation and status as folding everything.

Every delete checks again, in its own WHERE, that what it deletes is still deletable
(a run resumed since it was chosen is running again and stays), so a plan read
earlier on another cursor is only a list of candidates. Everything here is
synchronous; the engine runs the deletes on its writer thread.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb

from replay._store._connect import private_wal
from replay._store._hot import settle
from replay._types import PurgeReport

FINISHED = ("completed", "failed", "cancelled")

# Every run: its workflow, parent, state and when it reached that state (its end, once
# finished). A run with no `run/started` is no run.
_RUNS = """
    latest AS (
        SELECT run_id, arg_max(run_state, seq) AS state, arg_max(recorded_at, seq) AS ended_at
        FROM replay_event_all WHERE run_state IS NOT NULL GROUP BY run_id
    ), runs AS (
        SELECT s.run_id, s.workflow, s.name AS parent, l.state, l.ended_at
        FROM replay_event_all s JOIN latest l USING (run_id)
        WHERE s.kind = 'run' AND s.event = 'started'
    )"""

# Finished runs old enough, each with every run under it (parameters: the states, the
# cutoff, the workflow or NULL). A tree with an unfinished run in it is left out whole.
_TREES = f"""
    WITH RECURSIVE {_RUNS}, roots AS (
        SELECT run_id, ended_at FROM runs
        WHERE (parent IS NULL OR parent NOT IN (SELECT run_id FROM runs))
          AND state IN (SELECT unnest($1::VARCHAR[])) AND ended_at < $2
          AND ($3::VARCHAR IS NULL OR workflow = $3)
    ), tree(root, run_id) AS (
        SELECT run_id, run_id FROM roots
        UNION
        SELECT t.root, r.run_id FROM tree t JOIN runs r ON r.parent = t.run_id
    ), members AS (
        SELECT t.root, t.run_id, r.state FROM tree t JOIN runs r USING (run_id)
    )
    SELECT m.root, m.run_id FROM members m JOIN roots o ON o.run_id = m.root
    WHERE m.root NOT IN (SELECT root FROM members WHERE state NOT IN {FINISHED})
    ORDER BY o.ended_at, m.root, m.run_id <> m.root, m.run_id
"""

# Deletes the runs of a batch whose tree is still deletable (parameters: each member's
# root, the members, the states, the cutoff): every member still finished, the root
# still in one of the states and ended before the cutoff, and no child run started
# since the plan.
_DELETE_RUNS = f"""
    DELETE FROM replay_event_log WHERE run_id IN (
        WITH batch AS (
            SELECT unnest($1::VARCHAR[]) AS root, unnest($2::VARCHAR[]) AS run_id
        ), latest AS (
            SELECT run_id, arg_max(run_state, seq) AS state,
                   arg_max(recorded_at, seq) AS ended_at
            FROM replay_event_all
            WHERE run_state IS NOT NULL AND run_id IN (SELECT run_id FROM batch)
            GROUP BY run_id
        ), spoiled AS (
            SELECT b.root FROM batch b LEFT JOIN latest l USING (run_id)
            WHERE l.state IS NULL OR l.state NOT IN {FINISHED}
               OR (b.run_id = b.root AND (l.ended_at >= $4
                   OR l.state NOT IN (SELECT unnest($3::VARCHAR[]))))
            UNION ALL
            SELECT b.root FROM replay_event_all c JOIN batch b ON c.name = b.run_id
            WHERE c.kind = 'run' AND c.event = 'started'
              AND c.run_id NOT IN (SELECT run_id FROM batch)
        )
        SELECT run_id FROM batch WHERE root NOT IN (SELECT root FROM spoiled)
    ) RETURNING run_id
"""


def generation_rows(runs: str, cutoff: str = "$1") -> str:
    """The query of the deletable records of earlier generations.

    `runs` restricts it to some runs (a condition on `run_id`, or TRUE); `cutoff` is
    the placeholder of the cutoff time (PostgreSQL's store names it its way). It returns
    each record's `seq`, `run_id` and generation. What the run's state reads stays:

    - ``run/started``, the newest ``run/continued`` and the newest record that stamps
      a code version;
    - each signal still in the mailbox: one whose key no generation from its own up to
      the one before the current used (the fold drops a signal at the end of a
      generation that used its key);
    - the newest note, the run's status;
    - every earlier generation of a run whose cancellation was requested in one (its
      request, and where it was thrown in, decide whether it is still pending), or
      whose newest note is followed by a signal kept with the note's key (kept, the
      note's key would drop that signal from the mailbox at the next generation).
    """
    return f"""
    WITH gens AS (
        SELECT run_id, max(coalesce(generation, 0)) AS current,
               max(CASE WHEN kind = 'run' AND event = 'continued' AND recorded_at < {cutoff}
                        THEN generation END) AS purge_below
        FROM replay_event_all WHERE {runs} GROUP BY run_id
    ), rows AS (
        SELECT e.seq, e.run_id, e.kind, e.event, e.key, e.code_version,
               coalesce(e.generation, 0) AS g, gens.current, gens.purge_below
        FROM replay_event_all e JOIN gens USING (run_id)
        WHERE gens.purge_below > 0
    ), used AS (
        SELECT DISTINCT run_id, key, g FROM rows
        WHERE key IS NOT NULL AND kind NOT IN ('run', 'signal') AND event <> 'late'
    ), waiting AS (
        SELECT r.seq, r.run_id, r.key FROM rows r
        WHERE r.kind = 'signal' AND r.g < r.purge_below AND NOT EXISTS (
            SELECT 1 FROM used u WHERE u.run_id = r.run_id AND u.key = r.key
               AND u.g >= r.g AND u.g < r.current)
    ), newest AS (
        SELECT run_id, max(seq) FILTER (WHERE kind = 'note') AS note_seq,
               max(seq) FILTER (WHERE kind = 'run' AND code_version IS NOT NULL)
                   AS version_seq
        FROM rows GROUP BY run_id
    ), kept_whole AS (
        SELECT run_id FROM rows
        WHERE kind = 'run' AND event = 'cancel_requested' AND g < purge_below
        UNION
        SELECT r.run_id FROM newest n JOIN rows r ON r.seq = n.note_seq
        JOIN waiting w ON w.run_id = r.run_id AND w.key = r.key AND w.seq > r.seq
    )
    SELECT r.seq, r.run_id, r.g FROM rows r JOIN newest n USING (run_id)
    WHERE r.g < r.purge_below
      AND NOT EXISTS (SELECT 1 FROM kept_whole k WHERE k.run_id = r.run_id)
      AND NOT (r.kind = 'run' AND r.event = 'started')
      AND NOT (r.kind = 'run' AND r.event = 'continued' AND r.g = r.current)
      AND r.seq IS DISTINCT FROM n.version_seq AND r.seq IS DISTINCT FROM n.note_seq
      AND NOT EXISTS (SELECT 1 FROM waiting w WHERE w.seq = r.seq)
    """


_GENERATION_ROWS = generation_rows("TRUE")
_DELETE_GENERATION_ROWS = f"""
    DELETE FROM replay_event_log
    WHERE seq IN (SELECT unnest($2::BIGINT[])) AND seq IN (
        SELECT seq FROM ({generation_rows("run_id IN (SELECT unnest($3::VARCHAR[]))")}))
    RETURNING run_id, coalesce(generation, 0)
"""


@dataclass(frozen=True, slots=True)
class GenerationRows:
    """The deletable records of one run's earlier generations."""

    run_id: str
    seqs: tuple[int, ...]
    generations: int


@dataclass(slots=True)
class PurgePlan:
    """What a purge would delete, read at one moment.

    Attributes:
        trees: The finished runs to delete, each tree's root first, oldest end first.
        events: How many records those runs have.
        generations: The records of earlier generations to delete, by run.
    """

    trees: list[tuple[str, ...]] = field(default_factory=list)
    events: int = 0
    generations: list[GenerationRows] = field(default_factory=list)

    @property
    def runs(self) -> int:
        """How many runs the plan deletes."""
        return sum(len(tree) for tree in self.trees)

    @property
    def generation_events(self) -> int:
        """How many records of earlier generations the plan deletes."""
        return sum(len(rows.seqs) for rows in self.generations)

    @property
    def generation_count(self) -> int:
        """How many earlier generations the plan deletes records of."""
        return sum(rows.generations for rows in self.generations)


def plan(con: duckdb.DuckDBPyConnection, cutoff: datetime, states: Sequence[str],
         workflow: str | None) -> PurgePlan:
    """Read what a purge with these arguments would delete (one snapshot).

    `workflow` filters whole runs only: earlier generations of every run are deleted.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        pairs = con.execute(_TREES, [list(states), cutoff, workflow]).fetchall()
        trees: list[tuple[str, ...]] = []
        for root, run_id in pairs:
            if run_id == root:
                trees.append((root,))
            else:
                trees[-1] += (run_id,)
        run_ids = [run_id for _, run_id in pairs]
        events = con.execute("SELECT count(*) FROM replay_event_all "
                             "WHERE run_id IN (SELECT unnest($1::VARCHAR[]))",
                             [run_ids]).fetchall()[0][0] if run_ids else 0
        rows = con.execute(_GENERATION_ROWS + " ORDER BY r.run_id, r.seq", [cutoff]).fetchall()
    finally:
        con.execute("COMMIT")
    gone = set(run_ids)  # a run deleted whole needs no generation delete
    return PurgePlan(trees, int(events), by_run(rows, gone))


def by_run(rows: list[tuple[int, str, int]], gone: set[str]) -> list[GenerationRows]:
    found: dict[str, tuple[list[int], set[int]]] = {}
    for seq, run_id, generation in rows:
        if run_id not in gone:
            seqs, generations = found.setdefault(run_id, ([], set()))
            seqs.append(seq)
            generations.add(generation)
    return [GenerationRows(run_id, tuple(seqs), len(generations))
            for run_id, (seqs, generations) in found.items()]


def delete_runs(con: duckdb.DuckDBPyConnection, trees: Sequence[tuple[str, ...]],
                states: Sequence[str], cutoff: datetime) -> tuple[set[str], int]:
    """Delete the runs of `trees` that are still deletable, in one transaction.

    Returns:
        The run ids deleted, and how many records.
    """
    roots = [tree[0] for tree in trees for _ in tree]
    members = [run_id for tree in trees for run_id in tree]
    rows = _in_transaction(con, _DELETE_RUNS, [roots, members, list(states), cutoff])
    return {str(row[0]) for row in rows}, len(rows)


def delete_generations(con: duckdb.DuckDBPyConnection, batch: Sequence[GenerationRows],
                       cutoff: datetime) -> tuple[int, int]:
    """Delete the planned records of earlier generations still deletable (one transaction).

    Returns:
        How many generations lost records, and how many records were deleted.
    """
    seqs = [seq for rows in batch for seq in rows.seqs]
    run_ids = [rows.run_id for rows in batch]
    rows = _in_transaction(con, _DELETE_GENERATION_ROWS, [cutoff, seqs, run_ids])
    return len(set(rows)), len(rows)


def _in_transaction(con: duckdb.DuckDBPyConnection, sql: str, params: list[object]
                    ) -> list[tuple[object, ...]]:
    con.execute("BEGIN TRANSACTION")
    try:
        rows = con.execute(sql, params).fetchall()
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    return rows


def purge_file(con: duckdb.DuckDBPyConnection, path: str, cutoff: datetime,
               states: Sequence[str], workflow: str | None, archive_to: str | None,
               dry_run: bool, batch_runs: int) -> PurgeReport:
    """Purge a file no engine holds, as an engine's purge does, in the same batches.

    Raises:
        ValueError: `archive_to` exists or cannot be written (nothing is deleted).
        OSError: Writing the archive failed (nothing is deleted).
    """
    if archive_to is not None:
        check_archive_path(archive_to)
    planned = plan(con, cutoff, states, workflow)
    if dry_run:
        return PurgeReport(planned.runs, planned.events + planned.generation_events,
                           planned.generation_count, None, cutoff)
    if not (planned.trees or planned.generations):
        return PurgeReport(0, 0, 0, None, cutoff)
    private_wal(path)
    settle(con)  # the deletes work on the table alone
    if archive_to is not None:
        write_archive(con, archive_to, planned)
    runs = events = 0
    for start in range(0, len(planned.trees), batch_runs):
        private_wal(path)
        deleted, count = delete_runs(con, planned.trees[start:start + batch_runs], states,
                                     cutoff)
        runs, events = runs + len(deleted), events + count
    private_wal(path)
    generations, count = delete_generations(con, planned.generations, cutoff)
    return PurgeReport(runs, events + count, generations, archive_to, cutoff)


# -- the archive --


def check_archive_path(path: str) -> None:
    """Check that a new archive can be written at `path`, before anything is deleted.

    Raises:
        ValueError: Something exists at `path`, or its directory is missing or not
            writable.
    """
    if os.path.lexists(path):
        raise ValueError(f"archive_to {path!r} already exists; purge never overwrites a "
                         "file: pass a new path (or move the old archive away)")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=".replay-", dir=directory))
    except OSError as error:
        raise ValueError(f"archive_to {path!r} cannot be written: {error}; pass a path in "
                         "an existing directory you can write to") from None


def write_archive(con: duckdb.DuckDBPyConnection, path: str, planned: PurgePlan) -> int:
    """Write every record the plan deletes to one new Parquet file, owner-only.

    The columns are those of the ``replay_events`` view (see `write_parquet`).

    Returns:
        How many records were written.

    Raises:
        OSError: The file cannot be written (nothing was deleted).
    """
    run_ids = [run_id for tree in planned.trees for run_id in tree]
    seqs = [seq for rows in planned.generations for seq in rows.seqs]
    described = con.execute("DESCRIBE replay_events").fetchall()
    columns = ", ".join(f'"{row[0]}" {row[1]}' for row in described)
    con.execute("SELECT * FROM replay_events WHERE run_id IN (SELECT unnest($1::VARCHAR[])) "
                "OR seq IN (SELECT unnest($2::BIGINT[])) ORDER BY seq", [run_ids, seqs])
    return write_parquet(path, columns, iter(lambda: con.fetchmany(10_000), []))


def write_parquet(path: str, columns: str, batches: Iterator[list[tuple[Any, ...]]]) -> int:
    """Write rows to one new Parquet file, owner-only, fsynced; return how many.

    The rows go through a private in-memory database (the engine's connection has
    external access disabled), which writes the file into a fresh private directory;
    it is then linked into place, which fails rather than replace a file that
    appeared meanwhile.

    Args:
        path: The file to create.
        columns: The table's column definitions (``"name" TYPE, ...``).
        batches: The rows, a list at a time.

    Raises:
        OSError: The file cannot be written.
    """
    private = tempfile.mkdtemp(prefix=".replay-", dir=os.path.dirname(os.path.abspath(path)))
    out = duckdb.connect(":memory:")
    try:
        out.execute("SET TimeZone = 'UTC'")
        out.execute(f"CREATE TABLE archive ({columns})")
        count = 0
        with out.appender("archive") as appender:
            for rows in batches:
                appender.append_rows(rows)
                appender.flush()
                count += len(rows)
        written = os.path.join(private, "archive.parquet")
        out.execute(f"COPY archive TO '{_literal(written)}' (FORMAT parquet)")
        os.chmod(written, 0o600)
        fsync_path(written)  # the records are deleted right after
        os.link(written, path)
        fsync_path(os.path.dirname(os.path.abspath(path)))
        return count
    except duckdb.Error as error:
        raise OSError(f"cannot write the archive {path!r}: {error}") from error
    finally:
        out.close()
        shutil.rmtree(private, ignore_errors=True)


def _literal(text: str) -> str:
    return text.replace("'", "''")


def fsync_path(path: str) -> None:
    """Flush a file, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
