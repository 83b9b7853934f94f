"""The fleet's Lua scripts: read from ``lua/*.lua``, registered once per client, called by name.

``register_script`` makes redis-py call a script by its SHA (EVALSHA) and send its text only when the server
does not know it yet (after a restart or a ``SCRIPT FLUSH``), so a hot loop never ships the script again. The
registration is kept per client object (weakly, so a dropped client takes its scripts with it); each client
flavour, synchronous or asyncio, has its own.

Each script's header documents its KEYS and ARGV; the functions here are their only callers and build both from
:mod:`app.broker.layout` and :mod:`app.broker.keys`, so the number of priority levels comes from one constant.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
from redis.client import Pipeline
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError

from app.broker import clients, keys
from app.broker.layout import PRIORITY_LEVELS, priority_lists
from app.errors import AdmissionNotReplicated, QueueFull

if TYPE_CHECKING:
    from app.settings import Settings


@cache
def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return resources.files("app.broker").joinpath("lua", f"{name}.lua").read_text()


_sync_scripts: weakref.WeakKeyDictionary[redis.Redis, dict[str, Script]] = weakref.WeakKeyDictionary()
_async_scripts: weakref.WeakKeyDictionary[redis.asyncio.Redis, dict[str, AsyncScript]] = weakref.WeakKeyDictionary()


def script(client: redis.Redis, name: str) -> Script:
    registered = _sync_scripts.setdefault(client, {})
    if name not in registered:
        registered[name] = client.register_script(source(name))
    return registered[name]


def async_script(client: redis.asyncio.Redis, name: str) -> AsyncScript:
    registered = _async_scripts.setdefault(client, {})
    if name not in registered:
        registered[name] = client.register_script(source(name))
    return registered[name]


@cache
def _sha(name: str) -> str:
    return hashlib.sha1(source(name).encode()).hexdigest()  # noqa: S324  # the script's name on the server, not security


def pipelined(
    client: redis.Redis, name: str, keys: list[Any], args: list[Any], then: Callable[[Pipeline], None] | None = None
) -> list[Any]:
    """Script ``name`` by its SHA, then what ``then`` queues, in one round trip; the replies (the script's error,
    if any, as its reply: the caller decides; an error of what ``then`` queued is raised).

    redis-py's ``Script`` in a pipeline sends ``SCRIPT EXISTS`` before every ``execute``: a second round trip on
    the hottest path there is (every stored result). Here a server that lost the script (a restart, ``SCRIPT
    FLUSH``) answers NOSCRIPT, which means the script did not run; it is loaded and the round trip made again.
    """
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(_sha(name), len(keys), *keys, *args)
        if then is not None:
            then(pipe)
        replies = pipe.execute(raise_on_error=False)
        if attempt == 0 and isinstance(replies[0], NoScriptError):
            client.script_load(source(name))
            continue
        for reply in replies[1:]:
            if isinstance(reply, Exception):
                raise reply
        return replies
    raise AssertionError("unreachable: the second attempt returns")


# --- admit.lua ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Admission:
    """What admitting one request writes: its ledger body, its aging facts when its model is under aging, and,
    when ``message`` is given, the message itself onto the list of level ``priority`` (publish in the same call)."""

    queue: str
    model: str
    task_id: str
    now: float
    ledger_body: dict[str, Any]
    limit: int
    aging_facts: dict[str, Any] | None = None
    message: bytes | None = None
    priority: int = 0

    def keys(self) -> list[str]:
        return [
            *priority_lists(self.queue),
            keys.LEDGER_SINCE,
            keys.LEDGER_BODY,
            keys.ARRIVALS,
            keys.aging_index(self.model),
            keys.AGING_FACTS,
        ]

    def args(self) -> list[Any]:
        facts = json.dumps(self.aging_facts) if self.aging_facts else ""
        return [
            len(PRIORITY_LEVELS),
            self.limit,
            self.task_id,
            self.now,
            json.dumps(self.ledger_body),
            self.model,
            facts,
            self.message if self.message is not None else "",
            self.priority,
        ]

    @property
    def list_key(self) -> str:
        """The list the message goes onto."""
        return priority_lists(self.queue)[self.priority]

    def outcome(self, reply: Any) -> int:
        waiting = int(reply)
        if waiting < 0:
            raise QueueFull(f"model {self.model!r} has {-1 - waiting} requests waiting, at its limit of {self.limit}")
        return waiting


def admit(client: redis.Redis, admission: Admission, settings: Settings | None = None) -> int:
    """Record the request if its queue has room; return the backlog it joins, or raise QueueFull.

    With ``settings`` asking for durability (MAAS_REDIS_WAIT_REPLICAS), the request is accepted only once that many
    Redis replicas have it: a failover then keeps it. When the WAIT times out first, the write is counted
    (unreplicated_writes) and the admission refused with AdmissionNotReplicated; the caller takes back what it
    wrote, and if a worker has already taken the message, counts it accepted after all.
    """
    if settings is None or settings.redis_wait_replicas <= 0:
        return admission.outcome(script(client, "admit")(keys=admission.keys(), args=admission.args()))
    needed = clients.replicas_needed(client, settings)
    replies = pipelined(
        client,
        "admit",
        admission.keys(),
        admission.args(),
        then=lambda pipe: clients.wait_replicas(pipe, needed, settings),
    )
    waiting = admission.outcome(_raise_error(replies[0]))  # a full queue wrote nothing: nothing to replicate
    if not clients.replicated(replies, needed):
        client.hincrby(keys.FLEET_COUNTERS, clients.UNREPLICATED, 1)
        raise _not_replicated(admission, settings, waiting)
    return waiting


async def admit_async(client: redis.asyncio.Redis, admission: Admission, settings: Settings | None = None) -> int:
    """:func:`admit` for asyncio code (the HTTP gateway): the same script, the same records, the same WAIT."""
    if settings is None or settings.redis_wait_replicas <= 0:
        reply = await async_script(client, "admit")(keys=admission.keys(), args=admission.args())
        return admission.outcome(reply)
    needed = await clients.replicas_needed_async(client, settings)
    pipe = client.pipeline(transaction=False)
    await async_script(client, "admit")(keys=admission.keys(), args=admission.args(), client=pipe)
    clients.wait_replicas(pipe, needed, settings)
    replies = await pipe.execute(raise_on_error=False)
    waiting = admission.outcome(_raise_error(replies[0]))
    if not clients.replicated(replies, needed):
        await client.hincrby(keys.FLEET_COUNTERS, clients.UNREPLICATED, 1)
        raise _not_replicated(admission, settings, waiting)
    return waiting


def _not_replicated(admission: Admission, settings: Settings, backlog: int) -> AdmissionNotReplicated:
    """Accepted means a replica has it (a failover can lose what only the primary has): this one was not."""
    return AdmissionNotReplicated(
        f"request {admission.task_id} reached the Redis primary, but not every connected replica (at least "
        f"{settings.redis_wait_replicas}) confirmed it within {settings.redis_wait_timeout_ms} ms "
        "(MAAS_REDIS_WAIT_REPLICAS, MAAS_REDIS_WAIT_TIMEOUT_MS): not accepted, as a failover now could lose it; "
        "safe to send again",
        backlog,
    )


def _raise_error(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply


def withdraw(client: redis.Redis, model: str, task_id: str, counted: bool = True) -> None:
    """Take back what :func:`admit` recorded, for a request whose publish failed or that nobody will read.

    ``counted``: whether the admission is known to have run (its arrival is uncounted then); a caller that does
    not know (the reply was lost) passes False and the arrival count stays, one too high at worst."""
    pipe = client.pipeline(transaction=False)
    pipe.zrem(keys.LEDGER_SINCE, task_id)
    pipe.hdel(keys.LEDGER_BODY, task_id)
    pipe.zrem(keys.aging_index(model), task_id)
    pipe.hdel(keys.AGING_FACTS, task_id)
    if counted:
        pipe.hincrby(keys.ARRIVALS, model, -1)
    pipe.execute()


# --- take_back.lua --------------------------------------------------------------------------------------------------
def _take_back_call(list_key: str, message: bytes, model: str, task_id: str) -> tuple[list[str], list[Any]]:
    script_keys = [
        list_key,
        keys.LEDGER_SINCE,
        keys.LEDGER_BODY,
        keys.aging_index(model),
        keys.AGING_FACTS,
        keys.ARRIVALS,
    ]
    return script_keys, [message, task_id, model]


def take_back(client: redis.Redis, list_key: str, message: bytes, model: str, task_id: str) -> bool:
    """Remove a still-queued request and its admission records in one step; False if a worker already has it."""
    script_keys, args = _take_back_call(list_key, message, model, task_id)
    return bool(script(client, "take_back")(keys=script_keys, args=args))


async def take_back_async(client: redis.asyncio.Redis, list_key: str, message: bytes, model: str, task_id: str) -> bool:
    """:func:`take_back` for the asyncio client (the gateway)."""
    script_keys, args = _take_back_call(list_key, message, model, task_id)
    return bool(await async_script(client, "take_back")(keys=script_keys, args=args))


# --- take_batch.lua -------------------------------------------------------------------------------------------------
def take_batch(client: redis.Redis, queue: str, count: int, task: str = "maas.infer") -> list[bytes]:
    """Pop up to ``count`` waiting ``task`` messages of ``queue``, highest level first (see take_batch.lua)."""
    if count <= 0:
        return []
    return list(script(client, "take_batch")(keys=priority_lists(queue), args=[count, task]))
