"""Test configuration: `async def` tests run under trio with a virtual clock.

Every coroutine test function runs in its own `trio.run` with
`MockClock(autojump_threshold=0)`, so sleeps, back-offs and timeouts take no real
time. The clock is available to the test through the `clock` fixture.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import duckdb
import pytest
import trio
import trio.testing

from replay._core._records import Record
from replay._core._state import RunStatus, fold
from replay._errors import DatabaseError
from replay._store import Store, utc_or_none
from replay._store._rows import history_records
from replay._store._schema import COLUMNS
from replay._types import RunState

if TYPE_CHECKING:  # psycopg is optional (the postgres extra): imported where it is used
    import psycopg
    from psycopg import sql


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """The virtual clock the test's trio run uses."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    run_clock = pyfuncitem.funcargs.get("clock") or trio.testing.MockClock(autojump_threshold=0)
    trio.run(functools.partial(pyfuncitem.obj, **kwargs), clock=run_clock)
    return True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Coroutine tests need the clock fixture even when they do not ask for it.
    for item in items:
        is_async = isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj)
        if is_async and "clock" not in item.fixturenames:
            item.fixturenames.append("clock")


# -- The store under test: a DuckDB file, and with `both_stores` a PostgreSQL schema too --
#
# A module with `pytestmark = pytest.mark.both_stores` runs every test that uses `db`
# (directly or through another fixture) twice: `[duckdb]` with a file path and
# `[postgres]` with a `pg_url`. Other modules get the file path alone, as always. In such
# a module, a test marked `duckdb_only` (it reads the DuckDB file itself, or asserts what
# only DuckDB does) runs on the file alone.
# PostgreSQL tests need a server: REPLAY_TEST_POSTGRES, the URL of a superuser on it
# (.ci/run starts a throwaway one with scripts/postgres-cluster).

POSTGRES_ENV = "REPLAY_TEST_POSTGRES"
STORES = ("duckdb", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_stores: run each test that uses `db` on a DuckDB file and on a "
                   f"PostgreSQL schema (the server named by {POSTGRES_ENV})")
    config.addinivalue_line(
        "markers", "duckdb_only: in a both_stores module, run on the DuckDB file alone (the "
                   "test reads the file itself or checks what only DuckDB does)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_stores"):
        only_duckdb = metafunc.definition.get_closest_marker("duckdb_only") is not None
        metafunc.parametrize("db", STORES[:1] if only_duckdb else STORES, indirect=True)


@pytest.fixture
def db(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    """A path for a fresh database file, or under `both_stores` also a fresh schema's URL."""
    if getattr(request, "param", "duckdb") == "postgres":
        yield request.getfixturevalue("pg_url")
    else:
        yield str(tmp_path / "test.duckdb")  # type: ignore[operator]


class _PgAdmin:
    """One autocommit connection to the test server for the whole session."""

    def __init__(self, server: str) -> None:
        self.server = server
        self._con: psycopg.Connection[Any] | None = None

    def execute(self, query: sql.Composed) -> None:
        import psycopg

        if self._con is None or self._con.closed or self._con.broken:
            try:
                self._con = psycopg.connect(self.server, autocommit=True,
                                            application_name="replay-tests")
            except psycopg.Error as error:
                # Not the URL itself: it may hold a password.
                pytest.fail(f"cannot connect to the server {POSTGRES_ENV} names: {error}",
                            pytrace=False)
            # A test that left a transaction open on its tables would make the drop wait
            # for ever: fail its teardown instead.
            self._con.execute("SET lock_timeout = '30s'")
        self._con.execute(query)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()


@pytest.fixture(scope="session")
def _pg_admin() -> Iterator[_PgAdmin]:
    server = os.environ.get(POSTGRES_ENV)
    if not server:
        if os.environ.get("CI"):  # CI must run the PostgreSQL tests: a missing server fails it
            pytest.fail(f"CI needs a PostgreSQL server for these tests: set {POSTGRES_ENV} to "
                        f"a superuser's URL (.ci/run starts one with scripts/postgres-cluster)",
                        pytrace=False)
        pytest.skip(f"PostgreSQL tests: set {POSTGRES_ENV} to a server URL, e.g. "
                    f"postgresql://postgres@127.0.0.1:5432/postgres (a superuser; each test "
                    f"gets its own schema), or start one with scripts/postgres-cluster")
    try:
        import psycopg  # noqa: F401
    except ModuleNotFoundError:
        pytest.fail(f"{POSTGRES_ENV} is set but psycopg is missing: "
                    f'pip install -e ".[dev]" (or ".[postgres]")', pytrace=False)
    admin = _PgAdmin(server)
    try:
        yield admin
    finally:
        admin.close()


@pytest.fixture
def pg_url(_pg_admin: _PgAdmin) -> Iterator[str]:
    """The test server's URL with a fresh, empty schema as the search path.

    The schema (`t_<uuid hex>`) is dropped, with all it holds, after the test.
    """
    from psycopg import sql

    schema = f"t_{uuid.uuid4().hex}"
    _pg_admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    server = _pg_admin.server
    joiner = "&" if urllib.parse.urlsplit(server).query else "?"
    if server.endswith(("?", "&")):
        joiner = ""
    try:
        yield f"{server}{joiner}options=-csearch_path%3D{schema}"
    finally:
        _pg_admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


# -- Every file a test closes: the replay_runs view agrees with the run-state fold --
#
# `replay._core._state.fold` (Python: the engine, the command line, the history checker)
# and the `replay_runs` view (SQL: what users query) both derive a run's state from its
# newest state-carrying record. Whenever a store closes a database file during the test
# session, every run in the file is compared (two queries on one snapshot, just before
# the file closes), and the test that was running fails on a disagreement. In-memory
# stores are skipped, and so are runs a test damaged on purpose (a missing
# `recorded_at`, an unknown state): the fold refuses those by design.

_VIEW_ROWS = ("SELECT run_id, state, waiting_for, wake_at, status_text, error_type, error, "
              "output_json, status_json, generation FROM replay_runs ORDER BY run_id")
_STATES = frozenset(state.value for state in RunState)
_fold_disagreements: list[str] = []
_fold_checks: dict[str, float] = {"files": 0, "runs": 0, "seconds": 0.0}
_fold_lock = threading.Lock()


def view_disagreements(con: duckdb.DuckDBPyConnection, path: str) -> tuple[int, list[str]]:
    """Compare `replay_runs` with `fold` for every run of the file open on `con`.

    Returns:
        How many runs were compared, and one line per disagreement.
    """
    cursor = con.cursor()
    try:
        cursor.execute("BEGIN TRANSACTION")  # both reads see the same records
        view = cursor.execute(_VIEW_ROWS).fetchall()
        rows = cursor.execute(
            f"SELECT {COLUMNS} FROM replay_event_all ORDER BY run_id, seq").fetchall()
        cursor.execute("COMMIT")
    finally:
        cursor.close()
    by_run: dict[Any, list[tuple[Any, ...]]] = {}
    for row in rows:
        by_run.setdefault(row[1], []).append(row)
    problems: list[str] = []
    compared: set[str] = set()
    for run_id, *columns in view:
        run_rows = by_run.get(run_id, [])
        if _damaged(run_rows):
            continue
        records = history_records(run_rows, path)
        compared.add(run_id)
        status = fold(records)
        shown = (columns[0], columns[1], utc_or_none(columns[2]), *columns[3:])
        expected = None if status is None else _view_columns(status, records)
        if shown != expected:
            problems.append(f"{path}: run {run_id!r}: replay_runs has (state, waiting_for, "
                            f"wake_at, status_text, error_type, error, output_json, "
                            f"status_json, generation) = "
                            f"{shown!r}, the fold of its {len(records)} records gives "
                            f"{expected!r}")
    for run_id, run_rows in by_run.items():
        started = any(row[4] == "run" and row[5] == "started" for row in run_rows)
        if started and run_id not in compared and not _damaged(run_rows):
            status = fold(history_records(run_rows, path))
            problems.append(f"{path}: run {run_id!r} has a run/started record but no row "
                            f"in replay_runs; the fold gives {status!r}")
    return len(compared), problems


def _damaged(rows: list[tuple[Any, ...]]) -> bool:
    """Whether a test damaged the run on purpose: the fold refuses it by design.

    A row without `recorded_at` (the loaders raise `DatabaseError`) or with an unknown
    run state (the engine loads such a run as failed).
    """
    return any(row[11] is None or (row[16] is not None and row[16] not in _STATES)
               for row in rows)


def _view_columns(status: RunStatus, records: list[Record]) -> tuple[Any, ...]:
    """The `replay_runs` columns a run in `status` should have."""
    output_json = None
    if status.output is not None:
        # The JSON rendering recorded with the very value the fold took as the output.
        output_json = next(record.value_json for record in reversed(records)
                           if record.run_state is not None and record.value == status.output)
    status_json = None
    if status.note_value is not None:
        # The newest note's JSON rendering (its status value).
        status_json = next(record.value_json for record in reversed(records)
                           if record.kind == "note")
    generation = max((record.generation for record in records), default=0)
    return (status.state.value, status.waiting_for, status.wake_at, status.shown_status,
            status.error_type, status.error, output_json, status_json, generation)


def _checked_close(close: Callable[[Store], None]) -> Callable[[Store], None]:
    def checked(store: Store) -> None:
        if store.path == ":memory:":
            close(store)
            return
        began = time.perf_counter()
        try:
            runs, problems = view_disagreements(store._con, store.path)
        except (duckdb.Error, DatabaseError):
            runs, problems = 0, []  # a file the test broke: there is nothing to compare
        except Exception as error:  # a bug in this check: say so, and close the file anyway
            runs, problems = 0, [f"{store.path}: comparing replay_runs with the fold "
                                 f"raised {error!r}"]
        with _fold_lock:
            _fold_disagreements.extend(problems)
            _fold_checks["files"] += 1
            _fold_checks["runs"] += runs
            _fold_checks["seconds"] += time.perf_counter() - began
        close(store)
    return checked


def _fail_on_disagreements() -> None:
    with _fold_lock:
        found = list(_fold_disagreements)
        _fold_disagreements.clear()
    if found:
        pytest.fail("the replay_runs view disagrees with replay._core._state.fold:\n"
                    + "\n".join(found), pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _fold_check_on_close() -> Iterator[None]:
    """Wrap `Store.close` for the session: each closed file is compared first."""
    patch = pytest.MonkeyPatch()
    patch.setattr(Store, "close", _checked_close(Store.close))
    try:
        yield
    finally:
        patch.undo()
    _fail_on_disagreements()  # files closed after the last test


@pytest.fixture(autouse=True)
def _view_agrees_with_fold(_fold_check_on_close: None) -> Iterator[None]:
    """Fail the test during which a closed file's view and fold disagreed."""
    yield
    _fail_on_disagreements()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _fold_checks["files"]:
        terminalreporter.write_line(
            f"replay_runs view vs fold: {_fold_checks['runs']:.0f} runs in "
            f"{_fold_checks['files']:.0f} closed files compared "
            f"(checking took {_fold_checks['seconds']:.2f} s)")
