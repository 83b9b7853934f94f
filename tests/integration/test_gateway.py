"""The HTTP gateway on a real fleet, driven by NVIDIA's own ``tritonclient`` and by plain HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from app import registry
from app.artifacts import LocalArtifactStore
from app.db.session import session_scope

pytestmark = pytest.mark.integration
tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

API_KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def auth() -> dict[str, str]:
    """A fresh headers dict per call: tritonclient adds its own headers to the dict it is given."""
    return dict(AUTH)


def _register(settings, name, path, **kw):
    store = LocalArtifactStore(settings.artifact_dir, settings.max_artifact_bytes)
    with session_scope(settings.sqlalchemy_url) as session:
        return registry.register(session, store, name, path, **kw).version


def _http(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=body, method=method, headers={**AUTH, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@pytest.fixture
def served(settings, client, fleet, iris):
    """iris registered twice (versions 1 and 2), loaded on one worker, and a gateway with an API key."""
    _register(settings, "iris", iris["path"])
    _register(settings, "iris", iris["path"])
    fleet.worker(0, "w0@test")
    client.load("iris:1").wait()
    client.load("iris:2").wait()
    _, url = fleet.gateway(MAAS_API_KEYS=API_KEY)
    return url


def test_tritonclient_metadata_json_and_binary_infer_with_ids(served, iris):
    triton = tritonclient_http.InferenceServerClient(served.removeprefix("http://"))
    assert triton.is_server_live(headers=auth()) and triton.is_server_ready(headers=auth())
    assert triton.is_model_ready("iris", headers=auth())
    meta = triton.get_model_metadata("iris", headers=auth())
    assert meta["versions"] == ["1", "2"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    extensions = triton.get_server_metadata(headers=auth())["extensions"]
    assert "binary_tensor_data" in extensions and "generate" in extensions

    x = iris["x"][:7]
    for binary_in in (False, True):
        for binary_out in (False, True):
            inp = tritonclient_http.InferInput("X", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary_in)
            out = tritonclient_http.InferRequestedOutput("label", binary_data=binary_out)
            request_id = f"r-{binary_in}-{binary_out}"
            result = triton.infer("iris", [inp], outputs=[out], request_id=request_id, headers=auth())
            assert result.get_response()["id"] == f"r-{binary_in}-{binary_out}"
            assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]  # only what was asked
            np.testing.assert_array_equal(result.as_numpy("label"), iris["expected"][:7])

    inp = tritonclient_http.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    versioned = triton.infer("iris", [inp], model_version="1", headers=auth())  # every output, binary by default
    assert versioned.get_response()["model_version"] == "1"
    assert versioned.as_numpy("probabilities").shape == (7, 3)


def test_tritonclient_errors_and_repository(served, iris):
    triton = tritonclient_http.InferenceServerClient(served.removeprefix("http://"))
    with pytest.raises(InferenceServerException, match="UNKNOWN_MODEL"):
        triton.get_model_metadata("nosuch", headers=auth())
    inp = tritonclient_http.InferInput("X", [2, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="INVALID_INPUT") as bad:
        triton.infer("iris", [inp], headers=auth())
    assert bad.value.status() == "400"
    with pytest.raises(InferenceServerException, match="UNKNOWN_VERSION") as missing:
        triton.infer("iris", [inp], model_version="7", headers=auth())
    assert missing.value.status() == "404"

    index = triton.get_model_repository_index(headers=auth())
    assert {(m["name"], m["version"], m["state"]) for m in index} == {("iris", "1", "READY"), ("iris", "2", "READY")}
    triton.unload_model("iris", headers=auth())
    assert not triton.is_model_ready("iris", headers=auth())
    triton.load_model("iris", headers=auth())
    assert triton.is_model_ready("iris", headers=auth())


def test_plain_http_json_auth_status_codes(served, iris):
    body = json.dumps(
        {
            "id": "plain-1",
            "inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": iris["x"][:2].tolist()}],
        }
    ).encode()
    status, headers, content = _http(f"{served}/v2/models/iris/infer", "POST", body)
    assert status == 200, (content, body)
    answer = json.loads(content)
    assert answer["id"] == "plain-1" and answer["model_version"] == "2"
    labels = next(o for o in answer["outputs"] if o["name"] == "label")
    assert labels["data"] == iris["expected"][:2].tolist()

    assert _http(f"{served}/v2/models/iris/infer", "POST", b"{not json")[0] == 400
    status, headers, content = _http(f"{served}/v2/models/nosuch/infer", "POST", body)
    assert status == 404 and headers["X-Maas-Error-Code"] == "UNKNOWN_MODEL"
    assert json.loads(content)["error"].startswith("UNKNOWN_MODEL: ")
    request = urllib.request.Request(f"{served}/v2/models/iris")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401


def test_a_client_that_leaves_takes_its_waiting_request_back(settings, client, fleet, iris, register):
    """No replica serves the model (allocation is off here), so the request waits; the client hangs up, and the
    request leaves the queue and the ledger: no work is left behind that nobody will read."""
    import socket

    from app.broker import keys
    from app.broker.layout import model_queue
    from app.broker.queues import depth_by_priority
    from harness.fleet import wait_for

    register("iris", iris["path"])
    _, url = fleet.gateway()
    body = json.dumps(
        {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": iris["x"][:1].tolist()}]}
    ).encode()
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = f"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    queue = model_queue("iris")
    wait_for(lambda: sum(depth_by_priority(client.redis, queue)) == 1, 60, "the request to wait in its queue")
    assert client.redis.zcard(keys.LEDGER_SINCE) == 1
    sock.close()
    wait_for(lambda: sum(depth_by_priority(client.redis, queue)) == 0, 60, "the request to be taken back")
    assert client.redis.zcard(keys.LEDGER_SINCE) == 0


@pytest.fixture
def scaling_env(env):
    return {**env, "MAAS_ALLOCATION": "true", "MAAS_ALLOCATION_PERIOD_S": "1"}


def test_a_request_for_a_model_with_no_replica_waits_for_scale_from_zero(scaling_env, iris, tmp_path, register):
    from app.settings import Settings
    from harness.fleet import Fleet

    register("iris", iris["path"])
    logdir = tmp_path / "scale"
    logdir.mkdir()
    scaling = Fleet(scaling_env, logdir)
    try:
        scaling.worker(0, "w0@test")  # runs beat's tasks too: the producer's scale-from-zero trigger lands here
        _, url = scaling.gateway()
        body = json.dumps(
            {"inputs": [{"name": "X", "shape": [3, 4], "datatype": "FP32", "data": iris["x"][:3].tolist()}]}
        ).encode()
        status, _, content = _http(f"{url}/v2/models/iris/infer", "POST", body)
        assert status == 200, content
        labels = next(o for o in json.loads(content)["outputs"] if o["name"] == "label")
        assert labels["data"] == iris["expected"][:3].tolist()
        assert Settings.from_env(scaling_env).allocation_enabled
    finally:
        scaling.stop()
