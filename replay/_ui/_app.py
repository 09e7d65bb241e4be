"""The web view as an ASGI application: routes, forms, actions, and their errors.

`App` answers HTTP over a `Backend`; hypercorn serves it (`replay._ui._serve`) and
tests call it directly. Reads are ``GET``; what acts is a ``POST`` form with the
server's token (`replay._ui._csrf`), answered with a redirect to the run's page and
a one-time message on success. A refused action answers the run's page again with
the error on top and the form as typed, and its status says why (400 malformed,
403 refused token or origin, 404 no such run, 409 the run's state forbids it);
nothing is changed then.
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import trio

from replay._channel._protocol import MAX_DEPTH, WireError, to_wire
from replay._errors import EncodingError, QueryError, ReplayError, RunNotFound
from replay._ui import _pages as pages
from replay._ui._backend import Backend, Outcome, Refused
from replay._ui._csrf import Forbidden, Guard
from replay._ui._data import BadRequest, parse_filter, run_page, runs_page
from replay._ui._html import url
from replay._ui._pages import ActionForm, Flash
from replay._ui._sse import stream
from replay._ui._timeline import render

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_BODY = 1 << 20
MAX_ROWS = 1000  # rows the SQL page shows
_FLASHES = 200
# same-origin, not no-referrer: under no-referrer a browser sends a form's Origin as
# "null", and the origin check could not tell the page's own forms from a sandboxed one.
_SECURITY = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
             (b"cache-control", b"no-store"), (b"x-frame-options", b"DENY")]
_ROUTES = {"/": ("GET",), "/run": ("GET",), "/run/timeline": ("GET",),
           "/run/events": ("GET",), "/run/signal": ("POST",), "/run/resume": ("POST",),
           "/run/cancel": ("POST",), "/sql": ("GET", "POST"), "/favicon.ico": ("GET",)}


class Request:
    """One HTTP request: method, path, query parameters, headers, and its form."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        self.params = {name: values[0] for name, values in
                       parse_qs(query, keep_blank_values=True).items()}
        self.headers = {name.decode("latin-1").lower(): value.decode("latin-1")
                        for name, value in scope.get("headers", [])}
        self.receive = receive

    async def form(self) -> dict[str, str]:
        """Read an urlencoded form body.

        Raises:
            BadRequest: The body is larger than 1 MiB or not a form.
        """
        kind = self.headers.get("content-type", "").split(";")[0].strip()
        if kind != "application/x-www-form-urlencoded":
            raise BadRequest(f"expected a form (application/x-www-form-urlencoded), got "
                             f"{kind or 'no content type'}")
        body = bytearray()
        while True:
            message = await self.receive()
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                raise BadRequest("the form is larger than 1 MiB; send a smaller payload")
            if not message.get("more_body"):
                break
        return {name: values[0] for name, values in
                parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}

    def run_id(self, given: dict[str, str] | None = None) -> str:
        """Return the ``id`` parameter (of the form, if given).

        Raises:
            BadRequest: It is missing or empty.
        """
        run_id = (given if given is not None else self.params).get("id", "")
        if not run_id:
            raise BadRequest("no run id: open a run from the runs page (/run?id=RUN_ID)")
        return run_id


class App:
    """The web view's ASGI application over `backend`.

    Args:
        backend: Where the pages read and act.
        host: The address the server listens on (the ``Host`` names it accepts).
    """

    def __init__(self, backend: Backend, host: str = "127.0.0.1") -> None:
        self.backend = backend
        self.guard = Guard(host)
        self.stopping = trio.Event()  # set when the server stops: live streams end
        self._flashes: OrderedDict[str, Flash] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one ASGI connection (``http``, or the server's ``lifespan``)."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(Request(scope, receive), send)

    async def _http(self, request: Request, send: Send) -> None:
        try:
            self.guard.check_host(request.headers)
            await self._route(request, send)
        except Forbidden as error:
            await self._error(send, 403, str(error))
        except BadRequest as error:
            await self._error(send, 400, str(error))
        except RunNotFound as error:
            await self._error(send, 404, _not_found(error.run_id))
        except QueryError as error:
            await self._error(send, 500, f"reading the database failed: {error}")
        except Refused as error:
            await self._error(send, error.status, str(error))
        except ReplayError as error:  # e.g. EngineClosed: the engine is stopping
            await self._error(send, 503, f"{error}; reload the page once an engine runs")

    async def _route(self, request: Request, send: Send) -> None:
        allowed = _ROUTES.get(request.path)
        if allowed is None:
            await self._error(send, 404, f"there is no page at {request.path}: start from "
                              "the runs page")
            return
        if request.method not in allowed:
            await self._error(send, 405, f"{request.path} takes {' or '.join(allowed)}, not "
                              f"{request.method}", [(b"allow", ", ".join(allowed).encode())])
            return
        handler = getattr(self, "_" + request.method.lower() + request.path.replace("/", "_")
                          .replace(".", "_").rstrip("_"))
        await handler(request, send)

    # -- pages --

    async def _get(self, request: Request, send: Send) -> None:
        try:
            chosen = parse_filter(request.params)
        except BadRequest as error:
            chosen, flash = parse_filter({}), Flash(str(error), ok=False)
            data = await runs_page(self.backend, chosen)
            await _html(send, 400, pages.runs_html(data, self.backend.facts, flash))
            return
        data = await runs_page(self.backend, chosen)
        await _html(send, 200, pages.runs_html(data, self.backend.facts, Flash()))

    async def _get_run(self, request: Request, send: Send) -> None:
        flash = self._flashes.pop(request.params.get("flash", ""), Flash())
        await self._run(send, 200, request.run_id(), flash)

    async def _run(self, send: Send, status: int, run_id: str, flash: Flash,
                   typed: ActionForm | None = None) -> None:
        data = await run_page(self.backend, run_id)
        await _html(send, status, pages.run_html(data, self.backend.facts, self.guard.token(),
                                                 flash, typed))

    async def _get_run_timeline(self, request: Request, send: Send) -> None:
        data = await run_page(self.backend, request.run_id())
        await _html(send, 200, render(data.timeline, data.child_states))

    async def _get_run_events(self, request: Request, send: Send) -> None:
        run_id = request.run_id()
        after = request.headers.get("last-event-id") or request.params.get("after") or None
        if after is not None and not after.isdigit():
            raise BadRequest(f"the seq to resume after must be a whole number, got {after!r}")
        exists = await self.backend.query("SELECT 1 FROM replay_runs WHERE run_id = ?",
                                          [run_id], max_rows=1)
        if not exists.rows:
            raise RunNotFound(run_id)
        if not self.backend.facts.live:  # 204: the browser's EventSource stops trying
            await send({"type": "http.response.start", "status": 204, "headers": _SECURITY})
            await send({"type": "http.response.body", "body": b""})
            return
        await stream(self.backend, run_id, None if after is None else int(after), send,
                     request.receive, self.stopping)

    async def _get_sql(self, request: Request, send: Send) -> None:
        await _html(send, 200, pages.sql_html(request.params.get("query", ""), None,
                                              self.backend.facts, self.guard.token(), Flash(),
                                              self.backend.dialect))

    async def _post_sql(self, request: Request, send: Send) -> None:
        form = await request.form()
        query = form.get("query", "")
        facts, token = self.backend.facts, self.guard.token()
        try:
            self._check_form(request, form)
            if not query.strip():
                raise BadRequest("the query is empty: write one SELECT, or click an example")
            result = await self.backend.query(query, max_rows=MAX_ROWS)
        except (BadRequest, Forbidden, QueryError, Refused) as error:
            status = _status(error)
            await _html(send, status, pages.sql_html(query, None, facts, token,
                                                     Flash(_query_words(str(error)), ok=False),
                                                     self.backend.dialect))
            return
        await _html(send, 200, pages.sql_html(query, result, facts, token, Flash(),
                                              self.backend.dialect))

    async def _get_favicon_ico(self, request: Request, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": _SECURITY})
        await send({"type": "http.response.body", "body": b""})

    # -- actions --

    async def _post_run_signal(self, request: Request, send: Send) -> None:
        async def signal(form: dict[str, str]) -> Outcome:
            key = form.get("key", "").strip()
            if not key:
                raise BadRequest("the key is empty: give the key of the Suspend to answer")
            return await self.backend.signal(form["id"], key, _payload(form.get("payload", "")))
        await self._act(request, send, signal)

    async def _post_run_resume(self, request: Request, send: Send) -> None:
        await self._act(request, send, lambda form: self.backend.resume(form["id"]))

    async def _post_run_cancel(self, request: Request, send: Send) -> None:
        await self._act(request, send, lambda form: self.backend.cancel(
            form["id"], form.get("reason", "").strip() or None))

    async def _act(self, request: Request, send: Send,
                   action: Callable[[dict[str, str]], Awaitable[Outcome]]) -> None:
        """Check the form, act, and redirect to the run's page with what happened."""
        form = await request.form()
        run_id = request.run_id(form)
        typed = ActionForm(form.get("key", ""), form.get("payload", ""), form.get("reason", ""))
        try:
            self._check_form(request, form)
            outcome = await action(form)
        except RunNotFound:
            raise
        except (BadRequest, Forbidden, EncodingError, ReplayError, ValueError,
                TypeError) as error:
            await self._run(send, _status(error), run_id, Flash(str(error), ok=False), typed)
            return
        text = outcome.message if outcome.warning is None else (
            f"{outcome.message}\nwarning: {outcome.warning}")
        token = secrets.token_urlsafe(12)
        self._flashes[token] = Flash(text)
        while len(self._flashes) > _FLASHES:
            self._flashes.popitem(last=False)
        location = url("/run", id=run_id, flash=token)
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", location.encode()), *_SECURITY]})
        await send({"type": "http.response.body", "body": b""})

    def _check_form(self, request: Request, form: dict[str, str]) -> None:
        self.guard.check_origin(request.headers)
        self.guard.check_token(form.get("csrf"))

    async def _error(self, send: Send, status: int, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
        await _html(send, status, pages.error_html(status, message, self.backend.facts),
                    headers or [])


def _payload(text: str) -> Any:
    """Return the signal's payload from its JSON text (empty: null).

    Raises:
        BadRequest: It is not JSON, or nests too deeply to send.
    """
    if not text.strip():
        return None
    try:
        value = json.loads(text)
        to_wire(value)
    except (RecursionError, WireError):
        raise BadRequest(f"the payload nests more than {MAX_DEPTH} arrays and objects deep; "
                         "send a flatter value") from None
    except ValueError as error:
        raise BadRequest(f"the payload is not JSON ({error}): write JSON such as true, 42, "
                         f'"text" or {{"approved": true}}; nothing was sent') from None
    return value


def _status(error: Exception) -> int:
    if isinstance(error, Forbidden):
        return 403
    if isinstance(error, Refused):
        return error.status
    if isinstance(error, BadRequest | EncodingError | QueryError | ValueError | TypeError):
        return 400
    return 409  # the run's state forbids it (finished, the key already has a value, ...)


def _query_words(text: str) -> str:
    """Say the engine's query errors in the page's words."""
    return text.replace("engine.sql() only reads", "the SQL page only reads").replace(
        "engine.sql() runs exactly", "the SQL page runs exactly")


def _not_found(run_id: str) -> str:
    return (f"run not found: there is no run with run_id {run_id!r} in this database; find "
            "it on the runs page (search by run id)")


async def _html(send: Send, status: int, text: str,
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send a whole HTML response, its scripts allowed by a nonce (nothing else runs)."""
    nonce = secrets.token_urlsafe(16)
    body = text.replace("<script>", f'<script nonce="{nonce}">').encode()
    policy = (f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
              "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
              "form-action 'self'; base-uri 'none'")
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"content-security-policy", policy.encode()), *_SECURITY, *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
