"""Every key the fleet itself writes in Redis (kombu's and Celery's are in :mod:`app.broker.layout`).

Kept in one place so that an operator (or a migration) can see the whole footprint, and so that no two modules
can disagree on a name. Each entry says the Redis type and what it maps.
"""

from __future__ import annotations

#: zset: task id -> accepted at (unix s). Every accepted request until its result exists.
LEDGER_SINCE = "maas:ledger:since"
#: hash: task id -> {"name", "queue", "priority", "args", "kwargs", "headers"}: what a resend needs.
LEDGER_BODY = "maas:ledger:body"
#: set: ids the previous ledger sweep found nowhere.
LEDGER_SUSPECT = "maas:ledger:suspect"

#: hash: task id -> {"c": class, "e": estimate s, "b": backlog s, "l": current level, "w": work-ahead set}.
AGING_FACTS = "maas:aging:facts"
#: hash: model -> promoted copies sent so far (a counter).
AGING_PROMOTED = "maas:aging:promoted"
_AGING_INDEX = "maas:aging:{model}"  # zset: task id -> submitted at (unix s), per aging model

#: hash: model -> requests accepted since the beginning.
ARRIVALS = "maas:arrivals"
#: hash: model -> {"rate_per_s", "count", "at", "last_arrival_at"}: the arrival-rate EWMA.
RATES = "maas:rates"
_SERVICE = "maas:service:{model}:{device_class}"  # list of "size service_s", newest last

#: set: "model:version" of every model version that has request statistics.
STATS_INDEX = "maas:stats:index"
_STATS = "maas:stats:{model}:{version}"  # hash: counter name -> value (see app.broker.stats)
#: hash: counter name -> value for fleet-wide events (ledger resends).
FLEET_COUNTERS = "maas:counters"

#: string: the epoch a worker was declared lost at (the reaper's); a worker of an older epoch is fenced.
_FENCE = "maas:fence:{worker}"
_HELD = "maas:held:{worker}"  # hash: task id -> started at (unix s), for each request the worker is running

_ALIVE = "maas:alive:{worker}"  # string with a TTL of the heartbeat timeout: the worker beat recently (via Redis)
#: hash: component (beat, controller name) -> unix time of its last heartbeat, for `maas status`.
COMPONENT_HEARTBEATS = "maas:heartbeats"

#: list: dead letters, newest first (JSON: task id, queue, reason, at, the ledger's body).
DEAD_LETTERS = "maas:dlq"
_REDELIVERED = "maas:redelivered:{task_id}"  # string with a TTL: deliveries to workers that could not serve it

_GEN_STREAM = "maas:gen:{task_id}"  # stream: one generation's text chunks, then its end (MAXLEN-trimmed, expiring)
_GEN_CANCEL = "maas:gen:cancel:{task_id}"  # string with a TTL: the caller cancelled this generation

#: hash: "<worker>|<model>" -> JSON {"seqs", "kv_bytes", "at"}: each worker's running generations, for /metrics.
GENERATION_LIVE = "maas:gen:live"

#: pub/sub channel nobody publishes on: a gateway stays subscribed to it between requests.
GATEWAY_IDLE_CHANNEL = "maas:gateway:idle"

#: string with a TTL: set by the first producer that asks for an allocation run (scale from zero).
ALLOCATION_TRIGGER = "maas:trigger:allocate"
#: string with a TTL: held by the allocation run in progress, so two runs never overlap.
ALLOCATION_LOCK = "maas:lock:allocation"
#: string with a TTL (MAAS_BEAT_LEASE_S): the name of the beat that sends the periodic tasks, renewed by it.
BEAT_LEADER = "maas:lock:beat"


def aging_index(model: str) -> str:
    return _AGING_INDEX.format(model=model)


def service_samples(model: str, device_class: str) -> str:
    return _SERVICE.format(model=model, device_class=device_class)


def model_stats(model: str, version: int | str) -> str:
    return _STATS.format(model=model, version=version)


def redeliveries(task_id: str) -> str:
    return _REDELIVERED.format(task_id=task_id)


def held_by(worker: str) -> str:
    return _HELD.format(worker=worker)


def alive(worker: str) -> str:
    return _ALIVE.format(worker=worker)


def fence(worker: str) -> str:
    return _FENCE.format(worker=worker)


def generation_stream(task_id: str) -> str:
    return _GEN_STREAM.format(task_id=task_id)


def generation_cancel(task_id: str) -> str:
    return _GEN_CANCEL.format(task_id=task_id)
