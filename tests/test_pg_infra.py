"""The PostgreSQL test infrastructure in tests/conftest.py: `pg_url` and `both_stores`.

`pg_url` needs a server (REPLAY_TEST_POSTGRES; scripts/postgres-cluster starts one);
the tests here that need one take conftest's `_pg_admin` (skip, or fail under CI, without).
The isolated sessions (`pytester`) load a copy of tests/conftest.py, so they test the
fixtures and hooks this suite really uses.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]

POSTGRES_ENV = "REPLAY_TEST_POSTGRES"
CONFTEST = (Path(__file__).parent / "conftest.py").read_text()
# Nothing but pytest, this suite's conftest and replay's plugin; markers must be declared.
PLAIN = ("-p", "no:trio", "-p", "no:anyio", "--strict-markers")


def schema_of(url: str) -> str:
    """The schema `pg_url` put in the URL's search path."""
    options = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["options"]
    assert len(options) == 1 and options[0].startswith("-csearch_path=")
    return options[0].removeprefix("-csearch_path=")


def schema_exists(server: str, schema: str) -> bool:
    import psycopg

    with psycopg.connect(server, autocommit=True) as con:
        found = con.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                            (schema,)).fetchone()
    assert found is not None
    return bool(found[0])


def test_pg_url_is_an_empty_schema_of_its_own(pg_url: str) -> None:
    import psycopg

    schema = schema_of(pg_url)
    assert schema.startswith("t_") and len(schema) == 2 + 32
    with psycopg.connect(pg_url, autocommit=True) as con:
        assert con.execute("SELECT current_schema()").fetchone() == (schema,)
        assert con.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n "
                           "ON n.oid = c.relnamespace WHERE n.nspname = %s",
                           (schema,)).fetchone() == (0,)
        # Unqualified names land in the test's schema, and it is writable.
        con.execute("CREATE TABLE replay_meta (name text, value text)")
        con.execute("INSERT INTO replay_meta VALUES ('a', 'b')")
        assert con.execute(f"SELECT value FROM {schema}.replay_meta").fetchone() == ("b",)


def test_pg_url_keeps_the_server_query_string(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, _pg_admin: Any) -> None:
    server = _pg_admin.server
    joiner = "&" if urllib.parse.urlsplit(server).query else "?"
    monkeypatch.setenv(POSTGRES_ENV, f"{server}{joiner}connect_timeout=10")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_query='''
import urllib.parse

import psycopg


def test_query(pg_url):
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(pg_url).query)
    assert query["connect_timeout"] == ["10"]
    assert query["options"][0].startswith("-csearch_path=t_")
    with psycopg.connect(pg_url) as con:
        assert con.execute("SELECT current_schema()").fetchone()[0].startswith("t_")
''')
    pytester.runpytest(*PLAIN).assert_outcomes(passed=1)


def test_each_test_gets_a_new_schema_dropped_after_it(
        pytester: pytest.Pytester, _pg_admin: Any) -> None:
    server = _pg_admin.server
    seen = pytester.path / "schemas.txt"
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_twice=f'''
import pathlib

import psycopg

SEEN = pathlib.Path({str(seen)!r})


def current(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute("CREATE TABLE left_behind (x int)")
        return con.execute("SELECT current_schema()").fetchone()[0]


def test_first(pg_url):
    SEEN.write_text(current(pg_url) + "\\n")


def test_second(pg_url):
    with SEEN.open("a") as seen:
        seen.write(current(pg_url) + "\\n")
''')
    pytester.runpytest(*PLAIN).assert_outcomes(passed=2)
    first, second = seen.read_text().split()
    assert first != second
    assert not schema_exists(server, first)
    assert not schema_exists(server, second)


def test_without_a_server_postgres_tests_skip(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POSTGRES_ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_pg="def test_pg(pg_url):\n    pass\n")
    result = pytester.runpytest(*PLAIN, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"*set {POSTGRES_ENV}*"])


def test_without_a_server_ci_fails(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POSTGRES_ENV, raising=False)
    monkeypatch.setenv("CI", "1")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_pg="def test_pg(pg_url):\n    pass\n")
    result = pytester.runpytest(*PLAIN)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*CI needs a PostgreSQL server*.ci/run*"])


BOTH = '''
import pytest

pytestmark = pytest.mark.both_stores


def test_uses_db(db):
    pass


@pytest.fixture
def engine_path(db):
    return db


def test_uses_db_through_a_fixture(engine_path):
    pass


def test_does_not_use_db():
    pass
'''

ONE = '''
def test_uses_db(db):
    assert db.endswith("test.duckdb")
'''


def test_both_stores_runs_tests_using_db_twice(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_both=BOTH, test_one=ONE)
    result = pytester.runpytest(*PLAIN, "--collect-only", "-q")
    assert sorted(line for line in result.stdout.lines if "::" in line) == [
        "test_both.py::test_does_not_use_db",
        "test_both.py::test_uses_db[duckdb]",
        "test_both.py::test_uses_db[postgres]",
        "test_both.py::test_uses_db_through_a_fixture[duckdb]",
        "test_both.py::test_uses_db_through_a_fixture[postgres]",
        "test_one.py::test_uses_db",  # unmarked modules: unchanged
    ]


@pytest.mark.both_stores
def test_both_stores_gives_a_file_or_a_schema(db: str, request: pytest.FixtureRequest) -> None:
    store = request.node.callspec.params["db"]
    assert request.node.name == f"test_both_stores_gives_a_file_or_a_schema[{store}]"
    if store == "duckdb":
        assert db.endswith("test.duckdb") and not os.path.exists(db)
    else:
        assert store == "postgres"
        assert db.startswith(("postgresql://", "postgres://"))
        assert schema_of(db).startswith("t_")


def test_without_the_marker_db_is_a_file(db: str, request: pytest.FixtureRequest) -> None:
    assert not hasattr(request.node, "callspec")
    assert request.node.name == "test_without_the_marker_db_is_a_file"
    assert db.endswith("test.duckdb") and not os.path.exists(db)
