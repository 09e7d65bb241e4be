"""A FastAPI app for test_serve: uvicorn workers that use the engine of `replay serve`.

Run with ``REPLAY_TEST_DB=DB uvicorn connect_app:app --workers 2``. No worker opens the
database: each one is a client of the engine process, through the blocking client in
sync endpoints (FastAPI runs them in its thread pool) and the asyncio client in async
ones. Every answer names the worker's pid.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI

import replay

DB = os.environ["REPLAY_TEST_DB"]
app = FastAPI()
client = replay.connect(DB)  # fails at start-up, with what to do, if no engine serves DB
aio = replay.AsyncClient(DB)  # connects per call: no loop or connection to hold


@app.get("/health")
def health() -> dict[str, Any]:
    return {"worker": os.getpid(), "engine": client.pid}


@app.post("/orders/{order}")
def start(order: str) -> dict[str, Any]:
    run = client.start("approval", order, run_id=order)
    return {"run_id": run.run_id, "state": run.wait(timeout=30).state, "worker": os.getpid()}


@app.post("/orders/{order}/decision/{decision}")
async def decide(order: str, decision: str) -> dict[str, Any]:
    await aio.signal(order, "decision:v1", decision)
    return {"worker": os.getpid()}


@app.get("/orders/{order}")
async def result(order: str) -> dict[str, Any]:
    return {"output": await aio.result(order, timeout=30), "worker": os.getpid()}
