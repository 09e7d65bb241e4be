"""Opening a database for an engine: option checks and the one-engine-per-file rule.

DuckDB refuses a second *process* on a file, but within one process a second
`duckdb.connect` to the same file silently shares the first connection's database.
Two engines sharing a file would break the single-writer design, so this module keeps
a registry of files open in this process and applies the same rule to both cases.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable
from datetime import timedelta
from os import PathLike

import trio

from replay._checks import checked_duration
from replay._engine._clock import in_thread
from replay._errors import DatabaseLocked
from replay._pg._url import is_postgres_url, require_psycopg
from replay._retry import Retry
from replay._store import EngineStore, Store, WorkerOptions, checked_timeout, file_keys
from replay._ui import checked_address, require_hypercorn

_OPEN_HERE: set[str] = set()
_OPEN_LOCK = threading.Lock()
_LOCK_POLL_SECONDS = 0.05


def validate_options(
    durability: object,
    shutdown_timeout: object,
    lock_timeout: object,
    max_threads: object,
    default_retry: object,
    always_replay: object,
    cache_size: object = 1000,
    query_timeout: object = 30.0,
) -> None:
    """Check `open_engine`'s options before anything is opened.

    Raises:
        TypeError: An option has the wrong type.
        ValueError: An option has a wrong value.
    """
    if durability not in ("fsync", "none"):
        raise ValueError(f"durability must be 'fsync' or 'none', got {_show(durability)}")
    for name, value in (("shutdown_timeout", shutdown_timeout), ("lock_timeout", lock_timeout)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} must be a number of seconds, got {_show(value)}")
        if math.isnan(value) or value < 0:
            raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
    validate_count("max_threads", max_threads)
    if default_retry is not None and not isinstance(default_retry, Retry):
        raise TypeError(
            f"default_retry must be a replay.Retry or None, got {_show(default_retry)}"
        )
    if not isinstance(always_replay, bool):
        raise TypeError(f"always_replay must be a bool, got {_show(always_replay)}")
    if isinstance(cache_size, bool) or not isinstance(cache_size, int):
        raise TypeError(f"cache_size must be an int, got {_show(cache_size)}")
    if cache_size < 0:
        raise ValueError(f"cache_size must be >= 0, got {cache_size!r}")
    checked_timeout("query_timeout", query_timeout)


def validate_count(name: str, value: object) -> None:
    """Check an option that counts something and must be at least one.

    Raises:
        TypeError: `value` is not an int.
        ValueError: `value` is below 1.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {_show(value)}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")


def checked_code_version(code_version: object) -> str | None:
    """Return the code version to stamp: the argument, else ``REPLAY_CODE_VERSION``.

    Raises:
        TypeError: It is not a string.
        ValueError: It is empty or longer than 200 characters.
    """
    if code_version is None:
        code_version = os.environ.get("REPLAY_CODE_VERSION") or None
        if code_version is None:
            return None
    if not isinstance(code_version, str):
        raise TypeError(f"code_version must be a string or None, got {_show(code_version)}")
    if not code_version.strip() or len(code_version) > 200:
        raise ValueError(f"code_version must be a non-empty string of at most 200 "
                         f"characters, e.g. '2026.12.06', got {_show(code_version)}")
    return code_version


def checked_retention(retention: object) -> timedelta | None:
    """Return `open_engine`'s `retention` as a `timedelta` (None: no periodic purge).

    Raises:
        TypeError: It is not a `timedelta`, a number of seconds or None.
        ValueError: It is negative or longer than 100 years.
    """
    if retention is None:
        return None
    return checked_duration("open_engine(retention=...)", "retention", retention,
                            positive=False)


def checked_ui(ui: object) -> tuple[str, int] | None:
    """Return `open_engine`'s `ui` address, once the web view is known to be installed.

    Raises:
        TypeError: It is not a (host, port) pair or None.
        ValueError: The host is empty or the port is outside 0-65535.
        ModuleNotFoundError: hypercorn (the ``ui`` extra) is not installed.
    """
    if ui is None:
        return None
    address = checked_address(ui)
    require_hypercorn()
    return address


def database_path(path: object) -> str:
    """Return `path` as the string DuckDB opens.

    Raises:
        TypeError: `path` is not a str or path-like.
    """
    if isinstance(path, str):
        return path
    if isinstance(path, PathLike):
        return str(os.fspath(path))
    raise TypeError(
        f"path must be a str or pathlib.Path (or ':memory:'), got {_show(path)}"
    )


def checked_workers(path: str, worker: object, lease: object, max_runs: object,
                    poll_interval: object, workflows: tuple[str, ...]) -> WorkerOptions:
    """Check the options of an engine sharing a PostgreSQL schema with others.

    Raises:
        TypeError: One has the wrong type.
        ValueError: One has a wrong value, or is given for a DuckDB file.
    """
    options = WorkerOptions()
    given = (worker, lease, max_runs, poll_interval) != (
        None, options.lease, options.max_runs, options.poll_interval)
    if not is_postgres_url(path):
        if given:
            raise ValueError(
                "worker=, lease=, max_runs= and poll_interval= apply to a PostgreSQL "
                "database shared by several engines; a DuckDB file has one engine")
        return options
    if worker is None:
        worker = options.worker
    if not isinstance(worker, str):
        raise TypeError(f"worker must be a str, got {_show(worker)}")
    if not worker or len(worker) > 200 or "\x00" in worker:
        raise ValueError(
            f"worker must be a non-empty name of at most 200 characters without NUL, "
            f"got {worker!r}")
    for name, value in (("lease", lease), ("poll_interval", poll_interval)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number of seconds, got {_show(value)}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    if max_runs is not None and (isinstance(max_runs, bool) or not isinstance(max_runs, int)):
        raise TypeError(f"max_runs must be an int or None, got {_show(max_runs)}")
    if max_runs is not None and max_runs < 0:
        raise ValueError(f"max_runs must be >= 0, got {max_runs!r}")
    return WorkerOptions(worker, float(lease), max_runs,  # type: ignore[arg-type]
                         float(poll_interval), workflows)  # type: ignore[arg-type]


async def open_store(
    path: str, durability: str, lock_timeout: float, workers: WorkerOptions | None = None
) -> tuple[EngineStore, Callable[[], None]]:
    """Open `path` for one engine, waiting up to `lock_timeout` for another to let go.

    Returns:
        The store, and a function to call once the store is closed.

    Raises:
        DatabaseLocked: Another engine (in this process or another) holds the file.
        DatabaseError: The file is not a usable replay database.
    """
    deadline = trio.current_time() + lock_timeout
    while True:
        try:
            store, claimed = await _try_open(path, durability, workers)
        except DatabaseLocked:
            if trio.current_time() >= deadline:
                raise
            await trio.sleep(_LOCK_POLL_SECONDS)
            continue
        return store, functools.partial(_release, claimed)


async def _try_open(path: str, durability: str,
                    workers: WorkerOptions | None) -> tuple[EngineStore, set[str]]:
    if is_postgres_url(path):
        return await in_thread(_open_postgres, path, durability, workers), set()
    keys = file_keys(path)
    with _OPEN_LOCK:  # engines of several threads (replay.sync, replay.run) may race
        if keys & _OPEN_HERE:
            raise DatabaseLocked(
                f"database {path!r} is already open by another engine in this process "
                f"(PID {os.getpid()}); use that engine, or close it before opening another",
                pid=os.getpid(),
            )
        _OPEN_HERE.update(keys)
    try:
        store = await in_thread(Store, path, durability)
    except BaseException:
        _release(keys)
        raise
    # The file exists now: also claim its inode, so hard links find it taken.
    inode = file_keys(path) - keys
    with _OPEN_LOCK:
        _OPEN_HERE.update(inode)
    return store, keys | inode


def _open_postgres(url: str, durability: str, workers: WorkerOptions | None) -> EngineStore:
    require_psycopg()
    from replay._pg._store import PgStore  # psycopg is optional: imported only here

    return PgStore(url, durability, workers)


def _release(keys: set[str]) -> None:
    with _OPEN_LOCK:
        _OPEN_HERE.difference_update(keys)


def _show(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"
