"""The web view: a local page of runs, their timelines and actions (``replay ui``).

The pages are plain server-rendered HTML over a `Backend`, which a running engine
(`replay._engine._ui_backend`) or the ``replay ui`` command (`replay._cli._ui`) gives
them; `serve` runs them on trio with hypercorn, imported only when serving, so that
``import replay`` works without the ``ui`` extra.
"""

from replay._ui._app import App
from replay._ui._backend import Backend, Facts, Outcome, Refused, Table, Update
from replay._ui._serve import INSTALL, checked_address, require_hypercorn, serve

__all__ = ["INSTALL", "App", "Backend", "Facts", "Outcome", "Refused", "Table", "Update",
           "checked_address", "require_hypercorn", "serve"]
