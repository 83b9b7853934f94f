"""Bad requests to a live gateway on a real fleet, over plain HTTP: each gets Triton's status, a JSON
``{"error": "CODE: message"}`` body and the code in ``X-Maas-Error-Code``; the fleet keeps serving afterwards.

Also the refusals that depend on the fleet's state: QUEUE_FULL (503 with Retry-After) when a model's backlog is at
its limit, and the two 504s, DEADLINE_EXCEEDED (the request's deadline passed before any replica took it) and
TIMEOUT (the gateway's own wait ran out and it took the request back)."""

from __future__ import annotations

import http.client
import json
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import redis

from app.broker.queues import depth_by_priority
from app.signature import DATATYPES
from bench.models import reshape_to_2x2
from harness.fleet import wait_for, wait_past

pytestmark = pytest.mark.integration

API_KEY = "bad-input-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
LIMIT_BYTES = 64 * 1024
INFER = "/v2/models/iris/infer"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def error(self) -> str:
        return str(json.loads(self.body).get("error", ""))


def _connection(base: str, timeout_s: float) -> http.client.HTTPConnection:
    parts = urlsplit(base)
    assert parts.hostname == "127.0.0.1"
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)


def _read(conn: http.client.HTTPConnection) -> Reply:
    response = conn.getresponse()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())


def call(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 60,
) -> Reply:
    conn = _connection(base, timeout_s)
    try:
        conn.request(method, path, body=body, headers={**AUTH, **(headers or {})})
        return _read(conn)
    finally:
        conn.close()


def problems_with(reply: Reply, status: int, code: str, fragment: str = "") -> list[str]:
    """What is wrong with ``reply`` as the refusal ``status`` / ``code`` whose message holds ``fragment``."""
    found = []
    if reply.status != status:
        found.append(f"status {reply.status}, expected {status}")
    if reply.headers.get("x-maas-error-code") != code:
        found.append(f"X-Maas-Error-Code {reply.headers.get('x-maas-error-code')!r}, expected {code!r}")
    if not reply.headers.get("content-type", "").startswith("application/json"):
        found.append(f"content-type {reply.headers.get('content-type')!r}")
    try:
        doc = json.loads(reply.body)
    except ValueError:
        return [*found, f"body is not JSON: {reply.body[:200]!r}"]
    if not isinstance(doc, dict) or list(doc) != ["error"]:
        return [*found, f"body is not {{'error': ...}}: {doc!r}"]
    if not doc["error"].startswith(f"{code}: "):
        found.append(f"error {doc['error']!r} does not start with {code!r}")
    if fragment not in doc["error"]:
        found.append(f"error {doc['error']!r} does not say {fragment!r}")
    if status == 503 and reply.headers.get("retry-after") != "1":
        found.append(f"Retry-After {reply.headers.get('retry-after')!r}")
    return found


def expect(reply: Reply, status: int, code: str, fragment: str = "") -> str:
    found = problems_with(reply, status, code, fragment)
    assert not found, f"{found}: {reply}"
    return reply.error()


def _doc(*inputs: dict[str, Any], **rest: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **rest}).encode()


def _x(rows: np.ndarray, **changes: Any) -> dict[str, Any]:
    tensor = {"name": "X", "datatype": "FP32", "shape": list(rows.shape), "data": rows.tolist()}
    return {k: v for k, v in {**tensor, **changes}.items() if v is not None}


def _binary(name: str, datatype: str, shape: list[int], payload: bytes, size: int | None = None) -> tuple[bytes, str]:
    declared = len(payload) if size is None else size
    head = _doc({"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": declared}})
    return head + payload, str(len(head))


_SAMPLE = {"BOOL": [True, False, True, False], "BYTES": ["a", "b", "c", "d"]}


def _sample(datatype: str) -> list[Any]:
    return _SAMPLE.get(datatype, [1, 2, 3, 4])


def _payload(datatype: str) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", 1) + s.encode() for s in _SAMPLE["BYTES"])
    return (
        np.array(_sample(datatype), dtype=DATATYPES[datatype]).astype(DATATYPES[datatype].newbyteorder("<")).tobytes()
    )


Case = tuple[str, str, str, bytes | None, dict[str, str], int, str, str]
LENGTH = "Inference-Header-Content-Length"


def bad_requests(x: np.ndarray) -> list[Case]:
    """(id, method, path, body, headers, status, code, what the message must say): a bounded matrix."""
    one = x[:1]
    good = _doc(_x(one))
    cases: list[Case] = []

    def add(case: str, body: bytes | None, status: int, code: str, fragment: str, **kw: Any) -> None:
        method, path, headers = kw.get("method", "POST"), kw.get("path", INFER), kw.get("headers", {})
        cases.append((case, method, path, body, headers, status, code, fragment))

    def bad(case: str, body: bytes, fragment: str, **kw: Any) -> None:
        add(case, body, 400, "INVALID_INPUT", fragment, **kw)

    def bad_binary(case: str, framed: tuple[bytes, str], fragment: str) -> None:
        bad(case, framed[0], fragment, headers={LENGTH: framed[1]})

    # Every other datatype for the model's FP32 input, as JSON and as binary data.
    for datatype in (t for t in DATATYPES if t != "FP32"):
        wrong = f"input 'X': datatype '{datatype}', the model expects FP32"
        bad(f"json-{datatype}", _doc(_x(one, datatype=datatype, data=_sample(datatype))), wrong)
        bad_binary(f"binary-{datatype}", _binary("X", datatype, [1, 4], _payload(datatype)), wrong)
    # Values that are not FP32 numbers.
    for case, value, shown in [("string", "1.5", "the string '1.5'"), ("bool", True, "true"), ("null", None, "null")]:
        must = f"input 'X': FP32 data must be numbers; value 3 is {shown}"
        bad(f"fp32-{case}", _doc(_x(one, data=[5.1, 3.5, 1.4, value])), must)
    bad("fp32-overflow", _doc(_x(one, data=[1e39, 0, 0, 0])), "input 'X': 1e+39 is outside the range of FP32")
    # Shapes.
    for shape in ([4], [1, 3], [1, 5], [2, 2], [1, 4, 1]):
        data = [1.0] * int(np.prod(shape))
        bad(f"shape-{shape}", _doc(_x(one, shape=shape, data=data)), f"input 'X': shape {shape}, the model expects")
    bad("count", _doc(_x(one, shape=[2, 4])), "input 'X': shape [2, 4] needs 8 values, data has 4")
    bad("ragged", _doc(_x(one, shape=[2, 4], data=[[1, 2, 3, 4], [1, 2, 3]])), "input 'X': data is ragged")
    bad("shape-negative", _doc(_x(one, shape=[-1, 4])), "input 'X': shape must be a list of non-negative integers")
    # Inputs missing, unknown, doubled, incomplete; outputs unknown.
    bad("no-inputs", _doc(), "the request needs a non-empty list of inputs")
    bad("unknown-input", _doc(_x(one, name="Y")), "unexpected input tensor 'Y'; the model takes ['X']")
    bad("extra-input", _doc(_x(one), _x(one, name="Y")), "unexpected input tensor 'Y'")
    bad("twice", _doc(_x(one), _x(one)), "input 'X' is given twice")
    bad("no-data", _doc(_x(one, data=None)), "input 'X': needs data")
    bad("no-datatype", _doc(_x(one, datatype=None)), "input 'X': needs a datatype")
    bad("bad-datatype", _doc(_x(one, datatype="FLOAT")), "input 'X': unknown datatype 'FLOAT'")
    bad(
        "unknown-output", _doc(_x(one), outputs=[{"name": "label"}, {"name": "logits"}]), "unknown output(s) ['logits']"
    )
    # Parameters.
    bad("priority", _doc(_x(one), parameters={"priority": -1}), "parameters.priority -1")
    bad("timeout", _doc(_x(one), parameters={"timeout": "soon"}), "parameters.timeout 'soon'")
    bad("class", _doc(_x(one), parameters={"class": "bulk"}), "parameters.class 'bulk'")
    # Malformed JSON.
    for case, body in [("broken", b'{"inputs": ['), ("empty", b""), ("text", b"X=1,2"), ("latin1", b'{"id": "\xe9"}')]:
        bad(f"json-{case}", body, "the request body is not valid JSON")
    for case, body in [("list", b"[]"), ("null", b"null"), ("number", b"4")]:
        bad(f"body-{case}", body, "the request must be a JSON object")
    # Malformed binary framing.
    fp32 = np.asarray(one, dtype="<f4").tobytes()
    body, length = _binary("X", "FP32", [1, 4], fp32)
    for value in ("abc", "-1", "0", "1e3", str(len(body) + 1), "9" * 40):
        bad(f"length-{value[:8]}", body, "Inference-Header-Content-Length", headers={LENGTH: value})
    bad("length-short", body, "the request body is not valid JSON", headers={LENGTH: "20"})
    bad("binary-no-length", body, "the request body is not valid JSON")  # the binary part read as JSON
    bad_binary("binary-size", _binary("X", "FP32", [1, 4], fp32[:12]), "shape [1, 4] of FP32 needs 16 bytes")
    bad_binary("binary-past", _binary("X", "FP32", [1, 4], fp32[:12], size=16), "16 runs past the 12 bytes left")
    bad_binary("binary-left-over", (body + b"\0" * 8, length), "8 bytes of binary data follow the inputs")
    # Models, versions, aliases and names; unknown routes; wrong methods; keys.
    m = "/v2/models"
    add("unknown-model", good, 404, "UNKNOWN_MODEL", "'nosuch' is not registered", path=f"{m}/nosuch/infer")
    add("unknown-version", good, 404, "UNKNOWN_VERSION", "no version 7", path=f"{m}/iris/versions/7/infer")
    add("version-0", good, 404, "UNKNOWN_VERSION", "no version 0", path=f"{m}/iris/versions/0/infer")
    add("unknown-alias", good, 404, "UNKNOWN_ALIAS", "no alias 'prod'", path=f"{m}/iris/versions/prod/infer")
    add("unknown-model-meta", None, 404, "UNKNOWN_MODEL", "'nosuch'", method="GET", path=f"{m}/nosuch")
    add("unknown-ready", None, 404, "UNKNOWN_VERSION", "no version 9", method="GET", path=f"{m}/iris/versions/9/ready")
    add("unknown-stats", None, 404, "UNKNOWN_MODEL", "'nosuch'", method="GET", path=f"{m}/nosuch/stats")
    add("unknown-load", b"{}", 404, "UNKNOWN_MODEL", "'nosuch'", path="/v2/repository/models/nosuch/load")
    add("invalid-name", good, 400, "INVALID_MODEL_NAME", "model name '-bad' must be", path=f"{m}/-bad/infer")
    # The model is resolved before the body is parsed: an unknown model is a 404 whatever the body holds.
    add("unknown-model-bad-body", b"{", 404, "UNKNOWN_MODEL", "'nosuch'", path=f"{m}/nosuch/infer")
    bad("index-bad-json", b"{", "not valid JSON", path="/v2/repository/index")
    add("unknown-route", None, 404, "NOT_FOUND", "GET /v2/nope: no such route", method="GET", path="/v2/nope")
    add("unknown-route-post", good, 404, "NOT_FOUND", f"POST {m}/iris/predict: no such route", path=f"{m}/iris/predict")
    add("wrong-method", None, 405, "NOT_FOUND", f"GET {INFER}: method not allowed", method="GET")
    add(
        "wrong-method-live",
        None,
        405,
        "NOT_FOUND",
        "DELETE /v2/health/live: method",
        method="DELETE",
        path="/v2/health/live",
    )
    add("wrong-key", good, 401, "UNAUTHORIZED", "an API key is required", headers={"Authorization": "Bearer wrong"})
    add("no-key", None, 401, "UNAUTHORIZED", "", method="GET", path="/v2/nope", headers={"Authorization": ""})
    return cases


@pytest.fixture
def served(settings, client, fleet, register, iris):
    """iris loaded on one worker and a gateway with an API key and a 64 KiB body limit."""
    register("iris", iris["path"])
    worker = fleet.worker(0, "w0@test")
    client.load("iris").wait()
    _, url = fleet.gateway(MAAS_API_KEYS=API_KEY, MAAS_MAX_REQUEST_BYTES=str(LIMIT_BYTES))
    return worker, url


def assert_serves(url: str, iris: dict[str, Any], rows: slice = slice(0, 5)) -> None:
    reply = call(url, "POST", INFER, _doc(_x(iris["x"][rows]), id="still-serving"))
    assert reply.status == 200, reply
    answer = json.loads(reply.body)
    assert answer["id"] == "still-serving"
    labels = next(o for o in answer["outputs"] if o["name"] == "label")
    assert labels["data"] == iris["expected"][rows].tolist()


def test_every_bad_request_gets_its_status_code_and_json_error_and_the_fleet_keeps_serving(
    served, iris, client, register, tmp_path
):
    worker, url = served
    assert_serves(url, iris)
    # A model error is a 500: reshape_to_2x2 takes any FP32[-1] by its signature and fails at run time unless 4.
    register("reshape", reshape_to_2x2(tmp_path / "reshape.onnx"))
    client.load("reshape").wait()
    three = {"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}
    expect(call(url, "POST", "/v2/models/reshape/infer", _doc(three)), 500, "MODEL_ERROR", "model raised")
    cases = bad_requests(iris["x"])
    wrong = {}
    for case, method, path, body, headers, status, code, fragment in cases:
        reply = call(url, method, path, body, headers)
        found = problems_with(reply, status, code, fragment)
        if found:
            wrong[case] = (found, reply.body[:300])
    assert not wrong, json.dumps({k: [v[0], v[1].decode(errors="replace")] for k, v in wrong.items()}, indent=1)
    assert call(url, "GET", INFER).headers.get("allow") == "POST"  # a 405 says which methods the route takes
    assert worker.alive()
    assert_serves(url, iris, slice(40, 140))


def _padded(body: bytes, size: int) -> bytes:
    """``body`` with JSON whitespace appended up to ``size`` bytes."""
    return body + b" " * (size - len(body))


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_all_sent(served, iris):
    worker, url = served
    good = _doc(_x(iris["x"][:3]), id="at-the-limit")
    at_limit = call(url, "POST", INFER, _padded(good, LIMIT_BYTES))
    assert at_limit.status == 200, at_limit
    expect(
        call(url, "POST", INFER, _padded(good, LIMIT_BYTES + 1)), 413, "REQUEST_TOO_LARGE", "over the limit of 65536"
    )

    # A declared length of 100 MiB: refused from the header, while only 16 KiB of the body has been sent.
    conn = _connection(url, 30)
    try:
        conn.putrequest("POST", INFER)
        for name, value in {**AUTH, "Content-Type": "application/json", "Content-Length": str(100 * 2**20)}.items():
            conn.putheader(name, value)
        conn.endheaders()
        conn.send(b"[" * 16384)
        expect(_read(conn), 413, "REQUEST_TOO_LARGE", "the body of 104857600 bytes is over the limit of 65536")
    finally:
        conn.close()

    # No declared length (chunked): refused once 80 KiB have arrived, although the body never ends.
    conn = _connection(url, 30)
    try:
        conn.putrequest("POST", INFER)
        for name, value in {**AUTH, "Transfer-Encoding": "chunked"}.items():
            conn.putheader(name, value)
        conn.endheaders()
        for _ in range(5):
            conn.send(b"4000\r\n" + b" " * 0x4000 + b"\r\n")
        expect(_read(conn), 413, "REQUEST_TOO_LARGE", "the body is over the limit of 65536")
    finally:
        conn.close()
    assert worker.alive()
    assert_serves(url, iris)


def _infer_in_thread(url: str, body: bytes) -> tuple[threading.Thread, list[Reply]]:
    replies: list[Reply] = []
    thread = threading.Thread(target=lambda: replies.append(call(url, "POST", INFER, body, timeout_s=120)), daemon=True)
    thread.start()
    return thread, replies


def test_queue_full_is_503_with_retry_after_and_deadlines_are_504(settings, client, fleet, register, configure, iris):
    """Nothing serves iris at first (its one worker holds no replica of it), so requests wait in its queue."""
    register("iris", iris["path"])
    configure("iris", max_queue=1)
    worker = fleet.worker(0, "w0@test")
    _, url = fleet.gateway()
    _, impatient = fleet.gateway("gateway-2s", MAAS_INFER_TIMEOUT_S="2")
    r = redis.Redis.from_url(settings.redis_url)

    def waiting() -> int:
        return sum(depth_by_priority(r, "m.iris"))

    one = _doc(_x(iris["x"][:1]))
    # TIMEOUT: the gateway's wait runs out; it takes the request back, so nothing is left queued.
    started = time.monotonic()
    reply = call(impatient, "POST", INFER, one)
    expect(reply, 504, "TIMEOUT", "no answer within 2s; the request was withdrawn before any worker took it")
    assert 1.5 < time.monotonic() - started < 30
    assert waiting() == 0
    # DEADLINE_EXCEEDED at the gateway: a 1 ms deadline passes while no replica takes the request, so the gateway
    # takes it back at once rather than holding the caller for its whole wait.
    started = time.monotonic()
    reply = call(impatient, "POST", INFER, _doc(_x(iris["x"][:1]), parameters={"timeout": 1000}))
    expect(reply, 504, "DEADLINE_EXCEEDED", "passed before any replica took the request; not executed")
    assert time.monotonic() - started < 1.5
    assert waiting() == 0

    # QUEUE_FULL: one request waits (its deadline 0.5 s away); the next one is refused at once.
    thread, late = _infer_in_thread(url, _doc(_x(iris["x"][:1]), parameters={"deadline_ms": 500}))
    wait_for(lambda: waiting() == 1, 60, "the first request to wait in iris's queue")
    queued_at = time.time()  # after the gateway stamped its deadline
    started = time.monotonic()
    expect(call(url, "POST", INFER, one), 503, "QUEUE_FULL", "'iris' has 1 requests waiting, at its limit of 1")
    assert time.monotonic() - started < 10  # refused, not queued

    # DEADLINE_EXCEEDED: once a replica serves iris, its worker finds the waiting request past its deadline.
    wait_past(queued_at + 0.5)
    client.load("iris").wait()
    thread.join(timeout=120)
    assert late, "the late request got no reply"
    expect(late[0], 504, "DEADLINE_EXCEEDED", "not executed")
    assert worker.alive()
    assert_serves(url, iris)
