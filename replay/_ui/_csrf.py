"""What keeps other web sites out of the page: a form token, and the Host and Origin checks.

Any page the user's browser opens may send a form to ``http://127.0.0.1:8077/`` or
point a script at it, so three checks stand between it and the runs:

* Every form that acts carries a token: an HMAC of a secret drawn when the server
  starts. Another site cannot read it (the browser's same-origin rule), and a token
  from an earlier server (a restart, another port) is stale and refused.
* A request that acts must not come from another origin: a browser says where a form
  comes from in ``Origin`` (or ``Sec-Fetch-Site``), and one that is not this server is
  refused even with a token.
* Every request must name this server in ``Host``: a site that points its own name at
  127.0.0.1 (DNS rebinding) would otherwise be same-origin with the page and could
  read it, token included. A server bound to every interface (``0.0.0.0``) on purpose
  accepts any name.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping

_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_ANY = ("0.0.0.0", "::", "")


class Forbidden(Exception):
    """A request refused by these checks: HTTP 403 with this message."""


class Guard:
    """The checks of one server: its secret, and the host names it answers to.

    Args:
        host: The address the server listens on.
    """

    def __init__(self, host: str) -> None:
        self._secret = secrets.token_bytes(32)
        self._host = host
        self.port: int | None = None  # known once the server listens

    def token(self) -> str:
        """Return the form token of this server."""
        return hmac.new(self._secret, b"replay ui form", hashlib.sha256).hexdigest()

    def check_token(self, given: str | None) -> None:
        """Refuse a form without this server's token.

        Raises:
            Forbidden: The token is missing, or from another server (stale).
        """
        if not given:
            raise Forbidden("the form has no token, so nothing was done: reload the page "
                            "and submit the form again")
        if not hmac.compare_digest(given.encode(), self.token().encode()):
            raise Forbidden("the form's token is stale (the page was loaded from an earlier "
                            "run of the server), so nothing was done: reload the page and "
                            "submit the form again")

    def check_host(self, headers: Mapping[str, str]) -> None:
        """Refuse a request whose ``Host`` is not this server.

        Raises:
            Forbidden: The request names another host.
        """
        if self._host in _ANY:
            return
        host = headers.get("host", "")
        name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if not name:
            name, port = host, ""
        names = {self._host, f"[{self._host}]", *_LOOPBACK_NAMES}
        if name not in names or (port and self.port is not None and port != str(self.port)):
            raise Forbidden(f"this server answers to {self._host}, not to {host!r}: open "
                            "the address that replay printed")

    def check_origin(self, headers: Mapping[str, str]) -> None:
        """Refuse an action sent from a page of another site.

        Raises:
            Forbidden: ``Origin`` names another site, or ``Sec-Fetch-Site`` says so.
        """
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            raise Forbidden("the form was sent from another site, so nothing was done")
        origin = headers.get("origin")
        if origin is None:  # not a browser's cross-site request (they all send it)
            return
        if origin == "null" and site == "same-origin":  # the browser vouches for it
            return
        expected = "http://" + headers.get("host", "")
        if origin != expected:
            raise Forbidden(f"the form was sent from {origin}, not from this page, so "
                            "nothing was done")
