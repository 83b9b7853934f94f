"""Leases in Redis: a key holding its holder's name with a TTL, claimed and renewed by one script.

A claim takes the key when it is free and renews it when the caller already holds it, in one round trip, so a
holder whose renewal arrives after its key expired and another took it learns it lost (no compare-then-write
race). Used by beat's leader election (:mod:`beat.leader`).
"""

from __future__ import annotations

import secrets

import redis

from app.broker.layout import text

# Renew if ours, take if free; 1 when the caller holds the lease afterwards.
_CLAIM = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# Delete only if ours: a holder leaving must not drop a lease another took after its own ran out.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


#: separates a holder's readable name from the nonce that makes it unique (two beats in containers may both be
#: pid 1 on hosts of the same name: without it both would renew "their" lease and lead)
NONCE_SEPARATOR = "#"


def unique_holder(name: str) -> str:
    """``name`` with a random nonce: the lease value. :func:`holder` gives the name back."""
    return f"{name}{NONCE_SEPARATOR}{secrets.token_hex(4)}"


def claim(client: redis.Redis, key: str, holder: str, ttl_ms: int) -> bool:
    """Take or renew the lease ``key`` for ``holder`` for ``ttl_ms``; whether ``holder`` holds it now."""
    return bool(client.eval(_CLAIM, 1, key, holder, ttl_ms))  # type: ignore[no-untyped-call]


def release(client: redis.Redis, key: str, holder: str) -> None:
    client.eval(_RELEASE, 1, key, holder)  # type: ignore[no-untyped-call]


def holder(client: redis.Redis, key: str) -> tuple[str, float] | None:
    """Who holds ``key`` (its name, without the nonce) and for how many seconds more, or None when nobody does."""
    pipe = client.pipeline()
    pipe.get(key)
    pipe.pttl(key)
    name, ttl_ms = pipe.execute()
    if name is None or int(ttl_ms) < 0:
        return None
    return text(name).partition(NONCE_SEPARATOR)[0], int(ttl_ms) / 1000.0
