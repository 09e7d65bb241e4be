"""SPEC §9: layers import one way, and each outside library has one home."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "replay"

# Lower layers never import higher ones.
LAYERS = {
    "replay._errors": 0, "replay._version": 0, "replay._commands": 0,
    "replay._checks": 0, "replay._retry": 0,
    "replay._history": 0, "replay._interpreter": 0, "replay._workflows": 0,
    "replay._codec": 1, "replay._store": 1,
    "replay._clock": 2, "replay._model": 2, "replay._committer": 2, "replay._steps": 2,
    "replay._runner": 2, "replay._opening": 2, "replay._engine": 2, "replay._run": 2,
    "replay._timers": 2, "replay._parking": 2, "replay._handles": 2, "replay._lifecycle": 2,
    "replay._export": 1, "replay._workers": 2, "replay._serving": 2,
    # The live channel: its protocol is pure standard library; the engine serves it; the
    # command line (top layer) is its client.
    "replay._channel": 1, "replay._channel_server": 2,
    "replay._channel_client": 3, "replay._cli_source": 3, "replay._cli_format": 3,
    "replay._cli_resume": 3,
}
TOP = 3  # replay/__init__.py, the command line and replay.testing may import anything.

# Each outside library may be imported by these modules only.
HOMES = {
    "duckdb": {"replay._store"},
    "msgpack": {"replay._codec"},
}
PURE = {name for name, layer in LAYERS.items() if layer == 0}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


MODULES = {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def package_of(module: str) -> str:
    """The top-level module or package a module belongs to: replay._store.x -> replay._store."""
    return ".".join(module.split(".")[:2])


def layer(module: str) -> int:
    if module.startswith("replay.testing"):
        return TOP
    return LAYERS.get(package_of(module), TOP)


def test_every_private_module_has_a_layer() -> None:
    private = {m for m in MODULES if m.count(".") == 1 and m.split(".")[1].startswith("_")}
    assert private - {"replay.__main__", "replay._cli"} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module: str) -> None:
    for imported in MODULES[module]:
        if imported.startswith("replay."):
            target = ".".join(imported.split(".")[:2])
            assert layer(target) <= layer(module), f"{module} imports {imported}"


@pytest.mark.parametrize("library", sorted(HOMES))
def test_outside_libraries_have_one_home(library: str) -> None:
    users = {package_of(m) for m, found in MODULES.items()
             if any(i == library or i.startswith(library + ".") for i in found)}
    assert users <= HOMES[library]


def test_the_pure_core_imports_no_trio_duckdb_or_msgpack() -> None:
    for module in PURE:
        roots = {imported.split(".")[0] for imported in MODULES[module]}
        assert not roots & {"trio", "duckdb", "msgpack"}, module


def test_import_replay_does_not_import_the_testing_package() -> None:
    assert not any(i.startswith("replay.testing") for i in MODULES["replay"])


def test_the_store_package_is_the_only_home_of_duckdb() -> None:
    assert {m for m in MODULES if m.startswith("replay._store.")} >= {
        "replay._store._schema", "replay._store._writer_store"}
