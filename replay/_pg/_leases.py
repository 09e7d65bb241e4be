"""Leases: which engine executes which runs when several share one PostgreSQL schema.

Every unfinished run is a member of a family (`replay_member`: a root run and its
children, which always execute together), and each family has one lease
(`replay_lease`): the worker that holds it, a fencing token, and when it expires. An
engine renews all its leases in one statement; an engine that stops renewing (killed,
paused, cut off) loses its families when they expire, and another engine claims them
with ``FOR UPDATE SKIP LOCKED`` under a new token. Every batch an engine commits is
inserted by one statement that counts, under ``FOR SHARE`` locks, the leases of the
batch's families that still carry this engine's tokens: if one was taken, nothing of
the batch is written. So an engine that lost a lease may still run a step, but can
never record it.

Records are numbered from blocks of `SEQ_BLOCK` taken from a sequence, and an engine
takes a fresh block after each claim: a block is above every block handed out
before, so a run's records keep ascending when it moves to another engine.

The functions take a connection and let `psycopg.Error` through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from replay._core._records import Record
from replay._pg._schema import LOG_COLUMNS, PRUNE_BLOCKS, block_kept
from replay._pg._sql import COLUMNS
from replay._store._rows import row_record

Connection = psycopg.Connection[Any]

# The channel engines LISTEN on (payload: the schema): new free runs, inbox messages.
CHANNEL = "replay_work"
# How many families one claim takes at most (claims repeat while they come back full).
CLAIM_BATCH = 50

# A batch is one statement: its rows, passed as one array per column, are inserted only
# if the count of its families' leases that still carry this engine's owner and tokens
# (locked FOR SHARE until the commit, so no claim takes them meanwhile) is all of them.
_UNNESTED = ", ".join(f"%s::{'text' if kind == 'json' else kind}[]"
                      for _, kind in LOG_COLUMNS)
_SELECTED = ", ".join(f"c{n}::json" if kind == "json" else f"c{n}"
                      for n, (_, kind) in enumerate(LOG_COLUMNS))
_FENCED_INSERT = f"""
    INSERT INTO replay_event_log ({", ".join(name for name, _ in LOG_COLUMNS)})
    SELECT {_SELECTED} FROM unnest({_UNNESTED})
        AS batch({", ".join(f"c{n}" for n in range(len(LOG_COLUMNS)))})
    WHERE (SELECT count(*) FROM (
        SELECT 1 FROM replay_lease
        WHERE owner = %s AND (root_id, token) IN (
            SELECT * FROM unnest(%s::text[], %s::bigint[]))
        FOR SHARE) held) = %s
"""
_NEW_LEASES = """
    INSERT INTO replay_lease (root_id, workflow, owner, token, expires_at)
    SELECT root_id, workflow, owner, token, now() + %s * interval '1 second'
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[])
        AS n(root_id, workflow, owner, token)
    ON CONFLICT (root_id) DO NOTHING
"""
_NEW_MEMBERS = """
    INSERT INTO replay_member SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])
    ON CONFLICT (run_id) DO UPDATE SET root_id = excluded.root_id
"""
_ENDED_MEMBERS = "DELETE FROM replay_member WHERE run_id = ANY(%s::text[])"
_ENDED_LEASES = """
    DELETE FROM replay_lease l WHERE root_id = ANY(%s::text[])
    AND NOT EXISTS (SELECT 1 FROM replay_member m WHERE m.root_id = l.root_id)
"""
_PARENT = ("SELECT name FROM replay_event_log "
           "WHERE run_id = %s AND kind = 'run' AND event = 'started' LIMIT 1")
_ROOT_OF = "SELECT root_id FROM replay_member WHERE run_id = %s"
# One purge at a time per schema (session locks, on a connection of the purge's own).
HOLD_PURGE = "SELECT pg_advisory_lock(hashtext('replay-purge:' || current_schema()))"
RELEASE_PURGE = "SELECT pg_advisory_unlock(hashtext('replay-purge:' || current_schema()))"
_NOTIFY = "SELECT pg_notify(%s, current_schema())"

# Take back this worker's own families (a restart under the same name), new token.
_RECLAIM = """
    UPDATE replay_lease SET token = %s, expires_at = now() + %s * interval '1 second'
    WHERE owner = %s RETURNING root_id
"""
# Claim free families, and families whose lease expired, with a run of a workflow this
# engine runs: first those whose root it runs (it runs what it can of the others, as an
# engine does at open, and leaves the rest as it is). An expired family in this
# engine's name that it does not hold (`held`) is one it owns without knowing: it too.
_EXPIRED = """(owner IS NULL OR (expires_at < now() AND (
    owner <> %(me)s OR NOT (root_id = ANY(%(held)s::text[])))))"""
_CLAIM = f"""
    WITH free AS (
        SELECT root_id FROM replay_lease l
        WHERE {_EXPIRED}
          AND EXISTS (SELECT 1 FROM replay_member m WHERE m.root_id = l.root_id
                      AND m.workflow = ANY(%(workflows)s::text[]))
        ORDER BY workflow = ANY(%(workflows)s::text[]) DESC, expires_at
        LIMIT %(limit)s FOR UPDATE SKIP LOCKED
    )
    UPDATE replay_lease l SET owner = %(me)s, token = %(token)s,
        expires_at = now() + %(lease)s * interval '1 second'
    FROM free WHERE l.root_id = free.root_id RETURNING l.root_id
"""
# Claim the family of one run, if it is free or its lease expired (whatever its
# workflows: an engine that runs none of them hands it back after the call it claimed
# it for, `hand_back`).
_CLAIM_RUN = f"""
    WITH free AS (
        SELECT root_id FROM replay_lease l JOIN replay_member m USING (root_id)
        WHERE m.run_id = %(run_id)s AND {_EXPIRED}
        FOR UPDATE OF l SKIP LOCKED
    )
    UPDATE replay_lease l SET owner = %(me)s, token = %(token)s,
        expires_at = now() + %(lease)s * interval '1 second'
    FROM free WHERE l.root_id = free.root_id RETURNING l.root_id
"""
# Only the families the engine knows it holds: one it owns without knowing (a claim
# whose commit went through while its connection broke) expires, for another to take.
_RENEW = ("UPDATE replay_lease SET expires_at = now() + %s * interval '1 second' "
          "WHERE owner = %s AND root_id = ANY(%s::text[])")
# The families among those an engine holds (root, token) that another engine has
# claimed since: a lease row with another owner or token (a family whose row is gone has
# ended, or its start is not committed yet: neither is lost).
_TAKEN = """
    SELECT l.root_id FROM replay_lease l
    JOIN unnest(%s::text[], %s::bigint[]) AS held(root_id, token) USING (root_id)
    WHERE l.owner IS DISTINCT FROM %s OR l.token <> held.token
"""
# Messages for runs that ended before their message came (nobody will deliver them).
_ORPHANS = """
    DELETE FROM replay_inbox i WHERE sent_at < now() - interval '1 minute'
    AND NOT EXISTS (SELECT 1 FROM replay_member m WHERE m.run_id = i.run_id)
"""
_RELEASE = "UPDATE replay_lease SET owner = NULL, expires_at = now() WHERE owner = %s"
_HAND_BACK = ("UPDATE replay_lease SET owner = NULL, expires_at = now() "
              "WHERE owner = %s AND root_id = ANY(%s::text[])")
_MEMBERS = "SELECT run_id, root_id FROM replay_member WHERE root_id = ANY(%s::text[])"

_FAMILY_ROWS = (f"SELECT {COLUMNS} FROM replay_event_all WHERE run_id IN "
                "(SELECT run_id FROM replay_member WHERE root_id = ANY(%s::text[])) "
                "ORDER BY run_id, seq")
_INBOX = """
    SELECT i.id, i.run_id, i.action, i.key, i.payload, i.payload_json
    FROM replay_inbox i JOIN replay_member m USING (run_id)
    JOIN replay_lease l USING (root_id)
    WHERE l.owner = %s AND NOT (i.id = ANY(%s::bigint[])) ORDER BY i.id LIMIT 100
"""
_SEND = ("INSERT INTO replay_inbox (run_id, action, key, payload, payload_json) "
         "VALUES (%s, %s, %s, %s, %s)")
_DONE = "DELETE FROM replay_inbox WHERE id = ANY(%s::bigint[])"


@dataclass
class Batch:
    """What a batch changes in the lease tables, besides its records.

    Attributes:
        fence: The families the batch writes, with the token each must still carry.
        leases: New families: (root id, workflow, owner or None, token).
        members: New members: (run id, root id, workflow).
        ended: Runs that finished in the batch.
        free: Whether the batch starts a family no engine holds (others are told).
    """

    fence: dict[str, int] = field(default_factory=dict)
    leases: list[tuple[str, str, str | None, int]] = field(default_factory=list)
    members: list[tuple[str, str, str]] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    free: bool = False


def write_fenced(con: Connection, batch: Batch, rows: Sequence[tuple[Any, ...]],
                 owner: str, lease: float) -> bool:
    """Insert `rows` (in `LOG_COLUMNS` order) if every family's lease is still held.

    Called inside the batch's transaction. Returns False (the caller rolls back) if
    a lease was lost.
    """
    if batch.leases:
        con.execute(_NEW_LEASES, [lease, *map(list, zip(*batch.leases, strict=True))])
    if batch.members:
        con.execute(_NEW_MEMBERS, [*map(list, zip(*batch.members, strict=True))])
    roots, tokens = list(batch.fence), list(batch.fence.values())
    columns = [list(column) for column in zip(*rows, strict=True)]
    inserted = con.execute(_FENCED_INSERT,
                           [*columns, owner, roots, tokens, len(roots)]).rowcount
    if inserted != len(rows):
        return False
    if batch.ended:
        con.execute(_ENDED_MEMBERS, [batch.ended])
        con.execute(_ENDED_LEASES, [list({*batch.fence})])
    if batch.free:
        con.execute(_NOTIFY, [CHANNEL])
    return True


def root_in_database(con: Connection, run_id: str) -> str:
    """Return the root of `run_id`'s family, by its members or its parents' starts."""
    found = con.execute(_ROOT_OF, [run_id]).fetchone()
    if found is not None:
        return str(found[0])
    while (parent := con.execute(_PARENT, [run_id]).fetchone()) and parent[0]:
        run_id = str(parent[0])
    return run_id


def seq_block(con: Connection, worker: str = "replay command") -> int:
    """Take a fresh block of `SEQ_BLOCK` numbers, above every earlier one, for `worker`.

    Returns the number the block starts after: its numbers are the next `SEQ_BLOCK`
    (the first block, 1 to 10,000, as one engine numbers a file). The block is
    recorded in `replay_block` (committed before any record is numbered from it, on
    an autocommit connection), where engine-wide watches find it.
    """
    found = con.execute("INSERT INTO replay_block (block, worker) "
                        "VALUES (nextval('replay_seq_block'), %s) RETURNING block",
                        [worker]).fetchone()
    assert found is not None
    return int(found[0])


def new_token(con: Connection) -> int:
    """Return a fencing token no lease has had."""
    found = con.execute("SELECT nextval('replay_lease_token')").fetchone()
    assert found is not None
    return int(found[0])


@dataclass
class Claim:
    """Families an engine has just claimed, with everything needed to run them.

    Attributes:
        token: The fencing token of all of them.
        roots: The families' root run ids.
        members: Each member run's root.
        records: The records of each member run, a list per run in `seq` order.
        block: The `seq` the fresh block to number their new records from starts after.
    """

    token: int
    roots: list[str]
    members: dict[str, str]
    records: list[list[Record]]
    block: int


def claim(con: Connection, owner: str, workflows: Sequence[str], lease: float,
          limit: int, own: bool = False, run_id: str | None = None,
          held: Sequence[str] = ()) -> Claim | None:
    """Claim up to `limit` free or expired families (with `own`: this worker's as well).

    `held` are the families the engine holds: an expired one in its name that is not
    among them is claimed like any other.

    With `run_id`, claim only that run's family, if it is free or expired. Loads the
    families' records and takes a fresh block in the claim's transaction: a claim cut
    off before its end leaves no family owned by an engine that never got it. Returns
    None if there was nothing to claim.
    """
    with con.transaction():
        token = new_token(con)
        roots = [row[0] for row in con.execute(_RECLAIM, [token, lease, owner])] if own else []
        if run_id is not None:
            roots += [row[0] for row in con.execute(_CLAIM_RUN, {
                "me": owner, "run_id": run_id, "token": token, "lease": lease,
                "held": list(held)})]
        elif limit > 0:
            roots += [row[0] for row in con.execute(_CLAIM, {
                "me": owner, "workflows": list(workflows), "limit": limit,
                "token": token, "lease": lease, "held": list(held)})]
        if not roots:
            return None
        members = dict(con.execute(_MEMBERS, [roots]).fetchall())
        runs: dict[str, list[Record]] = {}
        for row in con.execute(_FAMILY_ROWS, [roots]).fetchall():
            runs.setdefault(row[1], []).append(row_record(row))
        block = seq_block(con, owner)
    return Claim(token, roots, members, list(runs.values()), block)


def renew(con: Connection, owner: str, lease: float, roots: Sequence[str]) -> int:
    """Extend the leases of the families `roots` that `owner` holds; return how many.

    Drop messages for ended runs, and blocks of `seq` no watch needs any more.
    """
    renewed = con.execute(_RENEW, [lease, owner, list(roots)]).rowcount
    con.execute(_ORPHANS)
    con.execute(PRUNE_BLOCKS, [block_kept(lease)])
    return renewed


def taken(con: Connection, owner: str, held: dict[str, int]) -> list[str]:
    """Return the families of `held` (root: token) another engine has claimed since."""
    if not held:
        return []
    rows = con.execute(_TAKEN, [list(held), list(held.values()), owner]).fetchall()
    return [row[0] for row in rows]


def release(con: Connection, owner: str) -> None:
    """Free every lease `owner` holds, and wake other engines to claim them at once."""
    if con.execute(_RELEASE, [owner]).rowcount:
        con.execute(_NOTIFY, [CHANNEL])


def hand_back(con: Connection, owner: str, roots: Sequence[str]) -> None:
    """Free the families `roots` that `owner` holds, and wake engines to claim them."""
    with con.transaction():  # on an autocommit connection: the two at once
        if con.execute(_HAND_BACK, [owner, list(roots)]).rowcount:
            con.execute(_NOTIFY, [CHANNEL])


def wake(con: Connection) -> None:
    """Wake every engine listening on the schema's channel (they look for work)."""
    con.execute(_NOTIFY, [CHANNEL])


def inbox(con: Connection, owner: str, taken: Sequence[int]) -> list[tuple[Any, ...]]:
    """Return messages for runs `owner` holds, except those already `taken`."""
    return con.execute(_INBOX, [owner, list(taken)]).fetchall()


def send(con: Connection, run_id: str, action: str, key: str | None,
         payload: bytes | None, payload_json: str | None) -> None:
    """Queue a message for the engine that holds (or next claims) `run_id`."""
    with con.transaction():  # on an autocommit connection: the two at once
        con.execute(_SEND, [run_id, action, key, payload, payload_json])
        con.execute(_NOTIFY, [CHANNEL])


def done(con: Connection, ids: Sequence[int]) -> None:
    """Delete delivered inbox messages."""
    con.execute(_DONE, [list(ids)])
