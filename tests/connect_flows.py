"""Workflows that `replay serve` runs for test_connect and test_serve (``--workflows``).

Every output names the process that ran its last step, so a test can tell that the
engine in the `replay serve` process did the work. `gated` blocks in a step until
someone writes to the FIFO it is given: a step that is running when a test kills the
server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal

import replay
from replay import Step, Suspend


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str


replay.register_type(Money, tag="tests.Money")


def engine_pid() -> int:
    return os.getpid()


def read_gate(fifo: str) -> str:
    with open(fifo) as gate:  # blocks until a writer opens the FIFO, then reads to its end
        return gate.read()


@replay.workflow(name="echo")
def echo(*values):  # type: ignore[no-untyped-def]
    pid = yield Step("pid:v1", engine_pid)
    return {"values": values, "pid": pid}


@replay.workflow(name="approval")
def approval(order: str):  # type: ignore[no-untyped-def]
    decision = yield Suspend("decision:v1", status="waiting for a decision")
    if decision == "refuse":
        raise ValueError(f"order {order} refused")
    pid = yield Step("pid:v1", engine_pid)
    return {"order": order, "decision": decision, "pid": pid}


@replay.workflow(name="gated")
def gated(fifo: str):  # type: ignore[no-untyped-def]
    opened = yield Step("gate:v1", read_gate, fifo)
    pid = yield Step("pid:v1", engine_pid)
    return {"gate": opened, "pid": pid}
