"""Bad input gets a clear error naming what was wrong, and disturbs nothing else."""

from __future__ import annotations

import subprocess
import sys
import uuid

import numpy as np
import pytest
from sqlalchemy import update

from app import errors, registry
from app.broker.layout import model_queue
from app.celery_app import transport_options
from app.db.schema import ModelVersion
from app.db.session import session_scope
from app.signature import decode_tensor
from bench.models import add_one, reshape_to_2x2
from harness.fleet import wait_for

pytestmark = pytest.mark.integration
X = np.zeros((1, 4), dtype=np.float32)


@pytest.fixture
def serving(client, fleet, register, tmp_path):
    """A worker serving the model ``add``."""
    register("add", add_one(tmp_path / "add.onnx"))
    fleet.worker(0, "w0@test")
    client.load("add").wait()
    return fleet.procs[0]


def still_serves(client) -> None:
    answer = client.infer("add", {"x": X}).wait(timeout_s=60)
    assert decode_tensor(answer["outputs"][0]).reshape(-1).tolist() == [1.0, 1.0, 1.0, 1.0]


def test_unknown_model_version_and_alias_are_named(settings, client, serving):
    with pytest.raises(errors.UnknownModel, match="'nope' is not registered \\(registered: add\\)"):
        client.infer("nope", {"x": X})
    with pytest.raises(errors.UnknownVersion, match="no version 7"):
        client.infer("add:7", {"x": X})
    with pytest.raises(errors.UnknownAlias, match="no alias 'staging'"):
        client.infer("add@staging", {"x": X})
    with session_scope(settings.sqlalchemy_url) as session, pytest.raises(errors.UnknownVersion):
        registry.set_alias(session, "add", "prod", 9)  # an alias to nothing is refused
    still_serves(client)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "y", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}, "unexpected input tensor 'y'"),
        ({"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]}, "shape \\[1, 3\\]"),
        ({"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [0, 0, 0, 0]}, "datatype 'INT64'"),
        ({"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0]}, "needs 4 values, data has 2"),
    ],
)
def test_wrong_tensors_are_refused_by_the_client_and_again_by_the_worker(client, serving, tensor, message):
    with pytest.raises(errors.InvalidInput, match=message):
        client.infer("add", [tensor])
    # The same request sent around the client's check is refused by the worker, before execution.
    handle = client.app.send_task("maas.infer", args=["add", None, [tensor]], queue=model_queue("add"), priority=5)
    with pytest.raises(errors.InvalidInput, match=message):
        handle.get(timeout=60)
    wait_for(lambda: '"event": "request_failed"' in serving.log(), 60, "the failure to be logged")
    line = next(ln for ln in serving.log().splitlines() if '"request_failed"' in ln)
    assert '"model": "add"' in line and '"worker": "w0@test"' in line and '"code": "INVALID_INPUT"' in line
    still_serves(client)


def test_checksum_mismatch_fails_the_replica_and_the_worker_keeps_serving(
    settings, client, serving, register, tmp_path
):
    register("other", add_one(tmp_path / "other.onnx", width=3))
    with session_scope(settings.sqlalchemy_url) as session:
        uri = registry.resolve(session, "other").artifact_uri
    from app.artifacts import path_of

    path_of(uri).write_bytes(path_of(uri).read_bytes() + b"tampered")
    with pytest.raises(errors.ChecksumMismatch, match="registered"):
        client.load("other").wait()
    (failed,) = [r for r in client.replicas(include_terminal=True) if r["model"] == "other"]
    assert failed["state"] == "FAILED" and failed["reason"].startswith("CHECKSUM_MISMATCH")
    still_serves(client)


def test_corrupt_onnx_is_refused_at_registration_and_at_load(settings, client, serving, register, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x01this is not a protobuf model")
    with pytest.raises(errors.CorruptArtifact, match="junk.onnx is not a valid ONNX model"):
        register("junk", junk)
    # A version whose stored file became unparseable (with a matching checksum) fails at load, by name.
    register("junk", add_one(tmp_path / "ok.onnx", width=2))
    from app.artifacts import path_of, sha256_of

    with session_scope(settings.sqlalchemy_url) as session:
        version = registry.resolve(session, "junk")
        path_of(version.artifact_uri).write_bytes(junk.read_bytes())
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.id == version.id)
            .values(sha256=sha256_of(path_of(version.artifact_uri)))
        )
    with pytest.raises(errors.CorruptArtifact, match="ONNX Runtime cannot load"):
        client.load("junk").wait()
    still_serves(client)


def test_a_model_that_raises_fails_that_request_only(client, serving, register, tmp_path):
    register("reshape", reshape_to_2x2(tmp_path / "reshape.onnx"))
    client.load("reshape").wait()
    with pytest.raises(errors.ModelExecutionError, match="model raised"):
        client.infer("reshape", {"x": np.zeros(3, dtype=np.float32)}).wait()
    ok = client.infer("reshape", {"x": np.arange(4, dtype=np.float32)}).wait()
    assert ok["outputs"][0]["shape"] == [2, 2]
    still_serves(client)


def test_pickle_messages_are_refused_and_never_unpickled(settings, client, serving, tmp_path):
    from kombu import Connection, Exchange

    marker = tmp_path / "unpickled"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle

    body = pickle.dumps(Exploit())
    with Connection(settings.redis_url, transport_options=transport_options(settings)) as conn:
        conn.Producer().publish(
            body,
            exchange=Exchange(model_queue("add"), "direct"),
            routing_key=model_queue("add"),
            content_type="application/x-python-serialize",
            content_encoding="binary",
            serializer=None,
            headers={"task": "maas.infer", "id": str(uuid.uuid4()), "lang": "py"},
        )
    wait_for(lambda: "untrusted content" in serving.log(), 90, "the worker to refuse the pickle message")
    assert not marker.exists()
    still_serves(client)


def test_cli_names_the_error_and_exits_nonzero(env):
    import os

    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "infer", "nope", "--input", "x=[[1,2,3,4]]"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "UNKNOWN_MODEL: model 'nope' is not registered" in result.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "app.cli", "status"],
        env={**os.environ, **env, "MAAS_HEARTBEAT_S": "soon"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "MAAS_HEARTBEAT_S='soon' is invalid" in bad.stderr
