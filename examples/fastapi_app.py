"""A checkout service on FastAPI (asyncio): replay through `replay.aio`.

    pip install fastapi uvicorn
    python examples/fastapi_app.py [path.duckdb] [port]   # default: checkout-api.duckdb 8000

    curl -X POST localhost:8000/checkouts -H 'content-type: application/json' \\
         -d '{"order_id": "o-1", "cents": 4200}'
    curl localhost:8000/checkouts/checkout-o-1                 # suspended: waits for approval
    curl -X POST localhost:8000/checkouts/checkout-o-1/approve \\
         -H 'content-type: application/json' -d '{"approved": true, "by": "ann"}'
    curl 'localhost:8000/checkouts/checkout-o-1?wait=true'     # completed, with its receipt

The engine opens in the app's lifespan, on the server's own asyncio loop, and closes
when the server stops (Ctrl-C, SIGTERM). A checkout waiting for approval holds no
task and no thread: it is a row in the database, so it survives restarts and deploys,
and the approval may come days later. Under gunicorn or `uvicorn --workers N` only one
process can hold the file; see docs/hosting.md.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import replay
import replay.aio
from replay import Step, Suspend

APPROVAL = "approval:v1"

# --- step functions: each stands for a call to another system ---


def reserve_stock(order_id: str) -> str:
    return f"res-{order_id}"


def charge_card(order_id: str, cents: int) -> str:
    run_id, key, _attempt = replay.current_step()
    return f"ch-{run_id}-{key}"  # run_id + key: an idempotency key for the gateway


def release_stock(reservation: str) -> str:
    return f"released {reservation}"


# --- the workflow: plain replay code, nothing asyncio about it ---


@replay.workflow(name="checkout:v1")
def checkout(order_id: str, cents: int):
    reservation = yield Step("reserve:v1", reserve_stock, order_id)
    try:
        decision = yield Suspend(APPROVAL, status="waiting for a manager",
                                 timeout=timedelta(days=2))
    except replay.SuspendTimeout:
        decision = {"approved": False, "by": "nobody (timed out)"}
    if not decision["approved"]:
        yield Step("release:v1", release_stock, reservation)
        return {"order": order_id, "state": "cancelled", "by": decision["by"]}
    receipt = yield Step("charge:v1", charge_card, order_id, cents)
    return {"order": order_id, "state": "charged", "receipt": receipt, "by": decision["by"]}


# --- the HTTP API ---


class CheckoutIn(BaseModel):
    order_id: str
    cents: int


class ApprovalIn(BaseModel):
    approved: bool = True
    by: str


def view(info: replay.RunInfo) -> dict[str, Any]:
    return {"run_id": info.run_id, "state": info.state.value, "waiting_for": info.waiting_for,
            "status": info.status_text, "output": info.output, "error": info.error}


def create_app(db: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Open once per process, for the server's whole life; closed on shutdown.
        async with replay.aio.open_engine(db, workflows=[checkout],
                                          shutdown_timeout=10.0) as engine:
            app.state.engine = engine
            yield

    app = FastAPI(title="checkout", lifespan=lifespan)

    def engine_of(request: Request) -> replay.aio.Engine:
        engine: replay.aio.Engine = request.app.state.engine
        return engine

    # replay's errors map to HTTP statuses in one place.
    @app.exception_handler(replay.RunNotFound)
    async def not_found(request: Request, error: replay.RunNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(replay.SignalRejected)
    async def rejected(request: Request, error: replay.SignalRejected) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=409)

    @app.post("/checkouts", status_code=201)
    async def start_checkout(order: CheckoutIn, request: Request) -> dict[str, Any]:
        # One run per order: posting the same order twice returns the same run.
        run = await engine_of(request).start(checkout, order.order_id, order.cents,
                                             run_id=f"checkout-{order.order_id}")
        return view(await engine_of(request).status(run.run_id))

    @app.get("/checkouts/{run_id}")
    async def read_checkout(run_id: str, request: Request, wait: bool = False) -> dict[str, Any]:
        engine = engine_of(request)
        if wait:  # until it completes, fails or waits for a signal
            return view(await (await engine.get_run(run_id)).wait())
        return view(await engine.status(run_id))

    @app.post("/checkouts/{run_id}/approve")
    async def approve(run_id: str, decision: ApprovalIn, request: Request) -> dict[str, Any]:
        engine = engine_of(request)
        # Returns once the decision is durable; the run continues on its own.
        await engine.signal(run_id, APPROVAL, {"approved": decision.approved,
                                               "by": decision.by})
        return view(await engine.status(run_id))

    return app


if __name__ == "__main__":
    db = sys.argv[1] if len(sys.argv) > 1 else "checkout-api.duckdb"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8000  # 0: any free port
    uvicorn.run(create_app(db), host="127.0.0.1", port=port)
