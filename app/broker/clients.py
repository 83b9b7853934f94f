"""Redis clients: one connection pool per process and URL, in a synchronous and a ``redis.asyncio`` flavour.

Every Redis connection the fleet opens itself comes from here (kombu and Celery's result backend keep pools of
their own). A pool is keyed by process id, so a forked child never shares a parent's sockets, and an asyncio
client by event loop too, since its connections belong to the loop that opened them.

Timeouts are set so that nothing waits forever on a Redis that stopped answering: a connect gives up after
``CONNECT_TIMEOUT_S``, a command after ``COMMAND_TIMEOUT_S``; idle connections are checked before reuse.
"""

from __future__ import annotations

import asyncio
import os
import threading

import redis
import redis.asyncio

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
_sync: dict[tuple[int, str], redis.Redis] = {}
_async: dict[tuple[int, int, str], tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis]] = {}


def _options() -> dict[str, object]:
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": COMMAND_TIMEOUT_S,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }


def sync_client(url: str) -> redis.Redis:
    """This process's client for ``url`` (thread-safe: redis-py's pool hands each thread its own connection)."""
    key = (os.getpid(), url)
    client = _sync.get(key)
    if client is None:
        with _lock:
            client = _sync.get(key)
            if client is None:
                client = _sync[key] = redis.Redis.from_url(url, **_options())  # type: ignore[arg-type]
    return client


def async_client(url: str) -> redis.asyncio.Redis:
    """This process's asyncio client for ``url`` on the running event loop."""
    loop = asyncio.get_running_loop()
    key = (os.getpid(), id(loop), url)
    found = _async.get(key)
    # A closed loop's id can be reused by a new one: the loop itself is kept to tell them apart.
    if found is None or found[0] is not loop:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=ASYNC_MAX_CONNECTIONS, timeout=COMMAND_TIMEOUT_S, **_options()
        )
        found = _async[key] = (loop, redis.asyncio.Redis(connection_pool=pool))
    return found[1]
