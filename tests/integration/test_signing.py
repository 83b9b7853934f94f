"""Signed control orders and results: someone who can write Redis but lacks the fleet key cannot unload a model or
forge an answer."""

from __future__ import annotations

import json
import secrets
import uuid

import numpy as np
import pytest
from celery import Celery

from app import errors
from app.broker.layout import control_queue, result_key
from app.signature import decode_tensor
from app.signing import sign_result
from bench.models import add_one
from harness.fleet import wait_for

pytestmark = pytest.mark.integration
X = np.zeros((1, 4), dtype=np.float32)


def still_serves(client) -> None:
    answer = client.infer("add", {"x": X}).wait(timeout_s=60)
    assert decode_tensor(answer["outputs"][0]).reshape(-1).tolist() == [1.0, 1.0, 1.0, 1.0]


def test_a_forged_drain_is_refused_and_the_replica_keeps_serving(settings, client, fleet, register, tmp_path):
    register("add", add_one(tmp_path / "add.onnx"))
    worker = fleet.worker(0, "w0@test")
    summary = client.load("add").wait()
    replica_id = summary["replica"]

    # An attacker with Redis access and a bare Celery app: valid JSON messages, no fleet key.
    bare = Celery("attacker", broker=settings.redis_url, backend=settings.redis_url, set_as_current=False)
    bare.conf.update(task_serializer="json", accept_content=["json"], broker_transport_options={"sep": ":"})
    forged_id = str(uuid.uuid4())
    bare.send_task(
        "maas.drain",
        args=[replica_id, str(uuid.uuid4())],
        queue=control_queue("w0@test"),
        priority=0,
        task_id=forged_id,
        headers={"maas_sig": "0" * 64},  # a made-up signature is no better than none
    )
    bare.send_task("maas.unload", args=[replica_id], queue=control_queue("w0@test"), priority=0)
    wait_for(lambda: worker.log().count('"event": "forged_message"') >= 2, 90, "the worker to refuse both")
    with pytest.raises(errors.ForgedMessage, match="does not match the fleet key"):
        client.app.AsyncResult(forged_id).get(timeout=60, disable_sync_subtasks=False)

    (replica,) = [r for r in client.replicas() if r["model"] == "add"]
    assert replica["state"] == "READY"
    still_serves(client)
    # The fleet's own orders, signed, still work.
    for handle in client.stop("add"):
        assert handle.wait()["state"] == "STOPPED"


def test_a_forged_result_is_refused(settings, client, register, tmp_path):
    register("add", add_one(tmp_path / "add.onnx"))
    meta = {
        "status": "SUCCESS",
        "result": {"model_name": "add", "model_version": 1, "outputs": [], "parameters": {}},
        "traceback": None,
        "children": [],
        "date_done": "2026-01-01T00:00:00",
    }
    # Nobody serves "add": the requests wait, and an attacker writes answers for them.
    unsigned = client.infer("add", {"x": X})
    client.redis.set(result_key(unsigned.id), json.dumps({**meta, "task_id": unsigned.id}))
    with pytest.raises(errors.ForgedMessage, match="no signature"):
        unsigned.wait(timeout_s=30)

    other_key = client.infer("add", {"x": X})
    forged = sign_result(secrets.token_hex(32), json.dumps({**meta, "task_id": other_key.id}))
    client.redis.set(result_key(other_key.id), forged)
    client.redis.publish(result_key(other_key.id), forged)
    with pytest.raises(errors.ForgedMessage, match="does not match"):
        other_key.wait(timeout_s=30)

    # A genuine result, signed by a fleet process, is read as usual.
    genuine = client.infer("add", {"x": X})
    client.app.backend.mark_as_done(genuine.id, {"ok": True})
    assert genuine.wait(timeout_s=30) == {"ok": True}
    assert b'"maas_sig":' in client.redis.get(result_key(genuine.id))

    # A genuine result copied under another request's id is refused: it names the task it belongs to.
    copied = client.infer("add", {"x": X})
    client.redis.set(result_key(copied.id), client.redis.get(result_key(genuine.id)))
    from app.client import Client

    with pytest.raises(errors.ForgedMessage, match="is task"):
        Client(settings).app.AsyncResult(copied.id).get(timeout=30, disable_sync_subtasks=False)
