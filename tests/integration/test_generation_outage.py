"""``Client.generate`` reads a generation's stream through a short Redis outage: a real worker, a Redis stopped
mid-stream and started again on its append-only file; the caller gets the whole text exactly once."""

from __future__ import annotations

import logging
import signal
import threading

import pytest

from app import errors
from harness import tiny_lm
from harness.fleet import wait_for

pytestmark = pytest.mark.integration
pytest.importorskip("transformers")

PROMPT = "the quick brown"


@pytest.fixture
def env(env, own_redis):
    # A budget that outlasts a restart with room to spare (each try fails at once: the port is closed).
    return {**env, "REDIS_URL": own_redis.url, "MAAS_RETRY_ATTEMPTS": "30", "MAAS_RETRY_MAX_S": "30"}


@pytest.fixture
def served(serve_lm):
    return serve_lm("lm")


def test_a_redis_restart_mid_stream_costs_the_reader_no_text(served, client, own_redis, caplog):
    caplog.set_level(logging.INFO, logger="maas.outage")
    expected = tiny_lm.solo(served, PROMPT, max_tokens=900)
    generation = client.generate("lm", PROMPT, max_tokens=900, timeout_s=60)
    chunks: list[str] = []
    failed: list[BaseException] = []

    def read() -> None:
        try:
            chunks.extend(generation)
        except Exception as exc:  # the test reports it instead of the text
            failed.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: chunks, 60, "the first text")
    # SIGTERM: Redis writes its append-only file whole and exits, so the stream comes back as it was; the reader
    # (and the worker) meet the outage while it is down.
    own_redis.kill(signal.SIGTERM)
    what = f"streaming generation {generation.id}"
    met = lambda: any(getattr(r, "what", None) == what for r in caplog.records)  # noqa: E731
    wait_for(met, 30, "the reader to meet the outage")
    assert not failed and reader.is_alive()
    own_redis.restart()
    reader.join(120)
    assert not reader.is_alive() and not failed, failed
    assert "".join(chunks) == expected  # nothing repeated, nothing skipped
    assert generation.text == expected and generation.finish_reason == "length"
    assert generation.usage["completion_tokens"] == 900


def test_a_redis_that_stays_away_past_the_budget_is_broker_unavailable(served, client, own_redis, settings):
    from app.client import Generation

    generation = client.generate("lm", PROMPT, max_tokens=900, timeout_s=60)
    pieces = iter(generation)
    next(pieces)
    own_redis.kill()
    # The same reader with a short budget: a few tries, then the typed error, naming what it was doing.
    short = Generation(generation.id, client.redis, 60, settings.signing_key, retry_attempts=3, retry_max_s=1)
    with pytest.raises(errors.BrokerUnavailable, match="streaming generation"):
        list(short)
