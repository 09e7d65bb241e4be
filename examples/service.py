"""A service: an engine that runs until SIGTERM or Ctrl-C, then stops cleanly.

Run it from the repository root, stop it, run it again:

    python examples/service.py            # prints "serving ...", then works
    # Ctrl-C (or: kill -TERM <pid>): steps still running get SHUTDOWN_TIMEOUT seconds
    python examples/service.py            # the unfinished run continues where it stopped

Arguments: the database file (default ``service.duckdb``) and the seconds running steps
get to finish when the service stops (default 10). A clean stop charges nothing: a step
that is still running when that time is up is recorded as ``step/abandoned`` and runs
again, as an ordinary attempt, the next time the service starts. See it with

    replay show service.duckdb transcode-cat
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import trio

import replay
from replay import Step

SHUTDOWN_TIMEOUT = 10.0  # keep it below the stop timeout of systemd, Docker or Kubernetes
TRANSCODE_SECONDS = 60.0  # stands for a long ffmpeg run


# --- step functions ---


async def fetch(video: str) -> str:
    await trio.sleep(0)  # stands for downloading the file
    return f"/var/cache/videos/{video}"


async def render_thumbnail(path: str) -> str:
    return path.replace(".mp4", ".jpg")


async def transcode_video(path: str) -> str:
    run_id, key, attempt = replay.current_step()
    print(f"{run_id}: {key} running (attempt {attempt})", flush=True)
    await trio.sleep(TRANSCODE_SECONDS)
    return path.replace(".mp4", ".webm")


async def publish(video: str, *files: str) -> list[str]:
    return [f"https://cdn.example.com/{os.path.basename(f)}" for f in files]


# --- workflows: explicit names, so they survive refactoring across deploys ---


@replay.workflow(name="thumbnail")
def thumbnail(video: str):
    path = yield Step("fetch:v1", fetch, video)
    image = yield Step("render:v1", render_thumbnail, path)
    return (yield Step("publish:v1", publish, video, image))


@replay.workflow(name="transcode")
def transcode(video: str):
    path = yield Step("fetch:v1", fetch, video)
    output = yield Step("transcode:v1", transcode_video, path)
    return (yield Step("publish:v1", publish, video, output))


# --- the service ---


async def report(run: replay.Run) -> None:
    """Print a run's outcome when it finishes (a service would notify someone)."""
    try:
        print(f"{run.run_id}: completed -> {await run.result()}", flush=True)
    except replay.WorkflowFailed as failure:
        print(f"{run.run_id}: failed -> {failure.error_type}", flush=True)


async def serve(db_path: str, shutdown_timeout: float) -> None:
    async with replay.open_engine(db_path, workflows=[thumbnail, transcode],
                                  shutdown_timeout=shutdown_timeout) as engine:
        # Runs that were unfinished when the service last stopped are already running
        # again here. New work would come from an HTTP handler or a queue consumer in
        # the same nursery, calling engine.start; this demo starts two runs itself.
        # Explicit run ids make start idempotent: a restart does not start them twice.
        runs = [await engine.start(thumbnail, "cat.mp4", run_id="thumbnail-cat"),
                await engine.start(transcode, "cat.mp4", run_id="transcode-cat")]
        async with trio.open_nursery() as nursery:
            for run in runs:
                nursery.start_soon(report, run)
            print(f"serving {db_path} (pid {os.getpid()}); stop with Ctrl-C or "
                  f"kill -TERM {os.getpid()}", flush=True)
            number = await engine.serve_forever()  # returns on SIGTERM or SIGINT
            print(f"{signal.Signals(number).name}: stopping; running steps get "
                  f"{shutdown_timeout:g}s to finish", flush=True)
            nursery.cancel_scope.cancel()  # stop waiting for results
        # Leaving the block stops the engine: what still runs is recorded as abandoned.
    print("stopped cleanly", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    trio.run(serve, sys.argv[1] if len(sys.argv) > 1 else "service.duckdb",
             float(sys.argv[2]) if len(sys.argv) > 2 else SHUTDOWN_TIMEOUT)
