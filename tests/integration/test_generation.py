"""Generation through the fleet: a real worker, Redis and PostgreSQL; tokens streamed through a Redis Stream."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import errors
from app.broker import holdings, keys
from app.generation import SamplingParams
from harness import tiny_lm
from harness.fleet import wait_for

pytestmark = pytest.mark.integration
pytest.importorskip("transformers")

PROMPTS = ["the quick brown", "tokens flow", "a model as a service", "continuous batching lets"]


solo = tiny_lm.solo


@pytest.fixture
def served(serve_lm):
    return serve_lm("lm")


def test_streamed_tokens_equal_the_in_process_greedy_output(served, client):
    generation = client.generate("lm", "the quick brown", max_tokens=24)
    chunks = list(generation)
    assert len(chunks) > 1  # it streamed, not one block at the end
    assert "".join(chunks) == solo(served, "the quick brown", max_tokens=24)
    assert generation.finish_reason == "length"
    assert generation.usage["completion_tokens"] == 24
    # The whole text is also the task's result, for callers that do not stream.
    from celery.result import AsyncResult

    result = AsyncResult(generation.id, app=client.app).get(timeout=30)
    assert result["text"] == generation.text and result["worker"] == "w0@test"


def test_concurrent_generations_each_get_their_solo_text(served, client):
    lengths = [40, 6, 25, 12]
    gens = [client.generate("lm", p, max_tokens=n) for p, n in zip(PROMPTS, lengths, strict=True)]
    assert [g.result() for g in gens] == [solo(served, p, max_tokens=n) for p, n in zip(PROMPTS, lengths, strict=True)]
    sampled = client.generate("lm", "tokens flow", max_tokens=12, temperature=0.9, top_p=0.9, seed=5)
    assert sampled.result() == solo(served, "tokens flow", max_tokens=12, temperature=0.9, top_p=0.9, seed=5)
    stop = gens[1].text[-3:]
    full = solo(served, "tokens flow", max_tokens=30)
    stopped = client.generate("lm", "tokens flow", max_tokens=30, stop=[stop])
    assert stopped.result() == full[: full.find(stop)]
    assert stopped.finish_reason == "stop"


def test_cancelling_stops_the_generation_on_the_worker(served, client):
    generation = client.generate("lm", "the quick brown", max_tokens=1000, timeout_s=60)
    made = []
    with pytest.raises(errors.Cancelled):
        for chunk in generation:
            made.append(chunk)
            if len(made) == 2:
                generation.cancel()
    assert len(generation.text) < len(solo(served, "the quick brown", max_tokens=1000))
    # The worker is free again at once: a short request is answered.
    assert client.generate("lm", "tokens flow", max_tokens=3).result() == solo(served, "tokens flow", max_tokens=3)


def test_a_bad_request_fails_with_a_typed_error(served, client, register, iris):
    with pytest.raises(errors.InvalidInput):
        client.generate("lm", "tokens flow", max_tokens=0)
    register("iris", iris["path"])
    with pytest.raises(errors.InvalidInput, match="not a generative model"):
        client.generate("iris", "tokens flow")
    too_long = client.generate("lm", "tokens flow", max_tokens=4096, timeout_s=60)
    with pytest.raises(errors.InvalidInput, match="context"):
        too_long.result()


def test_the_cli_prints_the_text(served, env):
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "generate", "lm", "tokens flow", "--max-tokens", "10"],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout == solo(served, "tokens flow", max_tokens=10) + "\n"


@pytest.fixture
def reaping_env(env):
    return {**env, "MAAS_REAP_PERIOD_S": "1", "MAAS_WORKER_SYSTEM_TASKS": "false"}


def test_a_generation_on_a_killed_worker_is_requeued_and_answered_once(lm, reaping_env, fleet, register, tmp_path):
    """The generation's message is acked only when done: killed mid-generation, it goes back to the queue (held
    requests), another replica makes it again, and the stream reader sees every character exactly once."""
    from app.client import Client
    from app.settings import Settings

    artifact, runtime = lm
    fleet.env = reaping_env
    client = Client(Settings.from_env(reaping_env))
    register("lm", artifact, runtime="causal_lm")
    fleet.controller()
    fleet.beat()
    workers = {"w0@test": fleet.worker(0, "w0@test"), "w1@test": fleet.worker(1, "w1@test")}
    for name in workers:
        client.load("lm", worker=name).wait(timeout_s=120)

    generation = client.generate("lm", "the quick brown", max_tokens=900, timeout_s=90)
    chunks = iter(generation)
    first = next(chunks)
    holder = next(w for w in workers if client.redis.hexists(keys.held_by(w), generation.id))
    other = next(w for w in workers if w != holder)
    workers[holder].kill()
    killed_at = time.monotonic()
    text = first + "".join(chunks)
    assert text == solo(runtime, "the quick brown", max_tokens=900)
    print(f"finished {time.monotonic() - killed_at:.1f}s after the kill")
    from celery.result import AsyncResult

    assert AsyncResult(generation.id, app=client.app).get(timeout=30)["worker"] == other
    wait_for(lambda: client.redis.hlen(keys.held_by(holder)) == 0, 30, "the dead worker's holdings to be given back")
    assert holdings.give_back(client.redis, holder) == []


def test_the_stream_is_trimmed_and_expires(served, client):
    generation = client.generate("lm", "tokens flow", max_tokens=5)
    generation.result()
    ttl = client.redis.ttl(keys.generation_stream(generation.id))
    assert 0 < ttl <= client.settings.result_expires_s


def test_tokens_flow_before_the_generation_ends(served, client, tmp_path: Path):
    generation = client.generate("lm", "the quick brown", max_tokens=600, timeout_s=60)
    chunks = iter(generation)
    next(chunks)
    from celery.result import AsyncResult

    assert not AsyncResult(generation.id, app=client.app).ready()  # the first text came while it still ran
    "".join(chunks)
    assert generation.finish_reason == "length"


def test_a_short_generation_overtakes_a_waiting_long_one(lm, env, fleet, register, configure, client):
    """Under SJF a generation's size is its max_tokens: with one sequence at a time, a short request sent after a
    long one that waits is generated first."""
    artifact, runtime = lm
    register("lm", artifact, runtime="causal_lm", service_ms=5.0)
    configure("lm", policy="sjf")
    fleet.worker(0, "w0@test", MAAS_GEN_MAX_SEQUENCES="1")
    client.load("lm").wait(timeout_s=120)
    short_order = client.prepare_generation("lm", "tokens flow", SamplingParams(max_tokens=4))
    long_order = client.prepare_generation("lm", "tokens flow", SamplingParams(max_tokens=800))
    assert short_order.priority < long_order.priority  # the precondition: levels by size

    first = client.generate("lm", "the quick brown", max_tokens=800, timeout_s=120)
    next(iter(first))  # running: the worker's one slot is taken
    waiting_long = client.generate("lm", "the quick brown", max_tokens=800, timeout_s=120)
    short = client.generate("lm", "tokens flow", max_tokens=4, timeout_s=120)
    assert short.result() == solo(runtime, "tokens flow", max_tokens=4)
    from celery.result import AsyncResult

    assert not AsyncResult(waiting_long.id, app=client.app).ready()  # overtaken
    waiting_long.result()
    first.result()
