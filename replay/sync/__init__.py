"""replay.sync: use replay from synchronous code (Flask, Django, scripts, threads).

`open_engine` runs the trio engine on a background thread of its own and returns an
`Engine` whose calls (`start`, `signal`, `resume`, `cancel`, `terminate`, `status`,
`get_run`, `runs`, `history`, `sql`, `export_history`) block until the engine has
answered, and whose
`Run` handles have blocking `wait(timeout=...)` and `result(timeout=...)`. Any number
of threads may call one engine at once; errors are the same `replay` exceptions.

    import replay.sync

    with replay.sync.open_engine("app.duckdb", workflows=[checkout]) as engine:
        run = engine.start(checkout, "o-1", 4200)
        print(run.result(timeout=60))

Not imported by ``import replay``: import ``replay.sync``.
"""

from replay.sync._engine import Engine
from replay.sync._lifecycle import open_engine
from replay.sync._run import Run

__all__ = ["Engine", "Run", "open_engine"]

# Public objects report this module, so reprs and documentation read
# `replay.sync.Engine`, not `replay.sync._engine.Engine`.
for _name in __all__:
    globals()[_name].__module__ = "replay.sync"
del _name
