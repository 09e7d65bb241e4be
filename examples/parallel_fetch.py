"""Parallel fetch: many steps at once with `All`, at most eight under way.

    python examples/parallel_fetch.py [path.duckdb]   # default: parallel_fetch.duckdb

A `price-check:v1` workflow fetches 40 product pages in one `All` group with
`limit=8`: eight fetches run at once, and each time one ends the next one starts. Every
fetch is a step of its own with its own key, recorded when it ends, so a crash
half-way through keeps the pages already fetched. The `yield` returns the pages in the
order of the list, whatever order the fetches finished in.

The fetch is a local fake (no network): an `async def` that sleeps for a latency
derived from the URL. The script runs under trio's fake clock (`MockClock`), so those
sleeps take no real time while the recorded timestamps show them.
"""

from __future__ import annotations

import sys
import zlib
from collections import Counter
from typing import Any

import trio
import trio.testing

import replay
from replay import All, Retry, Step

EXECUTED: Counter[str] = Counter()  # step function calls in this process, by name
LIMIT = 8  # fetches under way at once
URLS = [f"https://shop.example.com/product/{n}" for n in range(101, 141)]


class InFlight:
    """How many fetches run right now, the most at once, and the order they finished in."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.now = 0
        self.most = 0
        self.finished: list[str] = []


FLIGHT = InFlight()


def latency(url: str) -> float:
    """A stand-in network latency for `url`: 0.2 to 1.0 seconds, the same every time."""
    return 0.2 + (zlib.crc32(url.encode()) % 9) / 10


def price(url: str) -> int:
    """A stand-in price for the product at `url`, in cents."""
    return 900 + zlib.crc32(url[::-1].encode()) % 600


# --- step functions ---


async def fetch(url: str) -> dict[str, Any]:
    """Stands for `await http.get(url)`; an async step runs on the engine's loop."""
    EXECUTED["fetch"] += 1
    FLIGHT.now += 1
    FLIGHT.most = max(FLIGHT.most, FLIGHT.now)
    try:
        await trio.sleep(latency(url))
        FLIGHT.finished.append(url)
        return {"url": url, "status": 200, "price_cents": price(url)}
    finally:
        FLIGHT.now -= 1


def summarise(pages: list[dict[str, Any]]) -> dict[str, Any]:
    EXECUTED["summarise"] += 1
    prices = [page["price_cents"] for page in pages]
    cheapest = pages[prices.index(min(prices))]["url"]
    return {"pages": len(pages), "cheapest": cheapest, "mean_cents": sum(prices) // len(prices)}


# --- the workflow ---


@replay.workflow(name="price-check:v1")
def price_check(urls: list[str]):
    # One group, one key; every member keeps its own key too. At most LIMIT members are
    # under way at once. The first member to fail for good fails the group (`All` is
    # fail-fast); each fetch gets three attempts first.
    pages = yield All("fetch-pages:v1",
                      [Step(f"fetch:{url}", fetch, url, retry=Retry(attempts=3))
                       for url in urls],
                      limit=LIMIT)
    # `pages` is in the order of `urls`, not in the order the fetches ended.
    return (yield Step("summarise:v1", summarise, pages))


# --- running it ---


async def main(db_path: str = "parallel_fetch.duckdb") -> dict[str, Any]:
    EXECUTED.clear()
    FLIGHT.reset()
    async with replay.open_engine(db_path, workflows=[price_check]) as engine:
        # An explicit run id: a second invocation returns the recorded run.
        run = await engine.start(price_check, URLS, run_id="price-check-1")
        output = await run.result()
        state = engine.status(run.run_id).state
        print(f"{run.run_id}: {state} -> {output}")
        print(f"step functions executed this time: {dict(EXECUTED)}")
        if FLIGHT.finished:
            print(f"fetches under way at once: at most {FLIGHT.most} (limit={LIMIT})")
            print("first to finish: " + ", ".join(url.rsplit("/", 1)[1]
                                                  for url in FLIGHT.finished[:LIMIT]))
            print("values returned: " + ", ".join(url.rsplit("/", 1)[1]
                                                  for url in URLS[:LIMIT]) + ", ...")

        # The group's records and its members', in virtual seconds from the start.
        events = await engine.sql(
            "WITH e AS (SELECT seq, kind || '/' || event AS event, "
            "           CASE WHEN key LIKE 'fetch:%' THEN 'fetch:<url>' "
            "                ELSE coalesce(key, '') END AS key, "
            "           epoch(recorded_at - min(recorded_at) OVER ()) AS t "
            "           FROM replay_events WHERE run_id = $run) "
            "SELECT key, event, count(*), round(min(t), 1), round(max(t), 1) FROM e "
            "GROUP BY key, event ORDER BY min(seq)", {"run": run.run_id})
        one_by_one = sum(latency(url) for url in URLS)
        print("\nkey             event            count  first (s)  last (s)")
        for key, event, count, first, last in events:
            print(f"{key:<15} {event:<16} {count:>5}  {first:>9}  {last:>8}")
        print(f"(one fetch at a time, the fetches would take {one_by_one:.1f} s)")
    return {"output": output, "state": state, "executed": dict(EXECUTED),
            "most_in_flight": FLIGHT.most, "finished": list(FLIGHT.finished),
            "events": events}


if __name__ == "__main__":
    # Virtual time: the fetches' latencies pass at once (see the module docstring).
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "parallel_fetch.duckdb", clock=clock)
