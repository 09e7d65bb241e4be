"""replay: an embeddable durable-execution engine for Python.

Workflows are generator functions that yield commands (`Step`, `Sleep`, `Suspend`);
each command's key is looked up in a DuckDB event table, recorded outcomes are sent
straight back, new ones are executed and recorded before the workflow continues.
"""

from replay._channel._aio import AsyncClient, connect_async
from replay._channel._connect import Client, connect
from replay._channel._handles import AsyncRemoteRun, RemoteRun
from replay._codec import register_type
from replay._commands import Sleep, Step, Suspend
from replay._engine._facade import Engine
from replay._engine._handle import Run
from replay._engine._lifecycle import open_engine
from replay._engine._script import run
from replay._engine._steps import StepContext, current_step
from replay._errors import (
    Cancelled,
    ChildFailed,
    DatabaseError,
    DatabaseLocked,
    DuplicateKeyError,
    EncodingError,
    EngineClosed,
    LeaseLost,
    NondeterminismError,
    QueryError,
    ReplayError,
    ReplayInternalError,
    RunFinished,
    RunIdConflict,
    RunNotFound,
    RunSuspended,
    SignalRejected,
    StepFailed,
    StepInterrupted,
    StepTimeout,
    SuspendTimeout,
    WorkflowFailed,
    WorkflowNotRegistered,
)
from replay._flow import ContinueAsNew, Note
from replay._parallel import All, Child, Gather, Gathered, Race
from replay._retry import Retry
from replay._types import Event, PurgeReport, RunInfo, RunState, RunUpdate
from replay._version import __version__
from replay._workflows import workflow

# A `Gather`'s result may be returned or passed on as it is (its values, when no member
# failed: a failure is not data, and recording one is an `EncodingError`).
register_type(Gathered, tag="replay.Gathered", encode=list, decode=Gathered)

__all__ = [
    "All",
    "AsyncClient",
    "AsyncRemoteRun",
    "Cancelled",
    "Child",
    "ChildFailed",
    "Client",
    "ContinueAsNew",
    "DatabaseError",
    "DatabaseLocked",
    "LeaseLost",
    "DuplicateKeyError",
    "EncodingError",
    "Engine",
    "EngineClosed",
    "Event",
    "Gather",
    "Gathered",
    "NondeterminismError",
    "Note",
    "PurgeReport",
    "QueryError",
    "Race",
    "RemoteRun",
    "ReplayError",
    "ReplayInternalError",
    "Retry",
    "Run",
    "RunFinished",
    "RunIdConflict",
    "RunInfo",
    "RunNotFound",
    "RunState",
    "RunSuspended",
    "RunUpdate",
    "SignalRejected",
    "Sleep",
    "Step",
    "StepFailed",
    "StepContext",
    "StepInterrupted",
    "StepTimeout",
    "Suspend",
    "SuspendTimeout",
    "WorkflowFailed",
    "WorkflowNotRegistered",
    "__version__",
    "connect",
    "connect_async",
    "current_step",
    "open_engine",
    "register_type",
    "run",
    "workflow",
]

# Public objects report the public module, so reprs, tracebacks and recorded
# `error_type`s read `replay.StepTimeout`, not `replay._errors.StepTimeout`.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("replay."):
        _obj.__module__ = "replay"
del _name, _obj
