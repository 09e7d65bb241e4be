"""The layout shows the architecture: each part imports only what it may, one way.

Parts are the top-level modules and subpackages of `replay`. The pure core and the
public value types import no trio, duckdb or msgpack; each outside library has one
home; no two modules import each other, directly or in a loop; `replay.__all__` is
pinned so that a change to the public surface is a deliberate one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import replay

PACKAGE = Path(__file__).resolve().parent.parent / "replay"

PURE = {"replay._errors", "replay._version", "replay._types", "replay._checks",
        "replay._retry", "replay._commands", "replay._parallel", "replay._workflows",
        "replay._flow", "replay._core", "replay._epoch"}
# What each part may import (besides itself and the standard library).
ALLOWED: dict[str, set[str]] = {
    "replay._errors": set(),
    "replay._version": set(),
    "replay._types": set(),
    "replay._epoch": set(),
    "replay._checks": {"replay._errors", "replay._types"},
    "replay._retry": {"replay._errors", "replay._types", "replay._checks"},
    "replay._commands": {"replay._errors", "replay._types", "replay._checks", "replay._retry"},
    "replay._workflows": {"replay._errors"},
    "replay._flow": {"replay._errors", "replay._checks"},
    "replay._parallel": {"replay._errors", "replay._checks", "replay._commands",
                         "replay._workflows", "replay._flow"},
    "replay._core": {"replay._errors", "replay._types", "replay._commands", "replay._retry",
                     "replay._checks", "replay._parallel", "replay._flow"},
    "replay._codec": {"replay._errors", "replay._types", "replay._core"},
    "replay._store": {"replay._errors", "replay._types", "replay._epoch", "replay._core",
                      "replay._codec"},
    # The PostgreSQL store: the DuckDB store's row conversion, purge plans and user-query
    # bookkeeping, over psycopg.
    "replay._pg": {"replay._errors", "replay._types", "replay._core", "replay._codec",
                   "replay._store"},
    # The wire protocol and the command's client are standard library only; replay.connect's
    # clients also encode values with the codec and build the public value types.
    "replay._channel": {"replay._errors", "replay._codec", "replay._types", "replay._workflows",
                        "replay._checks"},
    # The web view: pages over a backend that the engine or the command gives it.
    "replay._ui": PURE | {"replay._channel"},
    "replay._engine": PURE | {"replay._codec", "replay._store", "replay._pg", "replay._channel",
                              "replay._ui"},
    "replay._cli": PURE | {"replay._codec", "replay._store", "replay._pg", "replay._channel",
                           "replay._engine", "replay._ui"},
    "replay.testing": PURE | {"replay._codec", "replay._engine"},
    "replay.aio": {"replay"},  # asyncio hosting: through the public API only
    "replay.sync": {"replay"},  # hosting in threads: through the public API only
    "replay": PURE | {"replay._codec", "replay._engine", "replay._channel"},
    "replay.__main__": {"replay._cli"},
}

# Each outside library may be imported by these parts only.
HOMES = {
    "duckdb": {"replay._store"},
    "msgpack": {"replay._codec"},
    "hypercorn": {"replay._ui"},
    "psycopg": {"replay._pg"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Modules imported at run time (imports under ``if TYPE_CHECKING:`` excluded)."""
    tree = ast.parse(path.read_text(), str(path))
    checking = {id(node) for stmt in ast.walk(tree) if isinstance(stmt, ast.If)
                and "TYPE_CHECKING" in ast.unparse(stmt.test) for node in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in checking:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "replay":
                found.update(f"replay.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def part_of(module: str) -> str:
    """The top-level module or subpackage a module belongs to: replay._store.x -> replay._store."""
    return ".".join(module.split(".")[:2])


def test_every_part_has_its_allowed_imports() -> None:
    assert {part_of(m) for m in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module: str) -> None:
    own = part_of(module)
    for imported in MODULES[module]:
        if imported.startswith("replay.") or imported == "replay":
            target = part_of(imported)
            assert target == own or target in ALLOWED[own], f"{module} imports {imported}"


@pytest.mark.parametrize("library", sorted(HOMES))
def test_outside_libraries_have_one_home(library: str) -> None:
    users = {part_of(m) for m, found in MODULES.items()
             if any(i == library or i.startswith(library + ".") for i in found)}
    assert users <= HOMES[library]


def test_the_pure_parts_import_no_trio_duckdb_or_msgpack() -> None:
    for module, found in MODULES.items():
        if part_of(module) in PURE:
            roots = {imported.split(".")[0] for imported in found}
            assert not roots & {"trio", "duckdb", "msgpack"}, module


def test_no_modules_import_each_other_in_a_loop() -> None:
    graph = {m: {i for i in found if i in MODULES and i != m} for m, found in MODULES.items()}
    # A package's __init__ re-exporting its own modules is not a loop of meaning.
    for module, found in graph.items():
        graph[module] = {i for i in found if not module.startswith(i + ".")}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                cycle = [*path[path.index(imported):], imported] if imported in path else path
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, [*path, imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_import_replay_does_not_import_the_testing_package() -> None:
    assert not any(i.startswith("replay.testing") for i in MODULES["replay"])


def test_import_replay_leaves_trio_testing_and_pytest_unimported() -> None:
    # They cost a program that does not test about a tenth of a second to import.
    found = subprocess.run(
        [sys.executable, "-c", "import sys, replay; "
         "print([m for m in ('trio.testing', 'pytest') if m in sys.modules])"],
        capture_output=True, text=True, check=True, timeout=60)
    assert found.stdout.strip() == "[]"


def test_the_store_package_is_the_only_home_of_duckdb() -> None:
    assert {m for m in MODULES if m.startswith("replay._store.")} >= {
        "replay._store._schema", "replay._store._writer_store", "replay._store._writer"}


PUBLIC = [
    "AsyncClient", "AsyncRemoteRun", "Client", "RemoteRun", "connect", "connect_async",
    "DatabaseError", "DatabaseLocked", "DuplicateKeyError", "EncodingError", "Engine",
    "EngineClosed", "Event", "LeaseLost", "NondeterminismError", "QueryError", "ReplayError",
    "ReplayInternalError", "Retry", "Run", "RunIdConflict", "RunInfo", "RunNotFound",
    "RunState", "RunSuspended", "SignalRejected", "Sleep", "Step", "StepFailed",
    "StepInterrupted", "StepTimeout", "Suspend", "SuspendTimeout", "WorkflowFailed",
    "WorkflowNotRegistered", "__version__", "current_step", "open_engine", "register_type",
    "run", "workflow",
    # parallel groups, child runs and cancellation
    "All", "Gather", "Gathered", "Race", "Child", "Cancelled", "ChildFailed", "RunFinished",
    # status notes, watching, continue-as-new
    "Note", "ContinueAsNew", "RunUpdate", "StepContext",
    # retention
    "PurgeReport",
]


def test_the_public_surface_is_pinned() -> None:
    assert sorted(replay.__all__) == sorted(PUBLIC)
