"""replay from asyncio: the trio engine as a guest on the running asyncio loop.

    async with replay.aio.open_engine("shop.duckdb", workflows=[checkout]) as engine:
        run = await engine.start(checkout, "o-1", 4200)
        print(await run.result())

`open_engine` takes the options of `replay.open_engine`; the `Engine` and `Run` it
gives offer the same calls as coroutines, with the same results and the same
`replay` exceptions. Workflows and steps are unchanged: they run on the engine's trio
loop, so `async def` steps use trio, not asyncio.
"""

from replay.aio._facade import Engine, Run
from replay.aio._lifecycle import open_engine

__all__ = ["Engine", "Run", "open_engine"]

# Public objects report the public module (reprs, tracebacks, the API docs).
for _name in __all__:
    globals()[_name].__module__ = "replay.aio"
del _name
