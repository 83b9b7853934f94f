"""Fuzzing with generated bad input (hypothesis, derandomized so every run tries the same cases).

- 1,000 bad requests through the client, and a sample through the CLI in process: each is refused with a typed
  error from app.errors, and nothing reaches a queue.
- 500 malformed raw messages pushed straight into a model queue and a worker's control queue, between legitimate
  requests: each bad message gets a typed error under its id or, without a readable id, a dead-letter entry;
  every legitimate request is answered correctly; the worker stays up and holds its model.
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import errors
from app.broker import dlq
from app.broker.keys import LEDGER_BODY
from app.broker.layout import celery_message, control_queue, model_queue, priority_lists
from app.signature import decode_tensor
from bench.models import add_one
from harness.fleet import wait_for

pytestmark = pytest.mark.integration
FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
X = np.zeros((1, 4), dtype=np.float32)
GOOD = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.0, 0.0, 0.0, 0.0]}
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


# --- bad requests, as an application would send them ----------------------------------------------------------------
def _mutated(tensor: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    return {**tensor, key: value}


BAD_TENSORS = st.one_of(
    st.text(max_size=6).filter(lambda n: n != "x").map(lambda n: _mutated(GOOD, "name", n)),
    JUNK.filter(lambda v: v != "x").map(lambda v: _mutated(GOOD, "name", v)),
    st.sampled_from(["FP64", "INT64", "BYTES", "fp32", "", "FP3"]).map(lambda d: _mutated(GOOD, "datatype", d)),
    JUNK.filter(lambda v: v != "FP32").map(lambda v: _mutated(GOOD, "datatype", v)),
    st.lists(st.integers(-3, 6), max_size=3).filter(lambda s: s != [1, 4]).map(lambda s: _mutated(GOOD, "shape", s)),
    JUNK.map(lambda v: _mutated(GOOD, "shape", v)),
    st.lists(st.floats(-1, 1), max_size=8).filter(lambda d: len(d) != 4).map(lambda d: _mutated(GOOD, "data", d)),
    JUNK.filter(lambda v: not (isinstance(v, list) and len(v) == 4)).map(lambda v: _mutated(GOOD, "data", v)),
    st.binary(max_size=20)
    .filter(lambda b: len(b) != 16)
    .map(lambda b: {k: v for k, v in GOOD.items() if k != "data"} | {"raw": base64.b64encode(b).decode()}),
    st.text(max_size=10).map(lambda t: {k: v for k, v in GOOD.items() if k != "data"} | {"raw": t + "!"}),
    st.sampled_from(["name", "shape", "datatype", "data"]).map(lambda k: {a: b for a, b in GOOD.items() if a != k}),
)
BAD_INPUTS = st.one_of(
    BAD_TENSORS.map(lambda t: [t]),
    st.just([GOOD, GOOD]),  # the same tensor twice
    st.just([]),  # no tensor
    BAD_TENSORS.map(lambda t: [GOOD, t]),
    st.lists(JUNK.filter(lambda v: not isinstance(v, dict)), min_size=1, max_size=3),  # not tensors at all
)
BAD_REFS = st.one_of(
    st.text(max_size=12).filter(lambda r: r != "add" and not r.startswith("add:1") and r != "add@latest"),
    st.integers(2, 10**6).map(lambda v: f"add:{v}"),
    st.text("abcxyz", min_size=1, max_size=6).map(lambda a: f"add@{a}"),
    st.sampled_from(["ADD", " add", "add ", "add:0", "add:-1", "add:x", "a" * 101, "", ":", "@", "add:1:1"]),
)


@st.composite
def bad_requests(draw: st.DrawFn) -> dict[str, Any]:
    """One request with at least one thing wrong; the rest as a good request has it."""
    request: dict[str, Any] = {"ref": "add", "inputs": [GOOD]}
    wrong = draw(st.sampled_from(["inputs", "ref", "priority", "request_class", "deadline_s"]))
    if wrong == "inputs":
        request["inputs"] = draw(BAD_INPUTS)
    elif wrong == "ref":
        request["ref"] = draw(BAD_REFS)
    elif wrong == "priority":
        request["priority"] = draw(
            st.one_of(st.integers().filter(lambda p: not 0 <= p <= 9), st.floats(), st.text(max_size=3))
        )
    elif wrong == "request_class":
        request["request_class"] = draw(st.text(max_size=12).filter(lambda c: c not in ("interactive", "batch")))
    else:
        request["deadline_s"] = draw(
            st.one_of(st.floats(max_value=0), st.just(math.nan), st.just(-math.inf), st.text(max_size=3))
        )
    return request


def test_a_thousand_bad_requests_each_get_a_typed_error_and_queue_nothing(client, register, tmp_path):
    register("add", add_one(tmp_path / "add.onnx"))
    seen: dict[str, int] = {}

    @settings(FUZZ, max_examples=1000)
    @given(bad_requests())
    def refused(request: dict[str, Any]) -> None:
        ref, inputs = request.pop("ref"), request.pop("inputs")
        with pytest.raises(errors.MaasError) as caught:
            client.infer(ref, inputs, **request)
        assert type(caught.value).__module__ == "app.errors" and caught.value.code in errors.BY_CODE
        seen[caught.value.code] = seen.get(caught.value.code, 0) + 1

    refused()
    assert sum(seen.values()) >= 1000
    assert {"INVALID_INPUT", "UNKNOWN_MODEL", "INVALID_PRIORITY", "UNKNOWN_POLICY"} <= set(seen), seen
    assert client.redis.hlen(LEDGER_BODY) == 0
    assert all(client.redis.llen(key) == 0 for key in priority_lists(model_queue("add")))


def test_bad_requests_through_the_cli_get_one_typed_line(env, register, tmp_path, monkeypatch, capsys):
    from app.cli import main

    register("add", add_one(tmp_path / "add.onnx"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    calls: list[object] = []

    @settings(FUZZ, max_examples=60)
    @given(bad_requests().filter(lambda r: "deadline_s" not in r and "request_class" not in r))
    def refused(request: dict[str, Any]) -> None:
        argv = ["infer", str(request["ref"]) or "add", "--input", f"x={json.dumps(request['inputs'])}"]
        if "priority" in request:
            argv += ["--priority", str(request["priority"])]
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse refuses the option itself, with usage on stderr
            code = exc.code
        err = capsys.readouterr().err
        calls.append(code)
        assert code in (1, 2), (argv, err)
        if code == 1:
            line = err.strip().splitlines()[-1]
            assert line.startswith("error: ") and line.split(":")[1].strip() in errors.BY_CODE, (argv, line)

    refused()
    assert len(calls) >= 60 and 1 in calls


# --- malformed raw messages, straight into the queues ---------------------------------------------------------------
def _envelope(task: str, task_id: str, args: Any, kwargs: Any, queue: str) -> dict[str, Any]:
    return json.loads(celery_message(task, task_id, args, kwargs, {}, queue, 5))


@st.composite
def raw_messages(draw: st.DrawFn) -> tuple[str | None, str, bytes]:
    """(task id a typed answer is due under, or None when it must be dead-lettered; which queue; the bytes)."""
    task_id = str(uuid.uuid4())
    queue = draw(st.sampled_from(["model", "model", "model", "control"]))
    target = model_queue("add") if queue == "model" else control_queue("w0@test")
    kinds = ["bytes", "json", "envelope", "no-id", "body", "content", "args", "task", "control"]
    kind = draw(st.sampled_from(kinds))
    if kind == "bytes":
        return None, target, draw(st.binary(min_size=1, max_size=40)).replace(b"{", b"(")
    if kind == "json":
        return None, target, json.dumps(draw(JUNK)).encode()
    good = _envelope("maas.infer", task_id, ["add", None, [GOOD]], {}, target)
    if kind == "envelope":  # kombu's own fields broken
        broken = draw(st.sampled_from(["properties", "delivery_tag", "headers", "body"]))
        if broken == "properties":
            good["properties"] = draw(JUNK)
        elif broken == "delivery_tag":
            good["properties"]["delivery_tag"] = draw(JUNK.filter(lambda v: not isinstance(v, str)))
        else:
            good[broken] = draw(JUNK.filter(lambda v: not isinstance(v, dict | str)))
        return None, target, json.dumps(good).encode()
    if kind == "no-id":
        good["headers"].pop(draw(st.sampled_from(["id", "task"])))
        good["headers"].pop("id", None)
        return None, target, json.dumps(good).encode()
    if kind == "body":  # the id is readable, the body is not
        good["body"] = draw(st.sampled_from(["!!!", base64.b64encode(b"not json").decode(), ""])) or "e30="
        return task_id, target, json.dumps(good).encode()
    if kind == "content":  # a content type the fleet does not accept (pickle, YAML...), refused unread
        good["content-type"] = draw(st.sampled_from(["application/x-python-serialize", "application/x-yaml", "x"]))
        return task_id, target, json.dumps(good).encode()
    if kind == "args":
        args = draw(
            st.one_of(
                st.lists(JUNK, max_size=4),
                st.tuples(JUNK, JUNK, JUNK).map(list),
                st.just(["add", None, [dict(GOOD, data=["a", "b", "c", "d"])]]),
                st.just(["add", None, [dict(GOOD, shape=[2, 2])]]),
            )
        )
        kwargs = draw(st.one_of(st.just({}), st.dictionaries(st.sampled_from(["deadline_at", "zz", "ref"]), JUNK)))
        return task_id, target, json.dumps(_envelope("maas.infer", task_id, args, kwargs, target)).encode()
    if kind == "task":
        name = draw(st.sampled_from(["maas.nope", "os.system", "", "maas.infer2"]))
        return task_id, target, json.dumps(_envelope(name, task_id, [1], {}, target)).encode()
    # control: an unsigned order for the worker, with any arguments
    name = draw(st.sampled_from(["maas.drain", "maas.unload", "maas.load"]))
    args = draw(st.one_of(st.just([1]), st.lists(JUNK, max_size=3)))
    control = control_queue("w0@test")
    return task_id, control, json.dumps(_envelope(name, task_id, args, {}, control)).encode()


def test_malformed_raw_messages_mixed_with_traffic_never_stop_the_fleet(client, fleet, register, tmp_path):
    register("add", add_one(tmp_path / "add.onnx"))
    worker = fleet.worker(0, "w0@test")
    client.load("add").wait()
    answered: list[str] = []
    dead: list[bytes] = []

    @settings(FUZZ, max_examples=10)
    @given(st.lists(raw_messages(), min_size=50, max_size=50))
    def survives(batch: list[tuple[str | None, str, bytes]]) -> None:
        legit = [client.infer("add", {"x": X + i}, priority=5) for i in range(3)]
        by_queue: dict[str, list[bytes]] = {}
        for task_id, queue, raw in batch:
            by_queue.setdefault(queue, []).append(raw)
            (answered.append(task_id) if task_id else dead.append(raw))
        pipe = client.redis.pipeline(transaction=False)
        for queue, raws in by_queue.items():
            pipe.lpush(priority_lists(queue)[5 if queue.startswith("m.") else 0], *raws)
        pipe.execute()
        legit += [client.infer("add", {"x": X + i}, priority=5) for i in range(3, 6)]
        for i, handle in enumerate(legit):
            got = decode_tensor(handle.wait(timeout_s=120)["outputs"][0]).reshape(-1)
            assert got.tolist() == [1.0 + i] * 4

    survives()
    assert len(answered) + len(dead) >= 500 and len(answered) >= 100 and len(dead) >= 100

    def typed(task_id: str) -> bool:
        result = client.app.AsyncResult(task_id)
        return result.ready() and isinstance(result.result, errors.MaasError)

    wait_for(lambda: all(typed(i) for i in answered), 120, "a typed error for every bad message with an id")
    wait_for(lambda: len(dlq.stored(client.redis)) >= len(dead), 120, "a dead letter for every one without")
    letters = [e for _, e in dlq.stored(client.redis) if e["malformed"]]
    assert len(letters) >= len(dead)
    codes = {client.app.AsyncResult(i).result.code for i in answered}
    assert {"MALFORMED_MESSAGE", "FORGED_MESSAGE", "INVALID_INPUT"} <= codes, codes
    assert worker.alive()
    (replica,) = [r for r in client.replicas() if r["model"] == "add"]
    assert replica["state"] == "READY"  # no unsigned order unloaded it
    answer = client.infer("add", {"x": X}).wait(timeout_s=60)
    assert decode_tensor(answer["outputs"][0]).reshape(-1).tolist() == [1.0] * 4
