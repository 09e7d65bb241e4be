"""A batch import that reports its progress, watched live.

    python examples/progress_batch.py [path.duckdb] [--real-time]   # default: progress_batch.duckdb

An `import-batch:v1` run imports six files, one step per file. Two kinds of progress:

- after each file, the workflow yields ``replay.Note(f"progress:{i}", {"done": i, "of": n})``.
  The note is recorded: it becomes the run's status (`RunInfo.status_text` and
  `status_value`, the `status_text` and `status_json` columns of ``replay_runs``), and a
  replay meets it recorded and records nothing new;
- inside the step, ``replay.current_step().progress({...})`` publishes how many rows of
  the file are done. Watchers see it at once; it is not recorded, so it costs no write
  and is gone after a restart.

The script watches its own run with ``async for update in run.watch()`` and prints
every update: a snapshot first, then each recorded event and each progress value, until
the run finishes. It runs under trio's fake clock, so the import "takes" seconds of
virtual time and milliseconds of wall time. With ``--real-time`` it runs on the real
clock (about ten seconds), long enough to watch it from a second terminal while it runs:

    python examples/progress_batch.py import.duckdb --real-time    # terminal 1
    replay watch import.duckdb import-2024-06                       # terminal 2
    replay watch import.duckdb import-2024-06 --json                # one JSON object a line

Run it again on the same file: the run is finished, so the watch yields one snapshot
and nothing executes.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import trio
import trio.testing

import replay
from replay import Note, Step

RUN_ID = "import-2024-06"
FILES = {"orders-01.csv": 1200, "orders-02.csv": 800, "orders-03.csv": 1500,
         "orders-04.csv": 400, "orders-05.csv": 1000, "orders-06.csv": 600}
CHUNK = 500  # rows imported between two progress reports
CHUNK_SECONDS = 0.5  # how long a chunk takes (virtual time, unless --real-time)

EXECUTED: Counter[str] = Counter()  # step function calls in this process, by name


# --- the step: imports one file, publishing its progress as it goes ---


async def import_file(name: str, rows: int) -> int:
    EXECUTED["import_file"] += 1
    step = replay.current_step()  # a StepContext: run_id, key, attempt, progress()
    done = 0
    while done < rows:
        await trio.sleep(CHUNK_SECONDS)  # stands for inserting a chunk of rows
        done = min(rows, done + CHUNK)
        step.progress({"file": name, "rows": done, "of": rows})  # seen by watchers only
    return rows


# --- the workflow ---


@replay.workflow(name="import-batch:v1")
def import_batch(files: dict[str, int]):
    total = 0
    for i, (name, rows) in enumerate(files.items(), start=1):
        total += yield Step(f"import:{name}", import_file, name, rows)
        # Recorded with the run's next commit; the run's status until the next note.
        yield Note(f"progress:{i}", {"done": i, "of": len(files)},
                   text=f"{i} of {len(files)} files imported")
    return {"files": len(files), "rows": total}


# --- watching it ---


def describe(update: replay.RunUpdate) -> str:
    """One line per update, as `replay watch` prints them."""
    info = update.info
    assert info is not None  # a run's own watch never gets a "missed" update
    if update.kind == "snapshot":
        missed = f" (missed {update.missed} updates)" if update.missed else ""
        return f"snapshot  {info.state}{missed}  status: {info.status_text}"
    if update.kind == "progress":
        return f"progress  {update.key}  {update.progress}"
    event = update.event
    assert event is not None
    what = f"{event.kind}/{event.event}"
    if event.kind == "note":
        return f"event     {what} {event.key}  status: {info.status_text}"
    return f"event     {what} {event.key or ''}".rstrip() + f"  -> {info.state}"


NOTES = """
SELECT key, value_json FROM replay_events
WHERE run_id = ? AND kind = 'note' ORDER BY seq
"""
STATUS = "SELECT state, status_text, status_json FROM replay_runs WHERE run_id = ?"


async def main(db_path: str = "progress_batch.duckdb") -> dict[str, Any]:
    EXECUTED.clear()
    async with replay.open_engine(db_path, workflows=[import_batch]) as engine:
        run = await engine.start(import_batch, FILES, run_id=RUN_ID)
        print(f"watching {RUN_ID} (from another terminal: replay watch {db_path} {RUN_ID})")
        began = engine.now()
        updates = []
        async for update in run.watch():  # the state now, then every change, to the end
            updates.append(update)
            seconds = (engine.now() - began).total_seconds()
            print(f"+{seconds:5.1f}s  {describe(update)}")
        output = await run.result()
        info = engine.status(RUN_ID)
        print(f"\n{RUN_ID}: {info.state} -> {output}")
        print(f"status_text: {info.status_text!r}, status_value: {info.status_value}")
        notes = await engine.sql(NOTES, [RUN_ID])
        print(f"notes recorded: {[key for key, _ in notes]}")
        status = (await engine.sql(STATUS, [RUN_ID]))[0]
        print(f"replay_runs: {status}")
        print(f"step functions executed this time: {dict(EXECUTED)}")
    return {"output": output, "info": info, "updates": updates, "notes": notes,
            "status": status, "executed": dict(EXECUTED)}


if __name__ == "__main__":
    args = [arg for arg in sys.argv[1:] if arg != "--real-time"]
    path = args[0] if args else "progress_batch.duckdb"
    if "--real-time" in sys.argv[1:]:
        trio.run(main, path)
    else:  # virtual time: the chunks take no real time
        trio.run(main, path, clock=trio.testing.MockClock(autojump_threshold=0))
