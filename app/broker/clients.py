"""Redis clients: one connection pool per process and URL, in a synchronous and a ``redis.asyncio`` flavour.

Every Redis connection the fleet opens itself comes from here (kombu and Celery's result backend keep pools of
their own). A pool is keyed by process id, so a forked child never shares a parent's sockets, and an asyncio
client by event loop too, since its connections belong to the loop that opened them.

With Redis Sentinel (``REDIS_URL=sentinel://h1:26379;sentinel://h2:26379/0``) a client asks the Sentinels for
the primary of ``MAAS_REDIS_SENTINEL_MASTER`` and asks again after a failover (redis-py's Sentinel pools do); kombu
and Celery's result backend get the same URL and master name (``app.celery_app``), so one setting moves them all.

Timeouts are set so that nothing waits forever on a Redis that stopped answering: a connect gives up after
``CONNECT_TIMEOUT_S``, a command after ``COMMAND_TIMEOUT_S``; idle connections are checked before reuse.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

if TYPE_CHECKING:
    from app.settings import Settings

#: Sentinel's own port, when a sentinel:// URL names none.
SENTINEL_PORT = 26379
#: The master name a sentinel:// URL is resolved with when the caller names none (MAAS_REDIS_SENTINEL_MASTER's default).
DEFAULT_SENTINEL_MASTER = "maas"

#: A connection attempt to Redis gives up after this long.
CONNECT_TIMEOUT_S = 5.0
#: A command that has had no reply for this long fails (none of ours blocks on the server side).
COMMAND_TIMEOUT_S = 30.0
#: A connection idle for longer than this is pinged before it is used again.
HEALTH_CHECK_INTERVAL_S = 30
#: Connections one asyncio client opens at most; beyond that a command waits for one to free up (up to the
#: command timeout) instead of failing, so thousands of requests in flight share a bounded pool.
ASYNC_MAX_CONNECTIONS = 64

_lock = threading.Lock()
_sync: dict[tuple[int, str, str], redis.Redis] = {}
_async: dict[tuple[int, int, str, str], tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis]] = {}


def sentinel_parts(url: str) -> tuple[list[tuple[str, int]], int, str | None]:
    """``sentinel://[:pw@]h1:26379;sentinel://h2:26379/0`` -> ([(h1, 26379), (h2, 26379)], db 0, password)."""
    hosts, db, password = [], 0, None
    for part in url.split(";"):
        parsed = urlsplit(part)
        hosts.append((parsed.hostname or "localhost", parsed.port or SENTINEL_PORT))
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
        if parsed.password:
            password = unquote(parsed.password)
    return hosts, db, password


def _options() -> dict[str, object]:
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": COMMAND_TIMEOUT_S,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }


def sync_client(url: str, sentinel_master: str = DEFAULT_SENTINEL_MASTER) -> redis.Redis:
    """This process's client for ``url`` (thread-safe: redis-py's pool hands each thread its own connection)."""
    key = (os.getpid(), url, sentinel_master)
    client = _sync.get(key)
    if client is None:
        with _lock:
            client = _sync.get(key)
            if client is None:
                client = _sync[key] = _new_sync(url, sentinel_master)
    return client


def _new_sync(url: str, sentinel_master: str) -> redis.Redis:
    if not url.startswith("sentinel://"):
        return redis.Redis.from_url(url, **_options())  # type: ignore[arg-type]
    hosts, db, password = sentinel_parts(url)
    sentinel = redis.sentinel.Sentinel(
        hosts, sentinel_kwargs={"socket_timeout": CONNECT_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S}
    )
    return sentinel.master_for(sentinel_master, db=db, password=password, **_options())  # type: ignore[arg-type]


def async_client(url: str, sentinel_master: str = DEFAULT_SENTINEL_MASTER) -> redis.asyncio.Redis:
    """This process's asyncio client for ``url`` on the running event loop."""
    loop = asyncio.get_running_loop()
    key = (os.getpid(), id(loop), url, sentinel_master)
    found = _async.get(key)
    # A closed loop's id can be reused by a new one: the loop itself is kept to tell them apart.
    if found is None or found[0] is not loop:
        found = _async[key] = (loop, _new_async(url, sentinel_master))
    return found[1]


def _new_async(url: str, sentinel_master: str) -> redis.asyncio.Redis:
    if url.startswith("sentinel://"):
        hosts, db, password = sentinel_parts(url)
        sentinel = redis.asyncio.sentinel.Sentinel(
            hosts, sentinel_kwargs={"socket_timeout": CONNECT_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S}
        )
        return sentinel.master_for(sentinel_master, db=db, password=password, **_options())  # type: ignore[arg-type]
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=ASYNC_MAX_CONNECTIONS, timeout=COMMAND_TIMEOUT_S, **_options()
    )
    return redis.asyncio.Redis(connection_pool=pool)


def for_settings(settings: Settings) -> redis.Redis:
    """:func:`sync_client` for the fleet's REDIS_URL and Sentinel master name."""
    return sync_client(settings.redis_url, settings.redis_sentinel_master)


def async_for_settings(settings: Settings) -> redis.asyncio.Redis:
    """:func:`async_client` for the fleet's REDIS_URL and Sentinel master name."""
    return async_client(settings.redis_url, settings.redis_sentinel_master)


#: the fleet counter of writes fewer replicas acknowledged than MAAS_REDIS_WAIT_REPLICAS asks
UNREPLICATED = "unreplicated_writes"


#: how long the primary's replica counts are trusted before INFO is asked again
REPLICA_COUNT_TTL_S = 1.0


@dataclass(frozen=True)
class ReplicaCounts:
    """The primary's replicas, from ``INFO replication``: ``connected`` ones (``connected_slaves``) and, of those,
    the ``online`` ones, able to acknowledge a write now.

    A replica in a full sync with the primary (waiting for its snapshot, or loading it) is connected but not online:
    it acknowledges no WAIT until the sync ends. That happens after a promotion when the other replica cannot go on
    from the new primary's stream (it had read further, or was a primary itself meanwhile)."""

    connected: int
    online: int

    @classmethod
    def of(cls, replication: Mapping[str, object]) -> ReplicaCounts:
        online = sum(
            1
            for key, entry in replication.items()
            if key.startswith("slave")
            and key[len("slave") :].isdigit()
            and isinstance(entry, Mapping)
            and entry.get("state") == "online"
        )
        return cls(connected=int(replication.get("connected_slaves", 0)), online=online)  # type: ignore[call-overload]


_replica_counts: dict[str, tuple[float, ReplicaCounts]] = {}  # REDIS_URL -> (monotonic time read, counts)


def _needed(settings: Settings, counts: ReplicaCounts) -> int:
    return max(settings.redis_wait_replicas, counts.connected)


def _cached_counts(settings: Settings) -> ReplicaCounts | None:
    found = _replica_counts.get(settings.redis_url)
    if found is None or time.monotonic() - found[0] > REPLICA_COUNT_TTL_S:
        return None
    return found[1]


def replica_counts(client: redis.Redis, settings: Settings) -> ReplicaCounts:
    """:class:`ReplicaCounts` of the primary now, read at most once a second per process."""
    counts = _cached_counts(settings)
    if counts is None:
        counts = ReplicaCounts.of(client.info("replication"))
        _replica_counts[settings.redis_url] = (time.monotonic(), counts)
    return counts


async def replica_counts_async(client: redis.asyncio.Redis, settings: Settings) -> ReplicaCounts:
    """:func:`replica_counts` for asyncio code."""
    counts = _cached_counts(settings)
    if counts is None:
        counts = ReplicaCounts.of(await client.info("replication"))
        _replica_counts[settings.redis_url] = (time.monotonic(), counts)
    return counts


def replicas_needed(client: redis.Redis, settings: Settings) -> int:
    """How many replicas an admission waits for: MAAS_REDIS_WAIT_REPLICAS, and at least every replica connected to
    the primary now (:func:`replica_counts`). 0 when durability is off.

    Why every connected one: Sentinel promotes the replica with the highest replication offset it last saw, a best
    effort; a write that reached one replica of two was lost when the other was promoted (1 run in 12, on a busy
    machine). A write every connected replica has survives whichever is promoted. A replica in a full sync counts
    too, though it cannot acknowledge until the sync ends: Sentinel may still promote it, so admissions are refused
    meanwhile rather than accepted on the other replica alone. A replica that is down is not waited for."""
    if settings.redis_wait_replicas <= 0:
        return 0
    return _needed(settings, replica_counts(client, settings))


async def replicas_needed_async(client: redis.asyncio.Redis, settings: Settings) -> int:
    """:func:`replicas_needed` for asyncio code."""
    if settings.redis_wait_replicas <= 0:
        return 0
    return _needed(settings, await replica_counts_async(client, settings))


@dataclass(frozen=True)
class ResultDurability:
    """What storing a result waits for: ``wait_for`` replicas, the online ones (0: no WAIT at all), out of
    ``needed``, the count an admission waits for. A WAIT for a replica that cannot acknowledge would hold the worker
    for the whole timeout on every result it stores (a run traced here stored 3 a second instead of 30 for 15 s);
    a result stored with fewer than ``needed`` is kept and counted unreplicated. A failover that loses it loses
    nothing accepted: the request is still in the ledger and in kombu's unacknowledged messages on the promoted
    replica (they were acknowledged after the result was written, and a replica holds a prefix of the primary's
    writes), so it comes back, late: the reaper requeues it once its worker has moved on to another request (or
    the visibility timeout does)."""

    wait_for: int
    needed: int

    def reached(self, replies: list[object]) -> bool:
        if self.needed <= 0:
            return True
        return self.wait_for >= self.needed and replicated(replies, self.wait_for)


def result_durability(client: redis.Redis, settings: Settings) -> ResultDurability:
    if settings.redis_wait_replicas <= 0:
        return ResultDurability(0, 0)
    counts = replica_counts(client, settings)
    return ResultDurability(wait_for=counts.online, needed=_needed(settings, counts))


def wait_replicas(pipe: redis.client.Pipeline | redis.asyncio.client.Pipeline, needed: int, settings: Settings) -> None:
    """Durability: end ``pipe`` with a WAIT for ``needed`` replicas (:func:`replicas_needed`) to have its writes, at
    most MAAS_REDIS_WAIT_TIMEOUT_MS. WAIT covers the writes of its own connection, which is why it rides on the
    pipeline that made them. Nothing is added when ``needed`` is 0; :func:`replicated` reads the reply."""
    if needed > 0:
        pipe.wait(needed, settings.redis_wait_timeout_ms)


def replicated(replies: list[object], needed: int) -> bool:
    """Whether the pipeline's WAIT (its last reply) saw ``needed`` replicas; True when nothing was waited for."""
    if needed <= 0:
        return True
    return int(replies[-1]) >= needed  # type: ignore[call-overload]
