"""The fleet page (``/ui``): devices and their replicas with memory bars, queues per model and level, the last
allocation runs with their moves, recent lifecycle events. Read only, refreshed every two seconds from
``/ui/state``, behind the same API keys as everything else (a browser asks for them: HTTP Basic, any user name,
the key as password; ``http://user:KEY@host:port/ui`` works too).

No dependency, nothing fetched from elsewhere: one HTML document with its CSS and script inline. The script builds
the page with DOM nodes and text nodes only (never ``innerHTML``), so names and reasons that come from workers and
the database are shown as text, never run; a Content-Security-Policy that allows only this page's own script and
style (by hash) and requests to its own origin backs that up.

The state is fetched from an absolute URL without credentials: a page opened as ``http://user:KEY@host/ui`` may not
``fetch`` a relative URL (it would carry the credentials, which the Fetch standard forbids); the browser's HTTP
auth cache authenticates the request instead, as it does every request to the origin after the first challenge.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from app.broker.layout import model_queue
from app.broker.queues import depth_by_priority
from app.control import device_views
from app.db import replicas as replica_rows
from app.db.schema import AllocationRun, Device, Model, ModelVersion, Replica, ReplicaEvent
from app.db.session import session_scope
from app.lifecycle import HOLDS_MEMORY, ReplicaState

#: Lifecycle events and allocation runs shown.
RECENT_EVENTS = 15
RECENT_RUNS = 5

Handler = Callable[[Request], Awaitable[Response]]


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def read_state(url: str, heartbeat_timeout_s: float) -> dict[str, Any]:
    """Everything the page shows that lives in the database."""
    with session_scope(url) as session:
        views = {v.worker_name: v for v in device_views(session, heartbeat_timeout_s)}
        measured = replica_rows.measured_footprints(session)
        held: dict[str, list[dict[str, Any]]] = {}
        for r in replica_rows.all_with_devices(session):
            held.setdefault(r.device.worker_name, []).append(
                {
                    "id": r.id,
                    "model": r.version.model.name,
                    "version": r.version.version,
                    "state": r.state,
                    "bytes": replica_rows.held_bytes(r, measured),
                    "holds_memory": ReplicaState(r.state) in HOLDS_MEMORY,
                }
            )
        devices = [
            {
                "worker": d.worker_name,
                "name": d.name,
                "kind": d.kind,
                "virtual": d.kind != "gpu",
                "alive": views[d.worker_name].alive,
                "status": d.status,
                "heartbeat_at": _iso(d.heartbeat_at),
                "mem_bytes": d.mem_bytes,
                "used_bytes": views[d.worker_name].used_bytes,
                "replicas": held.get(d.worker_name, []),
            }
            for d in session.scalars(select(Device).order_by(Device.worker_name))
        ]
        runs = [
            {
                "id": run.id,
                "status": run.status,
                "started_at": _iso(run.started_at),
                "solver": run.solver,
                "solve_s": run.solve_s,
                "gap": run.gap,
                "moves": [
                    {"kind": m.get("kind"), "model": m.get("model"), "device": m.get("device"), "state": m.get("state")}
                    for m in (run.moves or [])
                ],
                "reason": run.reason,
            }
            for run in session.scalars(select(AllocationRun).order_by(AllocationRun.id.desc()).limit(RECENT_RUNS))
        ]
        events = [
            {
                "at": _iso(e.at),
                "replica": e.replica_id,
                "model": v.model.name,
                "version": v.version,
                "worker": d.worker_name,
                "from": e.from_state,
                "to": e.to_state,
                "reason": e.reason,
            }
            for e, v, d in session.execute(
                select(ReplicaEvent, ModelVersion, Device)
                .join(Replica, ReplicaEvent.replica_id == Replica.id)
                .join(ModelVersion, Replica.version_id == ModelVersion.id)
                .join(Device, Replica.device_id == Device.id)
                .order_by(ReplicaEvent.id.desc())
                .limit(RECENT_EVENTS)
            ).all()
        ]
        models = list(session.scalars(select(Model.name).order_by(Model.name)))
    return {"devices": devices, "runs": runs, "events": events, "models": models}


def routes(gateway: Any, wrap: Callable[[Handler], Handler]) -> list[Route]:
    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE, headers=PAGE_HEADERS)

    async def state(request: Request) -> Response:
        from gateway.server import json_response

        settings = gateway.settings
        value = await asyncio.to_thread(read_state, settings.sqlalchemy_url, settings.heartbeat_timeout_s)
        sync_redis = gateway.client.redis
        queues = await asyncio.to_thread(
            lambda: {m: depth_by_priority(sync_redis, model_queue(m)) for m in value["models"]}
        )
        value["queues"] = queues
        response = json_response(value)
        response.headers["Cache-Control"] = "no-store"
        return response

    return [Route("/ui", wrap(page)), Route("/ui/state", wrap(state))]


STYLE = """
:root { --fg: #1d2330; --muted: #6b7280; --line: #e3e6eb; --panel: #ffffff; --bg: #f5f6f8; --accent: #2f6fde;
  --ok: #1a7f45; --ok-bg: #e3f5ea; --warn: #8a5a00; --warn-bg: #fdf0d5; --bad: #b42318; --bad-bg: #fde7e5;
  --info: #1e5aa8; --info-bg: #e3edfb; --off: #555e6b; --off-bg: #eceef1; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; margin: 0;
  color: var(--fg); background: var(--bg); }
main { max-width: 1240px; margin: 0 auto; padding: 1.2em 1.5em 2em; }
header { display: flex; align-items: baseline; gap: 1em; flex-wrap: wrap; }
h1 { font-size: 1.35em; margin: 0; }
h2 { font-size: 1.02em; margin: 1.6em 0 .3em; }
.note { color: var(--muted); font-size: .86em; margin: 0 0 .6em; }
.summary { display: flex; gap: .5em; flex-wrap: wrap; }
.chip { background: var(--panel); border: 1px solid var(--line); border-radius: 999px; padding: .05em .75em; }
.chip b { font-variant-numeric: tabular-nums; }
#updated { margin-left: auto; color: var(--muted); font-size: .86em; }
#updated.stale { color: var(--bad); }
#error { background: var(--bad-bg); color: var(--bad); border: 1px solid #f4c7c3; border-radius: 6px;
  padding: .5em .8em; margin-top: .8em; }
#error:empty { display: none; }
.devices { display: grid; grid-template-columns: repeat(auto-fill, minmax(290px, 1fr)); gap: .9em; }
.device { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: .8em 1em; }
.device.down { opacity: .6; border-style: dashed; }
.device .title { display: flex; align-items: center; gap: .4em; flex-wrap: wrap; }
.device .worker { font-weight: 600; overflow-wrap: anywhere; }
.device .name { color: var(--muted); font-size: .86em; overflow-wrap: anywhere; }
.tag { font-size: .75em; border-radius: 4px; padding: .05em .45em; background: var(--off-bg); color: var(--off);
  text-transform: lowercase; }
.tag.virtual { background: var(--info-bg); color: var(--info); }
.tag.gpu { background: var(--ok-bg); color: var(--ok); }
.tag.down { background: var(--bad-bg); color: var(--bad); }
.bar { display: flex; background: var(--off-bg); height: .9em; border-radius: 4px; overflow: hidden;
  margin: .6em 0 .25em; }
.bar > span { height: 100%; border-right: 1px solid var(--panel); }
.bar > span.other { background: repeating-linear-gradient(45deg, #b9bfc8, #b9bfc8 3px, #d3d7dd 3px, #d3d7dd 6px); }
.mem { color: var(--muted); font-size: .86em; font-variant-numeric: tabular-nums; }
.mem.over { color: var(--bad); font-weight: 600; }
.replicas { list-style: none; margin: .5em 0 0; padding: 0; }
.replica { display: flex; align-items: center; gap: .5em; padding: .15em 0; border-top: 1px solid var(--line); }
.replica .swatch { width: .7em; height: .7em; border-radius: 2px; flex: none; }
.replica .ref { overflow-wrap: anywhere; }
.replica .size { margin-left: auto; color: var(--muted); font-size: .86em; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
.empty { color: var(--muted); font-style: italic; }
.panel { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: .35em .7em; text-align: left; vertical-align: top; border-top: 1px solid var(--line); }
thead th { border-top: none; color: var(--muted); font-weight: 600; font-size: .82em; white-space: nowrap;
  background: #fafbfc; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.level { width: 6.5%; }
td.zero { color: #c3c8cf; }
td.hot { background: var(--warn-bg); color: var(--warn); font-weight: 600; }
td.when { white-space: nowrap; font-variant-numeric: tabular-nums; }
td.reason { color: var(--muted); overflow-wrap: anywhere; min-width: 12em; }
td.empty { text-align: center; padding: .8em; }
.state { font-size: .78em; font-weight: 600; border-radius: 4px; padding: .05em .45em; white-space: nowrap;
  background: var(--off-bg); color: var(--off); }
.state.ok { background: var(--ok-bg); color: var(--ok); }
.state.busy { background: var(--warn-bg); color: var(--warn); }
.state.leaving { background: var(--info-bg); color: var(--info); }
.state.bad { background: var(--bad-bg); color: var(--bad); }
.moves { list-style: none; margin: 0; padding: 0; }
.moves li { overflow-wrap: anywhere; }
.arrow { color: var(--muted); padding: 0 .25em; }
"""

SCRIPT = """
"use strict";
const REFRESH_MS = 2000;
const LEVELS = 10;
const TONE = {
  READY: "ok", PENDING: "busy", LOADING: "busy", DRAINING: "leaving", UNLOADING: "leaving", STOPPED: "off",
  FAILED: "bad", done: "ok", kept: "ok", executing: "busy", planned: "busy", sent: "busy", pending: "off",
  dry_run: "off", done_with_failures: "bad", failed: "bad"
};
const $ = id => document.getElementById(id);

// Every string goes in as a text node or an attribute value: nothing from the state is ever parsed as markup.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined && value !== false) el.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) {
      el.append(child instanceof Node ? child : String(child));
    }
  }
  return el;
}
const text = value => (value === null || value === undefined || value === "") ? "-" : String(value);
const state = s => h("span", {class: "state " + (TONE[s] || "off")}, text(s));

function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (n >= 10 || Number.isInteger(n) ? Math.round(n) : n.toFixed(1)) + " " + units[i];
}
function clock(iso) {
  if (!iso) return "-";
  const t = new Date(iso);
  return isNaN(t) ? text(iso) : t.toLocaleTimeString([], {hour12: false});
}
function ago(iso) {
  const s = (Date.now() - new Date(iso)) / 1000;
  if (!iso || isNaN(s)) return "";
  if (s < 60) return Math.max(0, Math.round(s)) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}
function hue(name) {
  let x = 7;
  for (const c of String(name)) x = (x * 31 + c.codePointAt(0)) >>> 0;
  return x % 360;
}
// plural(3, "device") is "3 devices"; plural(1, "model", false) is "model".
const plural = (n, noun, count = true) => (count ? n + " " : "") + noun + (n === 1 ? "" : "s");
const colour = name => `hsl(${hue(name)} 55% 52%)`;
function when(iso) {
  return h("td", {class: "when", title: iso ? `${iso} (${ago(iso)})` : null}, clock(iso));
}
function table(id, head, rows, empty) {
  const body = rows.length ? rows : [h("tr", {}, h("td", {class: "empty", colspan: head.flat().length}, empty))];
  $(id).replaceChildren(h("thead", {}, h("tr", {}, head)), h("tbody", {}, body));
}
function segment(width, colourOf, title) {
  const el = h("span", {title, class: colourOf ? null : "other"});
  el.style.width = width + "%";
  el.style.minWidth = width > 0 ? "3px" : "0";
  if (colourOf) el.style.background = colour(colourOf);
  return el;
}

function swatch(model) {
  const el = h("span", {class: "swatch"});
  el.style.background = colour(model);
  return el;
}

function device(d) {
  const down = !d.alive;
  const cap = d.mem_bytes || 0;
  const share = n => cap ? Math.max(0, Math.min(100, 100 * n / cap)) : 0;
  const holding = d.replicas.filter(r => r.holds_memory);
  const counted = holding.reduce((sum, r) => sum + r.bytes, 0);
  const bar = h("div", {class: "bar", title: `${bytes(d.used_bytes)} of ${bytes(cap)}`},
    holding.map(r => segment(share(r.bytes), r.model, `${r.model}:${r.version} ${bytes(r.bytes)}`)),
    d.used_bytes > counted ? segment(share(d.used_bytes - counted), null, "other") : null);
  const pct = cap ? Math.round(100 * d.used_bytes / cap) : 0;
  const replicas = d.replicas.length
    ? h("ul", {class: "replicas"}, d.replicas.map(r =>
        h("li", {class: "replica " + r.state, "data-model": r.model, "data-version": r.version, "data-state": r.state},
          swatch(r.model), h("span", {class: "ref"}, `${r.model}:${r.version}`),
          state(r.state), h("span", {class: "size"}, bytes(r.bytes)))))
    : h("div", {class: "empty"}, "no replica");
  const why = d.status && d.status !== "online" ? d.status : "silent";
  return h("section", {class: "device" + (down ? " down" : ""), "data-worker": d.worker},
    h("div", {class: "title"}, h("span", {class: "worker"}, d.worker),
      h("span", {class: "tag " + (d.virtual ? "virtual" : "gpu")}, d.virtual ? "virtual" : text(d.kind)),
      down ? h("span", {class: "tag down", title: `last heartbeat ${d.heartbeat_at || "never"}`}, why) : null),
    h("div", {class: "name"}, text(d.name)), bar,
    h("div", {class: "mem" + (d.used_bytes > cap ? " over" : "")},
      `${bytes(d.used_bytes)} of ${bytes(cap)} held (${pct}%)`),
    replicas);
}

function render(s) {
  const alive = s.devices.filter(d => d.alive).length;
  const ready = s.devices.flatMap(d => d.replicas).filter(r => r.state === "READY").length;
  const waiting = Object.values(s.queues).flat().reduce((a, b) => a + b, 0);
  const chip = (count, ...rest) => h("span", {class: "chip"}, h("b", {}, count), " ", rest.join(" "));
  $("summary").replaceChildren(
    chip(alive, "of", plural(s.devices.length, "device"), "up"),
    chip(ready, plural(ready, "replica", false), "ready"),
    chip(s.models.length, plural(s.models.length, "model", false)),
    chip(waiting, plural(waiting, "request", false), "waiting"));

  const cards = s.devices.map(device);
  $("devices").replaceChildren(...(cards.length ? cards : [h("div", {class: "empty"}, "no device registered")]));

  const levels = [...Array(LEVELS).keys()];
  table("queues",
    [h("th", {}, "model"), h("th", {class: "num"}, "waiting"), levels.map(l => h("th", {class: "num level"}, l))],
    Object.entries(s.queues).map(([model, depths]) => {
      const total = depths.reduce((a, b) => a + b, 0);
      return h("tr", {"data-model": model, "data-waiting": total > 0 ? total : null},
        h("td", {}, model), h("td", {class: "num" + (total ? "" : " zero")}, total),
        levels.map(l => h("td", {class: "num level " + (depths[l] ? "hot" : "zero")}, depths[l] || "\\u00b7")));
    }),
    "no model registered");

  table("runs",
    ["run", "status", "started", "solver", "gap", "moves", "reason"].map(c => h("th", {}, c)),
    s.runs.map(r => h("tr", {"data-run": r.id},
      h("td", {class: "num"}, r.id), h("td", {}, state(r.status)), when(r.started_at),
      h("td", {}, text(r.solver), r.solve_s === null || r.solve_s === undefined ? "" : ` ${r.solve_s.toFixed(2)} s`),
      h("td", {class: "num"}, r.gap === null || r.gap === undefined ? "-" : (100 * r.gap).toFixed(2) + "%"),
      h("td", {}, r.moves.length ? h("ul", {class: "moves"}, r.moves.map(m =>
        h("li", {}, `${text(m.kind)} ${text(m.model)} on ${text(m.device)} `, state(m.state)))) : "none"),
      h("td", {class: "reason"}, text(r.reason)))),
    "no allocation run yet (is the allocator on? MAAS_ALLOCATION)");

  table("events",
    ["at", "replica", "worker", "transition", "reason"].map(c => h("th", {}, c)),
    s.events.map(e => h("tr", {},
      when(e.at), h("td", {}, `${e.model}:${e.version}`), h("td", {}, e.worker),
      h("td", {}, e.from ? [state(e.from), h("span", {class: "arrow"}, "\\u2192")] : null, state(e.to)),
      h("td", {class: "reason"}, text(e.reason)))),
    "no lifecycle event yet");
}

let lastGood = 0;
function stamp(problem) {
  const updated = $("updated");
  if (!problem) lastGood = Date.now();
  updated.textContent = lastGood ? "updated " + new Date(lastGood).toLocaleTimeString([], {hour12: false}) : "";
  updated.className = problem ? "stale" : "";
  $("error").textContent = problem || "";
}
async function refresh() {
  try {
    // Absolute and credential-free: see the module's docstring.
    const url = new URL("ui/state", location.origin + location.pathname);
    const r = await fetch(url, {credentials: "same-origin", cache: "no-store"});
    if (r.status === 401) {
      stamp("The gateway refused the API key (401): reload the page to enter it again.");
    } else if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      stamp(`Refresh failed: HTTP ${r.status} ${body.error || r.statusText}`);
    } else {
      render(await r.json());
      stamp("");
    }
  } catch (err) {
    stamp(`Refresh failed: ${err} (is the gateway running?)`);
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
"""

BODY = """<main>
<header><h1>maas fleet</h1><div id="summary" class="summary"></div><span id="updated"></span></header>
<div id="error" role="alert"></div>
<h2>Devices</h2>
<p class="note">Memory held by each replica: measured once loaded, declared before that.</p>
<div id="devices" class="devices"></div>
<h2>Queues</h2>
<p class="note">Requests waiting, per model and priority level (0 is served first).</p>
<div class="panel"><table id="queues"></table></div>
<h2>Allocation runs</h2>
<p class="note">The last re-solves of the placement, newest first, with the moves each made.</p>
<div class="panel"><table id="runs"></table></div>
<h2>Lifecycle events</h2>
<p class="note">The latest replica transitions, newest first.</p>
<div class="panel"><table id="events"></table></div>
</main>"""


def _sha256(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>maas fleet</title><link rel="icon" href="data:,">
<style>{STYLE}</style></head>
<body>
{BODY}
<script>{SCRIPT}</script>
</body></html>
"""

#: Only this page's own script and style run; it talks only to its own origin and cannot be framed.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
