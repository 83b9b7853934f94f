"""Scheduling by tokens inside a real worker: SRTF preemption at token steps, deadlines on the stream and result."""

from __future__ import annotations

import time

import pytest
from celery.result import AsyncResult

from app import errors
from harness import tiny_lm

pytestmark = pytest.mark.integration
pytest.importorskip("transformers")


@pytest.mark.parametrize("policy", ["srtf", "fifo"])
def test_a_short_generation_overtakes_a_running_long_one_only_under_srtf(
    policy, lm, fleet, register, configure, client, done_order
):
    """One slot, a long generation running: under SRTF a short request sent now preempts it at the next token
    step and finishes first, and the long one resumes to the very text it makes alone; under FIFO it waits."""
    artifact, runtime = lm
    register("lm", artifact, runtime="causal_lm", service_ms=5.0)
    configure("lm", policy=policy)
    fleet.worker(0, "w0@test", MAAS_GEN_MAX_SEQUENCES="1")
    client.load("lm").wait(timeout_s=120)

    long = client.generate("lm", "the quick brown", max_tokens=900, timeout_s=120)
    chunks = iter(long)
    first = next(chunks)  # it runs: the worker's one slot is taken
    short = client.generate("lm", "tokens flow", max_tokens=4, timeout_s=120)
    assert short.result() == tiny_lm.solo(runtime, "tokens flow", max_tokens=4)
    long_text = first + "".join(chunks)
    assert long_text == tiny_lm.solo(runtime, "the quick brown", max_tokens=900)
    expected = [short, long] if policy == "srtf" else [long, short]
    assert [g.id for g in done_order([short, long])] == [g.id for g in expected]


def test_deadlines_stop_a_generation_with_a_typed_error(lm, fleet, register, client):
    artifact, runtime = lm
    register("lm", artifact, runtime="causal_lm", service_ms=5.0)
    fleet.worker(0, "w0@test", MAAS_GEN_MAX_SEQUENCES="1")
    client.load("lm").wait(timeout_s=120)
    client.generate("lm", "warm up", max_tokens=2).result()

    # The whole generation: stopped mid-way, the text made before it streamed, the error on the stream and result.
    whole = client.generate("lm", "the quick brown", max_tokens=1000, deadline_s=0.3, timeout_s=60)
    made = []
    with pytest.raises(errors.DeadlineExceeded, match="whole generation"):
        for chunk in whole:
            made.append(chunk)
    assert made and tiny_lm.solo(runtime, "the quick brown", max_tokens=1000).startswith("".join(made))
    with pytest.raises(errors.DeadlineExceeded):
        AsyncResult(whole.id, app=client.app).get(timeout=30)

    # The first token: behind a long one in the only slot, it waits past its first-token deadline.
    long = client.generate("lm", "the quick brown", max_tokens=900, timeout_s=60)
    next(iter(long))
    late = client.generate("lm", "tokens flow", max_tokens=4, first_token_deadline_s=0.2, timeout_s=60)
    with pytest.raises(errors.DeadlineExceeded):
        late.result()
    # A first-token deadline met does not bound the rest.
    met = client.generate("lm", "tokens flow", max_tokens=200, first_token_deadline_s=30, timeout_s=60)
    assert met.result() == tiny_lm.solo(runtime, "tokens flow", max_tokens=200)
    long.result()


def test_a_worker_killed_with_a_preempted_generation_loses_nothing(lm, env, fleet, register, configure, tmp_path):
    """Killed while one generation is preempted (its own message, unacknowledged) and the request that preempted
    it runs (taken out of turn, known only to the ledger): both are made again by another worker, whole."""
    from app.broker import keys
    from app.client import Client
    from app.settings import Settings
    from harness.fleet import wait_for

    artifact, runtime = lm
    fleet.env = {**env, "MAAS_REAP_PERIOD_S": "1", "MAAS_WORKER_SYSTEM_TASKS": "false"}
    client = Client(Settings.from_env(fleet.env))
    register("lm", artifact, runtime="causal_lm", service_ms=5.0)
    configure("lm", policy="srtf")
    client.scheduler.invalidate("lm")
    fleet.controller()
    fleet.beat()
    doomed = fleet.worker(0, "w0@test", MAAS_GEN_MAX_SEQUENCES="1")
    client.load("lm", worker="w0@test").wait(timeout_s=120)

    long = client.generate("lm", "the quick brown", max_tokens=1000, timeout_s=120)
    long_chunks = iter(long)
    long_text = next(long_chunks)
    short = client.generate("lm", "tokens flow", max_tokens=500, timeout_s=120)
    short_chunks = iter(short)
    short_text = next(short_chunks)  # it runs: it took the long one's only slot
    assert client.redis.hexists(keys.held_by("w0@test"), long.id)
    assert not AsyncResult(long.id, app=client.app).ready()  # preempted, not finished
    doomed.kill()

    fleet.worker(1, "w1@test", MAAS_GEN_MAX_SEQUENCES="1")
    client.load("lm", worker="w1@test").wait(timeout_s=120)
    short_text += "".join(short_chunks)
    long_text += "".join(long_chunks)
    assert short_text == tiny_lm.solo(runtime, "tokens flow", max_tokens=500)
    assert long_text == tiny_lm.solo(runtime, "the quick brown", max_tokens=1000)
    for generation in (short, long):
        assert AsyncResult(generation.id, app=client.app).get(timeout=30)["worker"] == "w1@test"
    wait_for(lambda: client.redis.hlen(keys.held_by("w0@test")) == 0, 30, "the dead worker's holdings to be given back")


@pytest.fixture(scope="module")
def roomy_lm(tmp_path_factory: pytest.TempPathFactory):
    with tiny_lm.loaded(tmp_path_factory.mktemp("roomy-lm"), context=4096) as found:
        yield found


def test_a_generation_preempted_longer_than_its_readers_timeout_is_read_to_its_end(
    roomy_lm, fleet, register, configure, client
):
    """While a long generation waits preempted, its worker writes keep-alive entries to its stream, so a reader
    whose quiet limit is far shorter than the preemption reads it to its end, the very text it makes alone."""
    import threading

    artifact, runtime = roomy_lm
    register("lm", artifact, runtime="causal_lm", service_ms=5.0)
    configure("lm", policy="srtf")
    fleet.worker(0, "w0@test", MAAS_GEN_MAX_SEQUENCES="1", MAAS_GEN_KEEPALIVE_S="0.1")
    client.load("lm").wait(timeout_s=120)
    client.generate("lm", "warm up", max_tokens=2).result()

    long = client.generate("lm", "the quick brown", max_tokens=3500, timeout_s=60)
    chunks = iter(long)
    made = [next(chunks)]  # it runs: the worker's one slot is taken
    quiet_limit_s = 0.2
    long._timeout_s = quiet_limit_s  # from now on (the worker is warm): give up after this long without an entry
    failed: list[BaseException] = []

    def read_on() -> None:
        try:
            made.extend(chunks)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            failed.append(exc)

    reading = threading.Thread(target=read_on)
    reading.start()
    started = time.monotonic()
    short = client.generate("lm", "tokens flow", max_tokens=1500, timeout_s=60)
    assert short.result() == tiny_lm.solo(runtime, "tokens flow", max_tokens=1500)
    preempted_s = time.monotonic() - started
    reading.join(timeout=120)
    assert not reading.is_alive()
    assert not failed, failed
    assert "".join(made) == tiny_lm.solo(runtime, "the quick brown", max_tokens=3500)
    assert preempted_s > 3 * quiet_limit_s  # the premise: the long one waited far longer than its reader's limit
