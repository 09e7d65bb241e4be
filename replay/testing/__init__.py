"""replay.testing: test durable workflows in virtual time, with determinism checks.

Not imported by ``import replay``. It gives:

- `run_workflow` (and `run_workflow_async`): run one workflow on an in-memory
  database under trio's virtual clock, with signals scripted by key, and get back its
  output or error, final state, history and how often each step executed;
- `open_test_engine`, `set_virtual_start` and `wait_for_state`, for tests that drive
  an engine themselves (and move the clock by hand);
- `check_history`: replay new workflow code against a history file written by
  `Engine.export_history` (a golden history), executing no step;
- pytest fixtures (``replay_engine``, ``replay_clock``, ``replay_workflows``,
  ``replay_engine_options``), registered through the ``pytest11`` entry point.

`always_replay` is on by default everywhere here: a workflow that reads the time, a
random number or a global outside a step fails with `replay.NondeterminismError`.
"""

from replay.testing._engines import open_test_engine, set_virtual_start, wait_for_state
from replay.testing._replaying import HistoryReport, check_history
from replay.testing._run_workflow import RunResult, run_workflow, run_workflow_async

__all__ = [
    "HistoryReport",
    "RunResult",
    "check_history",
    "open_test_engine",
    "run_workflow",
    "run_workflow_async",
    "set_virtual_start",
    "wait_for_state",
]

for _name in __all__:
    globals()[_name].__module__ = "replay.testing"
del _name
