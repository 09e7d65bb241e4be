"""examples/fastapi_app.py served by a real uvicorn process, over real HTTP.

The server runs as a subprocess on a free port (port 0; the port is read from
uvicorn's log). The tests wait for log lines and HTTP answers, never for time.
"""

from __future__ import annotations

import asyncio
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app.py"
TIMEOUT = 60.0  # seconds: a safety net for every wait on the server
STARTED = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
LOAD = 100  # concurrent requests


class Server:
    """examples/fastapi_app.py serving `db` on a free port; its log read line by line."""

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(EXAMPLE), str(db), "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()
        while (found := STARTED.search(self.line())) is None:
            pass
        self.url = f"http://127.0.0.1:{found.group(1)}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self) -> str:
        try:
            line = self._lines.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail(f"the server logged nothing for {TIMEOUT:g}s:\n" + "\n".join(self.log))
        if line is None:
            pytest.fail("the server exited:\n" + "\n".join(self.log))
        self.log.append(line)
        return line

    def stop(self, how: signal.Signals) -> None:
        """Send `how` and wait for the exit; the rest of the log is in `log`."""
        self.proc.send_signal(how)
        self.proc.wait(timeout=TIMEOUT)
        self._pump.join(timeout=TIMEOUT)
        while (line := self._lines.get_nowait()) is not None:
            self.log.append(line)

    def stopped_cleanly(self, how: signal.Signals) -> bool:
        """Stop with `how`; tell whether the app shut down (the engine closed) first."""
        self.stop(how)
        # After a clean shutdown uvicorn raises the signal again, to exit as it says.
        log = "\n".join(self.log)
        return (self.proc.returncode in (0, 1, -how)
                and "Application shutdown complete." in log and "Traceback" not in log)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        self._pump.join(timeout=TIMEOUT)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "checkout-api.duckdb"


def client(server: Server) -> Any:
    # trust_env=False: a proxy from the environment must not see loopback traffic.
    return httpx.Client(base_url=server.url, timeout=TIMEOUT, trust_env=False)


def test_a_checkout_over_http_and_across_a_restart(db: Path) -> None:
    server = Server(db)
    try:
        with client(server) as http:
            started = http.post("/checkouts", json={"order_id": "o-1", "cents": 4200})
            assert started.status_code == 201, started.text
            run_id = started.json()["run_id"]
            assert run_id == "checkout-o-1"
            again = http.post("/checkouts", json={"order_id": "o-1", "cents": 4200})
            assert again.status_code == 201 and again.json()["run_id"] == run_id

            waiting = http.get(f"/checkouts/{run_id}", params={"wait": "true"}).json()
            assert waiting["state"] == "suspended"
            assert waiting["waiting_for"] == "approval:v1"
            assert waiting["status"] == "waiting for a manager"

            approved = http.post(f"/checkouts/{run_id}/approve",
                                 json={"approved": True, "by": "ann"})
            assert approved.status_code == 200, approved.text
            done = http.get(f"/checkouts/{run_id}", params={"wait": "true"}).json()
            assert done["state"] == "completed"
            assert done["output"] == {"order": "o-1", "state": "charged", "by": "ann",
                                      "receipt": "ch-checkout-o-1-charge:v1"}

            twice = http.post(f"/checkouts/{run_id}/approve", json={"by": "bob"})
            assert twice.status_code == 409 and "completed" in twice.json()["detail"]
            assert http.get("/checkouts/nope").status_code == 404
            assert http.post("/checkouts/nope/approve", json={"by": "bob"}).status_code == 404
            assert http.post("/checkouts", json={"order_id": "o-2"}).status_code == 422

            # o-2 waits for its approval while the server stops.
            assert http.post("/checkouts", json={"order_id": "o-2", "cents": 100}
                             ).status_code == 201
            assert http.get("/checkouts/checkout-o-2", params={"wait": "true"}
                            ).json()["state"] == "suspended"
        assert server.stopped_cleanly(signal.SIGTERM), "\n".join(server.log)
    finally:
        server.close()

    server = Server(db)  # the same file: everything is still there
    try:
        with client(server) as http:
            assert http.get("/checkouts/checkout-o-1").json()["state"] == "completed"
            assert http.get("/checkouts/checkout-o-2").json()["state"] == "suspended"
            http.post("/checkouts/checkout-o-2/approve", json={"approved": False, "by": "cy"})
            done = http.get("/checkouts/checkout-o-2", params={"wait": "true"}).json()
            assert done["output"] == {"order": "o-2", "state": "cancelled", "by": "cy"}
        assert server.stopped_cleanly(signal.SIGINT), "\n".join(server.log)
    finally:
        server.close()


def async_client(server: Server) -> Any:
    limits = httpx.Limits(max_connections=LOAD)
    return httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT, limits=limits,
                             trust_env=False)


async def at_once(server: Server, request: Callable[[Any, int], Awaitable[Any]]) -> list[Any]:
    """Send LOAD requests at once, each on its own connection; return the responses.

    A fresh client per batch: httpx's pool reusing 100 warm connections is several
    times slower on the client side (measured against a bare FastAPI app too).
    """
    async with async_client(server) as http:
        return list(await asyncio.gather(*(request(http, i) for i in range(LOAD))))


def start_all(server: Server) -> list[Any]:
    return asyncio.run(at_once(server, lambda http, i: http.post(
        "/checkouts", json={"order_id": f"o-{i}", "cents": i})))


def approve_all(server: Server) -> tuple[list[Any], list[Any]]:
    async def main() -> tuple[list[Any], list[Any]]:
        waiting = await at_once(server, lambda http, i: http.get(
            f"/checkouts/checkout-o-{i}", params={"wait": "true"}))
        approvals = await at_once(server, lambda http, i: http.post(
            f"/checkouts/checkout-o-{i}/approve", json={"by": f"m-{i % 7}"}))
        assert {r.status_code for r in approvals} == {200}
        done = await at_once(server, lambda http, i: http.get(
            f"/checkouts/checkout-o-{i}", params={"wait": "true"}))
        return [r.json() for r in waiting], [r.json() for r in done]
    return asyncio.run(main())


def check_done(waiting: list[Any], done: list[Any]) -> None:
    assert {(w["state"], w["waiting_for"]) for w in waiting} == {("suspended", "approval:v1")}
    assert [d["output"] for d in done] == [
        {"order": f"o-{i}", "state": "charged", "by": f"m-{i % 7}",
         "receipt": f"ch-checkout-o-{i}-charge:v1"} for i in range(LOAD)]


def test_a_hundred_concurrent_checkouts(db: Path) -> None:
    server = Server(db)
    try:
        started = start_all(server)
        assert [r.status_code for r in started] == [201] * LOAD
        assert len({r.json()["run_id"] for r in started}) == LOAD
        check_done(*approve_all(server))
        assert server.stopped_cleanly(signal.SIGTERM), "\n".join(server.log)
    finally:
        server.close()


@pytest.mark.slow
def test_a_killed_server_keeps_every_acknowledged_checkout(db: Path) -> None:
    server = Server(db)
    try:
        started = start_all(server)
        assert [r.status_code for r in started] == [201] * LOAD  # all acknowledged
        server.stop(signal.SIGKILL)  # no shutdown at all
    finally:
        server.close()

    server = Server(db)
    try:
        check_done(*approve_all(server))  # every one is there, and continues
        assert server.stopped_cleanly(signal.SIGTERM), "\n".join(server.log)
    finally:
        server.close()
