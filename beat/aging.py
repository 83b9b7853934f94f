"""Aging: requests of models under the ``aging`` policy gain priority while they wait, so nothing starves.

The level of a message is fixed when it is sent, so a beat task moves waiting messages to a higher level's list.
The move is one Lua script (LREM from the old list, LPUSH onto the new one): a message is never lost or
duplicated, and keeps its task id. LPUSH puts it at the tail of its new level, like a fresh message: promoted
messages then leave each level in the order they were promoted, which follows their age. (Pushing them at the
head instead lets each newly promoted message pass the ones promoted before it: measured here, a request that
had reached the top level first was served last of 41.)
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import redis
from sqlalchemy import select

from app import policies
from app.celery_app import PRIORITY_LEVELS, model_queue
from app.db.schema import Model
from app.db.session import session_scope
from app.queues import priority_lists
from app.settings import Settings

_MOVE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
"""
#: Messages read per list per pass, oldest first; a page that promotes nothing ends the scan of that list.
PAGE = 200


@dataclass(frozen=True)
class Promotion:
    raw: bytes
    src: int
    dst: int
    submitted_at: float


def _header(raw: bytes, key: bytes) -> bytes | None:
    """One of our headers, read straight from the message bytes.

    A message carries its whole request body (base64, which holds no quotes, so a header name cannot appear in
    it): parsing the JSON of every waiting message on every pass cost the worker running this task more time than
    it spent serving, measured on a backlog of a few hundred large requests. A search reads only what it needs.
    """
    match = re.search(rb'"' + key + rb'": "?([^",}]+)', raw)
    return match.group(1) if match else None


def promotions(raws: list[bytes], level: int, now: float, params: policies.PolicyParams) -> list[Promotion]:
    """Pure: which of the messages waiting at ``level`` move up, and to where."""
    found = []
    for raw in raws:
        submitted_at = _header(raw, b"maas_submitted_at")
        if submitted_at is None:
            continue  # not sent through the client (e.g. a resend without headers): leave it where it is
        facts = policies.RequestFacts(
            (_header(raw, b"maas_class") or b"interactive").decode(),
            float(_header(raw, b"maas_est_s") or 0.0),
            None,
            max(0.0, now - float(submitted_at)),
            float(_header(raw, b"maas_backlog_s") or 0.0),
        )
        target = policies.aging(facts, params)
        if target < level:
            found.append(Promotion(raw, level, target, float(submitted_at)))
    return found


def _relevel(raw: bytes, level: int) -> bytes:
    """The same message with its priority property set to ``level``, so a later restore keeps the new level."""
    at = raw.rfind(b'"priority": ')  # the properties come last; the headers hold no "priority" key
    if at < 0:
        return raw
    start = at + len(b'"priority": ')
    end = start
    while end < len(raw) and raw[end : end + 1].isdigit():
        end += 1
    return raw[:start] + str(level).encode() + raw[end:]


def age_queue(client: redis.Redis, queue: str, params: policies.PolicyParams, now: float | None = None) -> int:
    """Promote every due message of one model queue; returns how many moved."""
    now = time.time() if now is None else now
    lists = priority_lists(queue)
    due: list[Promotion] = []
    for level in PRIORITY_LEVELS[1:]:
        start = -PAGE
        while True:
            page = client.lrange(lists[level], start, start + PAGE - 1)  # oldest end first
            moving = promotions(page, level, now, params)
            due.extend(moving)
            if len(moving) < len(page) or len(page) < PAGE:
                break
            start -= PAGE
    move = client.register_script(_MOVE)
    moved = 0
    # Oldest first, so among one pass's promotions the oldest is nearest the popping end of its new list.
    for p in sorted(due, key=lambda p: p.submitted_at):
        moved += move(keys=[lists[p.src], lists[p.dst]], args=[p.raw, _relevel(p.raw, p.dst)])
    return moved


def age_all(settings: Settings, client: redis.Redis) -> dict[str, int]:
    with session_scope(settings.sqlalchemy_url) as session:
        names = [
            m.name
            for m in session.scalars(select(Model))
            if (m.policy or settings.policy) == policies.Policy.AGING.value
        ]
    params = policies.PolicyParams.around(settings.typical_service_s)
    return {name: age_queue(client, model_queue(name), params) for name in names}
