"""The gateway reading a generation's stream: through a Redis failover, and what it cancels when reading stops."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from app.broker import streams
from app.errors import BrokerUnavailable, ForgedMessage
from app.settings import Settings
from gateway.openai_api import collect_unless_gone, text_chunks

SETTINGS = Settings.from_env({"MAAS_RETRY_ATTEMPTS": "6", "MAAS_RETRY_MAX_S": "2", "MAAS_INFER_TIMEOUT_S": "5"})


def wire(entry: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in entry.items()}


class FlakyRedis:
    """A stream whose reads fail with ``outage`` while ``failing`` says so; records reads and cancels."""

    def __init__(self, entries: list[dict[str, str]], failing: Any = lambda read: False, cancel_fails: bool = False):
        self.entries = [(f"{i + 1}-0".encode(), wire(e)) for i, e in enumerate(entries)]
        self.failing, self.cancel_fails = failing, cancel_fails
        self.reads: list[str] = []  # the id each read asked to read after
        self.cancels: list[str] = []

    async def xread(self, keys: dict[str, str], block: int, count: int) -> Any:
        ((key, after),) = keys.items()
        self.reads.append(after)
        if self.failing(len(self.reads)):
            raise redis.ConnectionError("Redis is failing over")
        newer = [(i, f) for i, f in self.entries if int(i.split(b"-")[0]) > int(after.split("-")[0])]
        return [(key.encode(), newer[:1])] if newer else []  # one entry per read: a failure can fall between

    async def set(self, key: str, value: Any, ex: int | None = None) -> None:
        if self.cancel_fails:
            raise redis.ConnectionError("Redis is failing over")
        self.cancels.append(key)


async def read_all(client: FlakyRedis, reader: streams.Reader) -> str:
    return "".join([chunk async for chunk in text_chunks(client, "t1", reader, SETTINGS)])  # type: ignore[arg-type]


def test_a_read_that_meets_a_failover_resumes_after_the_last_entry_read():
    entries = [streams.text_entry(0, "hel"), streams.text_entry(3, "lo"), streams.end_entry("length", {})]
    client = FlakyRedis(entries, failing=lambda read: read in (2, 3))  # fails right after the first entry
    reader = streams.Reader("t1", "")
    assert asyncio.run(read_all(client, reader)) == "hello"
    assert reader.finish_reason == "length"
    assert client.reads[:4] == ["0", "1-0", "1-0", "1-0"]  # retried from the entry it had, nothing read twice


def test_redis_down_past_the_retry_limit_is_broker_unavailable():
    client = FlakyRedis([streams.text_entry(0, "hel")], failing=lambda read: read > 1)
    with pytest.raises(BrokerUnavailable):
        asyncio.run(read_all(client, streams.Reader("t1", "")))


class StaysConnected:
    """A Starlette request whose client never leaves."""

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}


@pytest.mark.parametrize("cancel_fails", [False, True])
def test_a_forged_entry_cancels_the_generation_on_the_non_streaming_routes(cancel_fails):
    """Reading ends on a forged entry while the caller is still there: the worker is told to stop (a Redis error on
    that cancel is not raised over the FORGED_MESSAGE)."""
    client = FlakyRedis([streams.text_entry(0, "forged")], cancel_fails=cancel_fails)
    reader = streams.Reader("t1", "fleet-key")

    async def serve() -> None:
        chunks = text_chunks(client, "t1", reader, SETTINGS)  # type: ignore[arg-type]
        await collect_unless_gone(StaysConnected(), chunks, reader, client, "t1")  # type: ignore[arg-type]

    with pytest.raises(ForgedMessage):
        asyncio.run(serve())
    assert client.cancels == ([] if cancel_fails else ["maas:gen:cancel:t1"])
