"""Triton's generate extension on a real gateway process, a real worker and the tiny LM."""

from __future__ import annotations

import http.client
import json
import uuid
from typing import Any
from urllib.parse import urlparse

import pytest

from app import errors
from app.broker import keys
from harness import tiny_lm
from harness.fleet import wait_for

pytestmark = pytest.mark.integration
pytest.importorskip("transformers")

API_KEY = "sk-test-key-0123456789abcdef"
PROMPT = "the quick brown"


@pytest.fixture
def served(serve_lm, fleet):
    runtime = serve_lm("tiny-gpt")
    _, url = fleet.gateway(MAAS_API_KEYS=API_KEY)
    return url, runtime


def connect(url: str) -> http.client.HTTPConnection:
    parsed = urlparse(url)
    return http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)


def post(url: str, path: str, body: Any, key: str | None = API_KEY) -> tuple[int, dict[str, str], bytes]:
    conn = connect(url)
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    conn.request("POST", path, body=body if isinstance(body, bytes) else json.dumps(body), headers=headers)
    response = conn.getresponse()
    try:
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def events(raw: bytes) -> list[dict[str, Any]]:
    lines = [line for line in raw.decode().split("\n") if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [json.loads(line[len("data: ") :]) for line in lines]


def test_streamed_text_equals_the_whole_answer_and_the_in_process_greedy_text(served):
    url, runtime = served
    expected = tiny_lm.solo(runtime, PROMPT, max_tokens=20)

    status, headers, raw = post(url, "/v2/models/tiny-gpt/generate_stream", {"text_input": PROMPT, "max_tokens": 20})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    streamed = events(raw)
    assert len([e for e in streamed if e["text_output"]]) > 1  # several events, as the tokens came
    assert "".join(e["text_output"] for e in streamed) == expected
    assert all(e["model_name"] == "tiny-gpt" and e["model_version"] == "1" for e in streamed)
    assert streamed[-1]["finish_reason"] == "length" and streamed[-1]["usage"]["completion_tokens"] == 20

    body = {"id": "req-7", "text_input": PROMPT, "parameters": {"max_tokens": 20, "temperature": 0}}
    status, headers, raw = post(url, "/v2/models/tiny-gpt/generate", body)
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json.loads(raw)
    assert answer["text_output"] == expected
    assert (answer["id"], answer["model_name"], answer["model_version"]) == ("req-7", "tiny-gpt", "1")
    assert answer["finish_reason"] == "length"

    # The versioned routes, and stop strings and seeded sampling through them.
    stop = expected[8:11]
    status, _, raw = post(url, "/v2/models/tiny-gpt/versions/1/generate", {"text_input": PROMPT, "stop": [stop]})
    assert status == 200 and json.loads(raw)["text_output"] == expected[: expected.find(stop)]
    sampled = {"max_tokens": 12, "temperature": 0.8, "top_p": 0.9, "seed": 11}
    status, _, raw = post(url, "/v2/models/tiny-gpt/versions/1/generate_stream", {"text_input": PROMPT, **sampled})
    assert status == 200
    assert "".join(e["text_output"] for e in events(raw)) == tiny_lm.solo(runtime, PROMPT, **sampled)


@pytest.mark.parametrize("route", ["generate", "generate_stream"])
def test_bad_requests_get_the_typed_error_naming_what_was_wrong(served, route):
    url, _ = served
    path = f"/v2/models/tiny-gpt/{route}"
    for body, named in [
        (b"{not json", "not valid JSON"),
        ({"prompt": PROMPT}, "prompt"),
        ({"text_input": PROMPT, "parameters": {"max_tokens": 0}}, "max_tokens"),
        ({"text_input": PROMPT, "parameters": {"top_k": 3}}, "top_k"),
        ({"text_input": PROMPT, "max_tokens": 3, "parameters": {"max_tokens": 4}}, "max_tokens"),
    ]:
        status, headers, raw = post(url, path, body)
        assert status == 400, raw
        assert headers["x-maas-error-code"] == "INVALID_INPUT"
        message = json.loads(raw)["error"]
        assert message.startswith("INVALID_INPUT: ") and named in message

    status, headers, raw = post(url, f"/v2/models/no-such-model/{route}", {"text_input": PROMPT})
    assert status == 404 and headers["x-maas-error-code"] == "UNKNOWN_MODEL"
    assert json.loads(raw)["error"].startswith("UNKNOWN_MODEL: ")
    status, _, _ = post(url, f"/v2/models/tiny-gpt/versions/9/{route}", {"text_input": PROMPT})
    assert status == 404
    status, headers, _ = post(url, path, {"text_input": PROMPT}, key=None)
    assert status == 401 and headers["x-maas-error-code"] == "UNAUTHORIZED"
    status, _, _ = post(url, path, {"text_input": PROMPT}, key="wrong-key")
    assert status == 401


def test_a_streaming_client_that_leaves_cancels_its_generation(served, client):
    url, runtime = served
    conn = connect(url)
    body = {"text_input": PROMPT, "parameters": {"max_tokens": 480}}
    conn.request(
        "POST",
        "/v2/models/tiny-gpt/generate_stream",
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    assert json.loads(response.readline().decode()[len("data: ") :])["text_output"]
    held = keys.held_by("w0@test")
    running = [k.decode() for k in client.redis.hkeys(held)]
    assert len(running) == 1  # the generation this stream reads, held by the worker while it runs
    conn.close()  # gone after the first event

    result = client.app.AsyncResult(running[0])
    wait_for(result.ready, 60, "the generation to end")
    assert result.state == "FAILURE" and "CANCELLED" in str(result.result)
    # The engine dropped it (CANCELLED, above) and serves on: a short request gets its solo text.
    status, _, raw = post(url, "/v2/models/tiny-gpt/generate", {"text_input": "tokens flow", "max_tokens": 3})
    assert status == 200 and json.loads(raw)["text_output"] == tiny_lm.solo(runtime, "tokens flow", max_tokens=3)


def test_a_forged_stream_entry_is_refused_with_a_typed_error(served, client, settings):
    """Someone who can write Redis but lacks the fleet key appends text to a generation's stream: the gateway
    refuses it (and cancels the generation), and so does the Python client."""
    url, _ = served
    conn = connect(url)
    conn.request(
        "POST",
        "/v2/models/tiny-gpt/generate_stream",
        body=json.dumps({"text_input": PROMPT, "max_tokens": 480}),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    assert json.loads(response.readline().decode()[len("data: ") :])["text_output"]
    (task_id,) = [k.decode() for k in client.redis.hkeys(keys.held_by("w0@test"))]
    client.redis.xadd(keys.generation_stream(task_id), {"k": "text", "o": "0", "x": "forged text", "s": "0" * 64})
    last = events(response.read())[-1]
    conn.close()
    assert last["error"].startswith("FORGED_MESSAGE: ")
    result = client.app.AsyncResult(task_id)
    wait_for(result.ready, 60, "the generation to end")
    assert result.state == "FAILURE" and "CANCELLED" in str(result.result)

    # The Python client's reader refuses the same entry (no worker needed: the stream is all it reads).
    from app.client import Generation

    fake_id = str(uuid.uuid4())
    client.redis.xadd(keys.generation_stream(fake_id), {"k": "end", "r": "stop", "u": "{}"})
    with pytest.raises(errors.ForgedMessage, match="no signature"):
        list(Generation(fake_id, client.redis, 10, settings.signing_key))


def test_a_timeout_too_short_for_the_generation_is_deadline_exceeded(served):
    url, _ = served
    path = "/v2/models/tiny-gpt"
    for where in ("parameters", "top level"):
        # Triton's timeout is in microseconds: 1,000 is a millisecond, gone before the worker takes it.
        body: dict[str, Any] = {"text_input": PROMPT, "parameters": {"max_tokens": 480}}
        if where == "parameters":
            body["parameters"]["timeout"] = 1000
        else:
            body["timeout"] = 1000
        status, headers, raw = post(url, f"{path}/generate", body)
        assert status == 504 and headers["x-maas-error-code"] == "DEADLINE_EXCEEDED", (where, raw)
        assert json.loads(raw)["error"].startswith("DEADLINE_EXCEEDED: ")

        status, _, raw = post(url, f"{path}/generate_stream", body)
        assert status == 200  # the stream was open: the error is its last event
        assert events(raw)[-1]["error"].startswith("DEADLINE_EXCEEDED: "), where

    # A generous timeout (and a priority) changes nothing about the text.
    body = {"text_input": PROMPT, "parameters": {"max_tokens": 5, "timeout": 60_000_000, "priority": 1}}
    status, _, raw = post(url, f"{path}/generate", body)
    assert status == 200 and json.loads(raw)["text_output"] == tiny_lm.solo(served[1], PROMPT, max_tokens=5)


@pytest.mark.parametrize("route", ["generate", "generate_stream"])
def test_bad_priority_or_timeout_is_refused_naming_it(served, route):
    url, _ = served
    for body, named in [
        ({"text_input": PROMPT, "parameters": {"priority": -2}}, "priority"),
        ({"text_input": PROMPT, "priority": "high"}, "priority"),
        ({"text_input": PROMPT, "parameters": {"timeout": "5s"}}, "timeout"),
        ({"text_input": PROMPT, "timeout": -1}, "timeout"),
    ]:
        status, headers, raw = post(url, f"/v2/models/tiny-gpt/{route}", body)
        assert status == 400 and headers["x-maas-error-code"] == "INVALID_INPUT", raw
        assert named in json.loads(raw)["error"]


@pytest.fixture
def unserved(lm, fleet, register):
    """The model registered, a gateway, and no worker: a request waits in its queue, at the level it was given."""
    artifact, _ = lm
    register("tiny-gpt", artifact, runtime="causal_lm")
    _, url = fleet.gateway(MAAS_API_KEYS=API_KEY)
    return url


@pytest.mark.parametrize(("route", "where"), [("generate", "parameters"), ("generate_stream", "top level")])
def test_triton_s_priority_is_the_level_the_generation_waits_at(unserved, client, route, where):
    from app.broker.layout import model_queue
    from app.broker.queues import depth_by_priority

    # Triton's 1 is the highest; the fleet's levels count from 0: priority 4 waits at level 3.
    body: dict[str, Any] = {"text_input": PROMPT, "parameters": {"max_tokens": 4}}
    if where == "parameters":
        body["parameters"]["priority"] = 4
    else:
        body["priority"] = 4
    conn = connect(unserved)
    conn.request(
        "POST",
        f"/v2/models/tiny-gpt/{route}",
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    queue = model_queue("tiny-gpt")
    wait_for(lambda: sum(depth_by_priority(client.redis, queue)) == 1, 60, "the generation to wait in its queue")
    assert depth_by_priority(client.redis, queue)[3] == 1
    conn.close()
