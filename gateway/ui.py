"""The fleet page (``/ui``): devices and their replicas with memory bars, queues per model and level, the last
allocation runs with their moves, recent lifecycle events. Read only, refreshed every two seconds from
``/ui/state``, behind the same API keys as everything else (a browser asks for them: HTTP Basic, any user name,
the key as password).
"""

from __future__ import annotations

import asyncio
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

#: Lifecycle events and allocation runs shown.
RECENT_EVENTS = 15
RECENT_RUNS = 5

Handler = Callable[[Request], Awaitable[Response]]


def read_state(url: str, heartbeat_timeout_s: float) -> dict[str, Any]:
    """Everything the page shows that lives in the database."""
    with session_scope(url) as session:
        views = {v.worker_name: v for v in device_views(session, heartbeat_timeout_s)}
        measured = replica_rows.measured_footprints(session)
        held: dict[str, list[dict[str, Any]]] = {}
        for r in replica_rows.all_with_devices(session):
            held.setdefault(r.device.worker_name, []).append(
                {
                    "model": r.version.model.name,
                    "version": r.version.version,
                    "state": r.state,
                    "bytes": replica_rows.held_bytes(r, measured),
                }
            )
        devices = [
            {
                "worker": d.worker_name,
                "name": d.name,
                "kind": d.kind,
                "virtual": d.kind != "gpu",
                "alive": views[d.worker_name].alive,
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
                "started_at": run.started_at.isoformat() if run.started_at else None,
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
                "at": e.at.isoformat(),
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
        return HTMLResponse(PAGE)

    async def state(request: Request) -> Response:
        from gateway.server import json_response

        settings = gateway.settings
        value = await asyncio.to_thread(read_state, settings.sqlalchemy_url, settings.heartbeat_timeout_s)
        sync_redis = gateway.client.redis
        queues = await asyncio.to_thread(
            lambda: {m: depth_by_priority(sync_redis, model_queue(m)) for m in value["models"]}
        )
        value["queues"] = queues
        return json_response(value)

    return [Route("/ui", wrap(page)), Route("/ui/state", wrap(state))]


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>maas fleet</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
 h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 1.6em; }
 .devices { display: flex; flex-wrap: wrap; gap: 1em; }
 .device { border: 1px solid #bbb; border-radius: 6px; padding: .7em 1em; min-width: 18em; }
 .device.dead { opacity: .5; }
 .tag { font-size: .8em; background: #eee; border-radius: 3px; padding: 0 .4em; margin-left: .4em; }
 .bar { background: #eee; height: .8em; border-radius: 3px; margin: .4em 0; }
 .bar > div { background: #4a7; height: 100%; border-radius: 3px; }
 table { border-collapse: collapse; } td, th { padding: .15em .7em .15em 0; text-align: left; }
 .muted { color: #888; } .READY { color: #282; } .FAILED { color: #b22; }
</style></head>
<body>
<h1>maas fleet <span id="updated" class="muted"></span></h1>
<h2>Devices</h2><div id="devices" class="devices"></div>
<h2>Queues (requests waiting by priority level, 0 = highest)</h2><table id="queues"></table>
<h2>Allocation runs</h2><table id="runs"></table>
<h2>Lifecycle events</h2><table id="events"></table>
<script>
const mib = b => (b / 1048576).toFixed(0) + " MiB";
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
function row(cells, tag = "td") { return "<tr>" + cells.map(c => `<${tag}>${c}</${tag}>`).join("") + "</tr>"; }
function render(s) {
  document.getElementById("devices").innerHTML = s.devices.map(d => {
    const pct = d.mem_bytes ? Math.min(100, 100 * d.used_bytes / d.mem_bytes) : 0;
    const reps = d.replicas.map(r =>
      `<div class="${esc(r.state)}">${esc(r.model)}:${r.version} ${esc(r.state)} ${mib(r.bytes)}</div>`).join("");
    return `<div class="device ${d.alive ? "" : "dead"}"><b>${esc(d.worker)}</b> ${esc(d.name)}` +
      (d.virtual ? '<span class="tag">virtual</span>' : "") + (d.alive ? "" : '<span class="tag">silent</span>') +
      `<div class="bar"><div style="width:${pct}%"></div></div>` +
      `<div class="muted">${mib(d.used_bytes)} of ${mib(d.mem_bytes)}</div>` +
      (reps || '<div class="muted">no replica</div>') + "</div>";
  }).join("") || '<span class="muted">no device registered</span>';
  const models = Object.keys(s.queues);
  document.getElementById("queues").innerHTML = row(["model", ...[...Array(10).keys()], "total"], "th") +
    models.map(m => row([esc(m), ...s.queues[m], s.queues[m].reduce((a, b) => a + b, 0)])).join("");
  document.getElementById("runs").innerHTML = row(["run", "status", "started", "gap", "moves", "reason"], "th") +
    s.runs.map(r => row([r.id, esc(r.status), esc(r.started_at), r.gap == null ? "-" : (100 * r.gap).toFixed(2) + "%",
      r.moves.map(m => `${esc(m.kind)} ${esc(m.model)} on ${esc(m.device)} (${esc(m.state)})`).join("<br>") || "-",
      esc(r.reason)])).join("");
  document.getElementById("events").innerHTML = row(["at", "model", "worker", "from", "to", "reason"], "th") +
    s.events.map(e => row([esc(e.at), `${esc(e.model)}:${e.version}`, esc(e.worker), esc(e.from ?? "-"),
      `<span class="${esc(e.to)}">${esc(e.to)}</span>`, esc(e.reason)])).join("");
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}
async function refresh() {
  try {
    const r = await fetch("ui/state", {credentials: "same-origin"});
    if (r.ok) render(await r.json());
  } finally { setTimeout(refresh, 2000); }
}
refresh();
</script></body></html>
"""
