"""The OpenAI-compatible API of a real gateway process, driven by the official ``openai`` package."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import tiny_lm
from harness.fleet import wait_for

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")
pytest.importorskip("transformers")

API_KEY = "sk-test-key-0123456789abcdef"


solo = tiny_lm.solo


@pytest.fixture
def served(serve_lm, fleet):
    runtime = serve_lm("tiny-gpt")
    _, url = fleet.gateway(MAAS_API_KEYS=API_KEY)
    return url, runtime


def test_streamed_completion_equals_in_process_greedy(served):
    url, runtime = served
    api = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    expected = solo(runtime, "the quick brown", max_tokens=20)

    stream = api.completions.create(
        model="tiny-gpt", prompt="the quick brown", max_tokens=20, temperature=0, stream=True
    )
    pieces, reasons = [], []
    for event in stream:
        pieces.append(event.choices[0].text)
        reasons.append(event.choices[0].finish_reason)
    assert "".join(pieces) == expected
    assert len([p for p in pieces if p]) > 1  # several events, as the tokens came
    assert reasons[-1] == "length"

    whole = api.completions.create(model="tiny-gpt", prompt="the quick brown", max_tokens=20, temperature=0)
    assert whole.choices[0].text == expected
    assert whole.usage.completion_tokens == 20

    # The worker ships its token figures with its heartbeat: /metrics shows them soon after.
    def scraped() -> dict[str, float]:
        request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            families = text_string_to_metric_families(response.read().decode())
            return {s.name: s.value for f in families for s in f.samples if s.labels.get("model") == "tiny-gpt"}

    wait_for(lambda: scraped().get("maas_generated_tokens_total", 0) >= 40, 60, "the token counts in /metrics")
    values = scraped()
    assert values["maas_time_to_first_token_seconds_count"] == 2
    assert values["maas_inter_token_latency_seconds_count"] == 38
    assert "maas_generation_kv_cache_bytes" in values and "maas_generation_sequences_in_flight" in values


def test_chat_completions_stream_and_not(served):
    url, runtime = served
    api = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "tokens flow"}]
    expected = solo(runtime, "user: tokens flow\nassistant:", max_tokens=12)

    stream = api.chat.completions.create(model="tiny-gpt", messages=messages, max_tokens=12, temperature=0, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == expected
    answer = api.chat.completions.create(model="tiny-gpt", messages=messages, max_tokens=12, temperature=0)
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].finish_reason == "length"

    sampled = dict(model="tiny-gpt", messages=messages, max_tokens=12, temperature=0.8, top_p=0.9, seed=11)
    first = api.chat.completions.create(**sampled).choices[0].message.content
    assert first == api.chat.completions.create(**sampled).choices[0].message.content


def test_models_auth_and_bad_requests(served):
    url, _ = served
    api = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    assert [m.id for m in api.models.list()] == ["tiny-gpt"]

    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with pytest.raises(openai.BadRequestError):
        api.completions.create(model="tiny-gpt", prompt="x", max_tokens=3, n=2)
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="no-such-model", prompt="x", max_tokens=3)


def test_raw_sse_ends_with_done(served):
    url, _ = served
    body = json.dumps({"model": "tiny-gpt", "prompt": "tokens flow", "max_tokens": 4, "stream": True}).encode()
    request = urllib.request.Request(
        f"{url}/v1/completions",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = [line for line in response.read().decode().split("\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "length"
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(urllib.request.Request(f"{url}/v1/models"), timeout=30)
    assert denied.value.code == 401


def test_a_streaming_client_that_leaves_cancels_its_generation(served, client):
    import http.client
    from urllib.parse import urlparse

    from celery.result import AsyncResult

    url, runtime = served
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    body = {"model": "tiny-gpt", "prompt": "the quick brown", "max_tokens": 480, "temperature": 0, "stream": True}
    conn.request(
        "POST",
        "/v1/completions",
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    first = response.readline().decode()
    task_id = json.loads(first[len("data: ") :])["id"].removeprefix("cmpl-")
    conn.close()  # gone after the first event

    result = AsyncResult(task_id, app=client.app)
    wait_for(result.ready, 60, "the generation to end")
    assert result.state == "FAILURE" and "CANCELLED" in str(result.result)


def test_a_waiting_non_streaming_client_that_leaves_cancels_its_generation(served, client):
    import http.client
    from urllib.parse import urlparse

    from celery.result import AsyncResult

    from app.broker import keys

    url, _ = served
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    body = {"model": "tiny-gpt", "prompt": "the quick brown", "max_tokens": 480, "temperature": 0}
    conn.request(
        "POST",
        "/v1/completions",
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    held = keys.held_by("w0@test")

    def running() -> str | None:
        entries = {k.decode(): float(v) for k, v in client.redis.hgetall(held).items()}
        newest = max(entries, key=entries.get, default=None)
        return newest if newest and not AsyncResult(newest, app=client.app).ready() else None

    wait_for(lambda: running() is not None, 60, "the worker to run the generation")
    task_id = running()
    conn.close()
    result = AsyncResult(task_id, app=client.app)
    wait_for(result.ready, 60, "the generation to end")
    assert result.state == "FAILURE" and "CANCELLED" in str(result.result)


def test_a_deadline_in_extra_body_ends_the_generation_with_deadline_exceeded(served):
    url, runtime = served
    api = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    long = dict(model="tiny-gpt", prompt="the quick brown", max_tokens=480, temperature=0)
    started = time.monotonic()
    full = api.completions.create(**long).choices[0].text
    whole_s = time.monotonic() - started
    assert full == solo(runtime, "the quick brown", max_tokens=480)

    # Not streaming: the typed error, as an HTTP 504 the openai package raises.
    for extra in ({"deadline_s": whole_s / 4}, {"first_token_deadline_s": 0.001}):
        with pytest.raises(openai.InternalServerError) as late:
            api.completions.create(**long, extra_body=extra)
        assert late.value.status_code == 504 and late.value.body["code"] == "DEADLINE_EXCEEDED", extra
        assert "deadline" in late.value.message  # OpenAI's error shape: the package shows the message
        # ...and tells the package not to send it again by itself (it retries a 5xx twice otherwise).
        assert late.value.response.headers["x-should-retry"] == "false"

    # Streaming: the route's error event after the text made before the deadline, then [DONE].
    body = {**long, "stream": True, "deadline_s": whole_s / 4}
    request = urllib.request.Request(
        f"{url}/v1/completions",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        lines = [line for line in response.read().decode().split("\n") if line]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][len("data: ") :])["error"]
    assert error["code"] == "DEADLINE_EXCEEDED", error
    streamed = "".join(json.loads(line[len("data: ") :])["choices"][0]["text"] for line in lines[:-2])
    assert full.startswith(streamed) and len(streamed) < len(full)

    # Chat takes the same fields; a generous deadline changes nothing.
    messages = [{"role": "user", "content": "tokens flow"}]
    answer = api.chat.completions.create(
        model="tiny-gpt",
        messages=messages,
        max_tokens=8,
        temperature=0,
        extra_body={"deadline_s": 60, "first_token_deadline_s": 30, "priority": 1},
    )
    assert answer.choices[0].message.content == solo(runtime, "user: tokens flow\nassistant:", max_tokens=8)


@pytest.mark.parametrize(
    ("extra", "code", "named"),
    [
        ({"priority": 12}, "INVALID_PRIORITY", "priority"),
        ({"priority": "high"}, "INVALID_PRIORITY", "priority"),
        ({"deadline_s": -1}, "INVALID_INPUT", "deadline_s"),
        ({"first_token_deadline_s": "soon"}, "INVALID_INPUT", "first_token_deadline_s"),
    ],
)
def test_a_bad_scheduling_field_is_refused_naming_it(served, extra, code, named):
    url, _ = served
    api = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as refused:
            api.completions.create(model="tiny-gpt", prompt="x", max_tokens=3, stream=stream, extra_body=extra)
        assert refused.value.response.headers["x-maas-error-code"] == code
        assert refused.value.body["code"] == code and named in refused.value.message


@pytest.fixture
def unserved(lm, fleet, register):
    """The model registered, a gateway, and no worker: a request waits in its queue, at the level it was given."""
    artifact, _ = lm
    register("tiny-gpt", artifact, runtime="causal_lm")
    _, url = fleet.gateway(MAAS_API_KEYS=API_KEY)
    return url


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_the_priority_in_the_body_is_the_level_the_generation_waits_at(unserved, client, route):
    import http.client
    from urllib.parse import urlparse

    from app.broker.layout import model_queue
    from app.broker.queues import depth_by_priority

    parsed = urlparse(unserved)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    body: dict[str, object] = {"model": "tiny-gpt", "max_tokens": 4, "priority": 7}
    body |= {"messages": [{"role": "user", "content": "hi"}]} if "chat" in route else {"prompt": "hi"}
    conn.request(
        "POST",
        route,
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    queue = model_queue("tiny-gpt")
    wait_for(lambda: sum(depth_by_priority(client.redis, queue)) == 1, 60, "the generation to wait in its queue")
    assert depth_by_priority(client.redis, queue)[7] == 1
    conn.close()
