"""The pages: the runs list, a run (summary, timeline, events, actions), SQL, and errors.

Each function returns a whole page from plain data (`replay._ui._data`); element ids
and attributes are the page's contract with its script and its browser tests
(``#run-state``, ``table#events tr[data-seq]``, ``form#signal``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from replay._ui._backend import Facts, Table
from replay._ui._data import RunPage, RunsPage
from replay._ui._examples import POSTGRES, examples
from replay._ui._html import STATES, esc, page, pretty_json, run_url, stamp, url
from replay._ui._timeline import render

_UNFINISHED = ("running", "sleeping", "suspended")
_MAX_CELL = 2000
VALUE_CELL = 6  # the events table's value_json column


@dataclass
class Flash:
    """A message for the top of the page: ``#message.ok`` or ``#message.error``."""

    text: str | None = None
    ok: bool = True


# -- the runs list --


def runs_html(data: RunsPage, facts: Facts, flash: Flash) -> str:
    """Return the runs list: counts per state, filters, the runs, page links."""
    chosen = data.filter
    keep = {"workflow": chosen.workflow, "q": chosen.q, "since": chosen.since_text}
    total = sum(data.counts.values())
    counts = [f'<a href="{esc(url("/", **keep))}" data-state=""'
              f'{" class=chosen" if not chosen.state else ""}>all'
              f'<span class="count">{total}</span></a>']
    for state in STATES:
        mark = " class=chosen" if chosen.state == state else ""
        counts.append(f'<a href="{esc(url("/", state=state, **keep))}" data-state="{state}"'
                      f'{mark}>{state}<span class="count">{data.counts[state]}</span></a>')
    options = "".join(f'<option value="{s}"{" selected" if s == chosen.state else ""}>{s}'
                      "</option>" for s in STATES)
    names = "".join(f'<option value="{esc(name)}">' for name in data.workflows)
    filters = (
        '<form id="filters" method="get" action="/" class="inline">'
        f'<label>state <select name="state"><option value="">any</option>{options}'
        "</select></label>"
        f'<label>workflow <input name="workflow" list="workflows" '
        f'value="{esc(chosen.workflow)}"></label><datalist id="workflows">{names}</datalist>'
        f'<label>run id contains <input name="q" value="{esc(chosen.q)}"></label>'
        f'<label>created since <input name="since" placeholder="2026-03-02T09:00" '
        f'value="{esc(chosen.since_text)}"></label>'
        '<button id="filter-submit" type="submit">Filter</button></form>')
    rows = "".join(_run_row(run) for run in data.runs)
    table = ('<table id="runs"><thead><tr><th>run id</th><th>workflow</th><th>state</th>'
             "<th>waiting for</th><th>status</th><th>created</th><th>updated</th></tr>"
             f"</thead><tbody>{rows}</tbody></table>")
    if not data.runs:
        table += '<p class="empty">no runs match</p>'
    links = []
    here = {**keep, "state": chosen.state}
    if chosen.page > 1:
        links.append(f'<a id="prev-page" href="{esc(url("/", page=chosen.page - 1, **here))}">'
                     "← newer</a>")
    if data.has_next:
        links.append(f'<a id="next-page" href="{esc(url("/", page=chosen.page + 1, **here))}">'
                     "older →</a>")
    pages = f'<p class="pages">page {chosen.page} {"".join(links)}</p>'
    body = (f'<h1>Runs</h1><p id="counts">{"".join(counts)}</p>{filters}{table}{pages}')
    return page("Runs", body, facts, message=flash.text, ok=flash.ok)


def _run_row(run: dict[str, Any]) -> str:
    run_id = str(run["run_id"])
    waiting = run["waiting_for"] or ""
    if waiting and run["wake_at"] is not None:
        waiting += f" until {stamp(run['wake_at'])}"
    return (f'<tr data-run-id="{esc(run_id)}"><td><a href="{esc(run_url(run_id))}">'
            f'{esc(run_id)}</a></td><td>{esc(run["workflow"])}</td>'
            f'<td>{_state(run["state"])}</td><td>{esc(waiting)}</td>'
            f'<td>{esc(run["status_text"])}</td><td>{esc(stamp(run["created_at"]))}</td>'
            f'<td>{esc(stamp(run["updated_at"]))}</td></tr>')


def _state(state: Any, element_id: str = "") -> str:
    ident = f' id="{element_id}"' if element_id else ""
    return f'<span class="state"{ident} data-state="{esc(state)}">{esc(state)}</span>'


# -- a run --


@dataclass
class ActionForm:
    """What the user typed into an action's form, kept when the action is refused."""

    key: str = ""
    payload: str = ""
    reason: str = ""


def run_html(data: RunPage, facts: Facts, token: str, flash: Flash,
             typed: ActionForm | None = None) -> str:
    """Return a run's page: summary, actions, timeline, events, and the live script."""
    run = data.run
    run_id, state = str(run["run_id"]), str(run["state"])
    summary = [f"<dt>state</dt><dd>{_state(state, 'run-state')}</dd>",
               f"<dt>workflow</dt><dd>{esc(run['workflow'])}</dd>",
               f"<dt>created</dt><dd>{esc(stamp(run['created_at']))}</dd>",
               f"<dt>updated</dt><dd id=\"updated\">{esc(stamp(run['updated_at']))}</dd>",
               f"<dt>waiting</dt><dd id=\"waiting\">{esc(waiting_text(run))}</dd>",
               f"<dt>status</dt><dd id=\"status-note\">{esc(run['status_text'])}</dd>"]
    if run.get("parent_run_id"):
        parent = str(run["parent_run_id"])
        summary.append(f'<dt>parent</dt><dd><a id="parent-link" href="{esc(run_url(parent))}">'
                       f"{esc(parent)}</a></dd>")
    if run.get("generation"):
        summary.append(f"<dt>generation</dt><dd>{esc(run['generation'])}</dd>")
    if run.get("error"):
        summary.append(f"<dt>error</dt><dd><pre id=\"error\">{esc(run['error'])}</pre></dd>")
    values = (f'<h2>Input</h2><pre id="input">{esc(pretty_json(run["input_json"]))}</pre>')
    if run.get("continued_json") is not None:
        values += ("<h2>Input of this generation</h2><pre id=\"continued-input\">"
                   f"{esc(pretty_json(run['continued_json']))}</pre>")
    values += f'<h2>Output</h2><pre id="output">{esc(pretty_json(run["output_json"]))}</pre>'
    shown = "" if data.total_events <= len(data.events) else (
        f'<p class="note">the newest {len(data.events)} of {data.total_events} events</p>')
    events = "".join(event_row(event) for event in data.events)
    body = (
        f'<div id="run" data-run-id="{esc(run_id)}" data-state="{esc(state)}" '
        f'data-last-seq="{data.last_seq}"><h1>Run <code>{esc(run_id)}</code></h1>'
        f'<dl id="summary">{"".join(summary)}</dl>'
        f'{_actions(run_id, state, run, token, typed or ActionForm())}'
        f'<h2>Timeline</h2><div id="timeline">'
        f'{render(data.timeline, data.child_states)}</div>'
        f"{values}<h2>Events</h2>{shown}"
        '<table id="events"><thead><tr><th>seq</th><th>recorded</th><th>event</th>'
        "<th>key</th><th>attempt</th><th>ms</th><th>value_json</th><th>error</th></tr>"
        f"</thead><tbody>{events}</tbody></table></div>")
    return page(f"Run {run_id}", body, facts, message=flash.text, ok=flash.ok,
                script=RUN_SCRIPT)


def waiting_text(run: dict[str, Any]) -> str:
    """Say what a parked run waits on and until when ("" for one that does not wait)."""
    if run["state"] not in ("sleeping", "suspended") or not run["waiting_for"]:
        return ""
    text = f"{run['waiting_for']}"
    if run["wake_at"] is not None:
        verb = "until" if run["state"] == "sleeping" else "timing out at"
        text += f" {verb} {stamp(run['wake_at'])}"
    elif run["state"] == "suspended":
        text += " (a signal, no timeout)"
    return text


def event_cells(event: dict[str, Any]) -> list[str]:
    """Return the text of one event's cells in the events table (the script's too)."""
    took = event["duration_ms"]
    value = event["value_json"]
    text = "" if value is None else str(value)
    error = event["error_type"] or ""
    if event["error"]:
        last = str(event["error"]).strip().splitlines() or [""]
        error = f"{error}: {last[-1]}" if error else str(event["error"])
    return [str(event["seq"]), stamp(event["recorded_at"]),
            f"{event['kind']}/{event['event']}", "" if event["key"] is None else
            str(event["key"]), "" if event["attempt"] is None else str(event["attempt"]),
            "" if took is None else f"{took:.1f}",
            text if len(text) <= _MAX_CELL else text[:_MAX_CELL] + "…", error]


def event_row(event: dict[str, Any]) -> str:
    """Return one ``tr[data-seq]`` of the events table."""
    cells = [f'<td class="value"><code>{esc(cell)}</code></td>' if index == VALUE_CELL
             else f"<td>{esc(cell)}</td>" for index, cell in enumerate(event_cells(event))]
    return f'<tr data-seq="{esc(event["seq"])}">{"".join(cells)}</tr>'


def _actions(run_id: str, state: str, run: dict[str, Any], token: str,
             typed: ActionForm) -> str:
    hidden = (f'<input type="hidden" name="csrf" value="{esc(token)}">'
              f'<input type="hidden" name="id" value="{esc(run_id)}">')
    forms = []
    if state in _UNFINISHED:
        key = typed.key or (run["waiting_for"] if state == "suspended" else "") or ""
        forms.append(
            '<form id="signal" method="post" action="/run/signal" class="inline" '
            f'data-confirm="Send this signal to run {esc(run_id)}?">{hidden}'
            f'<label>key <input name="key" value="{esc(key)}" required></label>'
            '<label>payload (JSON) <textarea name="payload" rows="1" cols="40" '
            f'placeholder=\'{{"approved": true}}\'>{esc(typed.payload)}</textarea></label>'
            '<button id="signal-submit" type="submit">Signal</button></form>')
    if state == "failed":
        forms.append(
            '<form id="resume" method="post" action="/run/resume" class="inline" '
            f'data-confirm="Resume run {esc(run_id)}? Its failed step runs again.">{hidden}'
            '<button id="resume-submit" type="submit">Resume</button></form>')
    if state in _UNFINISHED:
        forms.append(
            '<form id="cancel" method="post" action="/run/cancel" class="inline" '
            f'data-confirm="Cancel run {esc(run_id)}?">{hidden}'
            f'<label>reason <input name="reason" value="{esc(typed.reason)}"></label>'
            '<button id="cancel-submit" type="submit">Cancel run</button></form>')
    return f'<section class="actions">{"".join(forms)}</section>' if forms else ""


# The run page's live updates: one EventSource fed by watching the run (see _sse).
RUN_SCRIPT = """
(function(){
 var root=document.getElementById('run');
 if(!root||document.getElementById('live').getAttribute('data-live')!=='on'){return;}
 var id=root.getAttribute('data-run-id');
 var q=new URLSearchParams({id:id,after:root.getAttribute('data-last-seq')});
 var source=new EventSource('/run/events?'+q.toString());
 var pending=null,FINISHED=['completed','failed','cancelled'];
 function set(i,t){var e=document.getElementById(i);if(e){e.textContent=t||'';}}
 function refresh(){if(pending){return;}pending=setTimeout(function(){pending=null;
   fetch('/run/timeline?'+new URLSearchParams({id:id}).toString()).then(function(r){
     return r.ok?r.text():null;}).then(function(h){if(h!==null){
     document.getElementById('timeline').innerHTML=h;}});},150);}
 source.addEventListener('update',function(m){
  var u=JSON.parse(m.data);
  if(u.info){var s=document.getElementById('run-state');
   s.textContent=u.info.state;s.setAttribute('data-state',u.info.state);
   root.setAttribute('data-state',u.info.state);
   set('waiting',u.info.waiting);set('status-note',u.info.status_text);
   set('updated',u.info.updated_at);
   if(FINISHED.indexOf(u.info.state)>=0){['signal','cancel'].forEach(function(f){
    var e=document.getElementById(f);if(e){e.remove();}});}}
  if(u.event){var body=document.querySelector('#events tbody');
   if(!body.querySelector('tr[data-seq="'+u.event.seq+'"]')){
    var tr=document.createElement('tr');tr.setAttribute('data-seq',u.event.seq);
    u.event.cells.forEach(function(c,i){var td=document.createElement('td');
     if(i===6){var code=document.createElement('code');code.textContent=c;
      td.className='value';td.appendChild(code);}else{td.textContent=c;}
     tr.appendChild(td);});
    body.appendChild(tr);}
   root.setAttribute('data-last-seq',u.event.seq);refresh();}
 });
 source.addEventListener('end',function(){source.close();});
})();
"""


# -- SQL --


def sql_html(query: str, result: Table | None, facts: Facts, token: str,
             flash: Flash, dialect: str) -> str:
    """Return the SQL page: the box, the cookbook's examples in `dialect`, and the result.

    Raises:
        ValueError: `dialect` is not one the cookbook is written in.
    """
    links = "".join(f'<a class="example" href="#" data-query="{esc(sql)}">{esc(title)}</a>'
                    for title, sql in examples(dialect))
    said = "PostgreSQL" if dialect == POSTGRES else "DuckDB"
    form = ('<form id="sql" method="post" action="/sql">'
            f'<input type="hidden" name="csrf" value="{esc(token)}">'
            f'<textarea name="query" rows="10">{esc(query)}</textarea>'
            '<button id="sql-submit" type="submit">Run query</button></form>')
    body = (f"<h1>SQL</h1><p>One read-only query (<code>SELECT</code>, <code>WITH … "
            f"SELECT</code> or <code>EXPLAIN</code>) over the <code>replay_runs</code> and "
            f"<code>replay_events</code> views, in {said}'s SQL.</p>{form}")
    if result is not None:
        body += _result_table(result)
    body += (f'<h2>Examples from the SQL cookbook</h2><div id="examples" '
             f'data-dialect="{esc(dialect)}">{links}</div>')
    return page("SQL", body, facts, message=flash.text, ok=flash.ok)


def _result_table(result: Table) -> str:
    head = "".join(f"<th>{esc(name)}</th>" for name in result.columns)
    rows = "".join("<tr>" + "".join(f"<td>{esc(_cell(value))}</td>" for value in row)
                   + "</tr>" for row in result.rows)
    more = (f'<p class="note">the first {len(result.rows)} rows; add a LIMIT or aggregate '
            "to see the rest</p>" if result.truncated else "")
    count = f'<p id="sql-count">{len(result.rows)} row{"" if len(result.rows) == 1 else "s"}</p>'
    return (f'<table id="sql-result"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
            f"</table>{count}{more}")


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    text = stamp(value)
    return text if len(text) <= _MAX_CELL else text[:_MAX_CELL] + "…"


# -- errors --


def error_html(status: int, message: str, facts: Facts, links: Sequence[tuple[str, str]] = ()
               ) -> str:
    """Return an error page: the message in ``#message.error`` and where to go."""
    go = "".join(f'<a href="{esc(href)}">{esc(text)}</a> '
                 for href, text in [*links, ("/", "the runs")])
    body = f"<h1>{status}</h1><p>{go}</p>"
    return page(f"Error {status}", body, facts, message=message, ok=False)
