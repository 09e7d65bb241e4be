"""The web view's HTML: escaping, the page frame, and its small inline style and script.

Every page is whole HTML built from strings; every value from the database goes
through `esc` (text and attributes alike), so a run id, key or value can never become
markup. The style and the script are inline and short, and nothing is loaded from
anywhere else: the page works offline and makes no request but to its own server.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from replay._ui._backend import Facts

STATES = ("running", "sleeping", "suspended", "completed", "failed", "cancelled")


def esc(value: object) -> str:
    """Return `value` as text safe in HTML text and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def url(path: str, **params: object) -> str:
    """Return `path` with the given query parameters (None and "" left out)."""
    given = {name: str(value) for name, value in params.items()
             if value is not None and value != ""}
    return path + ("?" + urlencode(given) if given else "")


def run_url(run_id: str) -> str:
    """Return the address of a run's page (a query parameter: child run ids hold "/")."""
    return url("/run", id=run_id)


def stamp(value: Any) -> str:
    """Return a time as ``YYYY-MM-DD HH:MM:SS.mmm`` in UTC, or the value as text."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return "" if value is None else str(value)


def pretty_json(text: Any) -> str:
    """Return JSON text indented for a ``<pre>`` (text that is not JSON as it is)."""
    if text is None:
        return ""
    if not isinstance(text, str):
        return json.dumps(text, indent=2, ensure_ascii=False, default=str)
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def message_box(text: str | None, ok: bool) -> str:
    """Return the ``#message`` box (empty, and hidden, without text)."""
    if not text:
        return '<div id="message" hidden></div>'
    kind = "ok" if ok else "error"
    return f'<div id="message" class="{kind}" role="status">{esc(text)}</div>'


def page(title: str, body: str, facts: Facts, *, message: str | None = None,
         ok: bool = True, script: str = "") -> str:
    """Return a whole page: header (navigation, whether an engine runs), message, body."""
    live = "on" if facts.live else "off"
    if facts.live:
        said = f"live: {facts.description}"
    elif facts.noun == "database":  # an engine may run on it: the page just cannot follow
        said = f"{facts.description}, read directly: reload the page to see what changed"
    else:
        said = (f"{facts.description}: no engine is running, so nothing changes here "
                "until one opens the file")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)} · replay</title><style>{CSS}</style></head><body>"
        "<header><a class=\"brand\" href=\"/\">replay</a><nav>"
        "<a href=\"/\">Runs</a><a href=\"/sql\">SQL</a></nav>"
        f"<span id=\"live\" data-live=\"{live}\">{esc(said)}</span></header><main>"
        f"{message_box(message, ok)}{body}</main>"
        f"<script>{SCRIPT}{script}</script></body></html>")


CSS = """
:root{--ok:#2e7d32;--bad:#c62828;--wait:#f9a825;--run:#1565c0;--off:#757575;
--note:#6a1b9a;--line:#ddd;font-family:system-ui,sans-serif;font-size:14px}
body{margin:0;color:#222;background:#fafafa}
header{display:flex;gap:1.5em;align-items:center;padding:.6em 1.2em;background:#263238;color:#eee}
header a{color:#eee;text-decoration:none}.brand{font-weight:bold}nav a{margin-right:1em}
#live{margin-left:auto;font-size:.9em}#live[data-live=on]::before{content:"● ";color:#66bb6a}
#live[data-live=off]::before{content:"○ ";color:#bbb}
main{padding:1em 1.2em;max-width:1400px}
#message{padding:.6em 1em;margin-bottom:1em;border-radius:4px;white-space:pre-wrap}
#message.ok{background:#e8f5e9;border:1px solid var(--ok)}
#message.error{background:#ffebee;border:1px solid var(--bad)}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid var(--line);padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#eceff1}td pre{margin:0;max-width:40em;overflow:auto}
pre{background:#fff;border:1px solid var(--line);padding:.5em;overflow:auto;max-height:20em}
.state{display:inline-block;padding:0 .5em;border-radius:3px;color:#fff;background:var(--off)}
.state[data-state=running]{background:var(--run)}.state[data-state=completed]{background:var(--ok)}
.state[data-state=failed]{background:var(--bad)}.state[data-state=sleeping],
.state[data-state=suspended]{background:var(--wait);color:#222}
#counts a{margin-right:1em;text-decoration:none}#counts a.chosen{font-weight:bold}
.count{background:#eceff1;border-radius:8px;padding:0 .5em;margin-left:.3em}
form.inline{display:inline-flex;gap:.5em;align-items:center;flex-wrap:wrap;margin:.5em 0}
.actions form{border:1px solid var(--line);background:#fff;padding:.5em;margin:.5em 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}dt{font-weight:bold}
#timeline{background:#fff;border:1px solid var(--line);padding:.5em}
.lane{display:flex;align-items:center;min-height:1.6em;border-bottom:1px dotted #eee}
.label{width:20em;box-sizing:border-box;flex:none;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;
font-family:monospace;font-size:.9em}
.track{position:relative;flex:1;height:1.1em;background:#f5f5f5}
.segment{position:absolute;top:0;height:100%;min-width:3px;border-radius:2px;background:var(--off)}
.segment[data-outcome=completed]{background:var(--ok)}.segment[data-outcome=failed],
.segment[data-outcome=timed_out]{background:var(--bad)}
.segment[data-outcome=running]{background:var(--run)}
.segment[data-outcome=cancelled],.segment[data-outcome=abandoned],
.segment[data-outcome=interrupted]{background:#9e9e9e}
.segment[data-outcome=late]{background:#bcaaa4}
.segment.wait{height:40%;top:30%;opacity:.8}.segment.wait[data-outcome=waiting]{background:var(--wait)}
.segment.wait[data-outcome=backoff]{background:#ffcc80}
.segment.open{border-right:3px dashed #fff8}
#runs td:first-child{white-space:nowrap}
.segment.point{width:3px;min-width:3px}.segment[data-outcome=note]{background:var(--note)}
.segment[data-outcome=signal]{background:#00838f}
.group .label{border-left:3px solid #b0bec5}.group>.lane:first-child .label{font-weight:bold}
.not-started .label{color:#999}.child-link{margin-left:.3em}
.axis{display:flex;justify-content:space-between;font-size:.8em;color:#666;margin-left:20em}
.legend span{margin-right:1em;font-size:.85em}.legend i{display:inline-block;width:1em;
height:.7em;margin-right:.3em;vertical-align:middle}
textarea{width:100%;font-family:monospace}a.example{display:block;margin:.2em 0}
.pages a{margin-right:1em}
"""

SCRIPT = """
document.querySelectorAll('form[data-confirm]').forEach(function(f){
  f.addEventListener('submit',function(e){
    if(!window.confirm(f.getAttribute('data-confirm'))){e.preventDefault();}});});
document.querySelectorAll('a.example').forEach(function(a){
  a.addEventListener('click',function(e){e.preventDefault();
    var t=document.querySelector('textarea[name=query]');
    if(t){t.value=a.getAttribute('data-query');t.focus();}});});
"""
