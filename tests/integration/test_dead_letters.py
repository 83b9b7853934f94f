"""A request no worker on its queue can serve is requeued a bounded number of times, then answered and kept as a
dead letter, instead of going round between workers for ever."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from celery.result import AsyncResult

from app import errors
from app.broker import dlq
from app.broker.layout import model_queue
from app.client import outputs_as_arrays

pytestmark = pytest.mark.integration


def test_a_message_for_a_model_nobody_here_holds_is_dead_lettered(env, settings, client, fleet, iris, register):
    register("iris", iris["path"])
    worker = fleet.worker(0, "w0@test")
    client.load("iris").wait()
    # As an operator's mistake or a foreign producer would: a request for "ghost" in iris's queue.
    sent = client.app.send_task(
        "maas.infer",
        args=["ghost", None, [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]],
        queue=model_queue("iris"),
    )
    with pytest.raises(errors.NotLoaded, match="delivered 10 times"):
        AsyncResult(sent.id, app=client.app).get(timeout=120, disable_sync_subtasks=False)
    (letter,) = dlq.entries(client.redis)
    assert (letter["task_id"], letter["queue"]) == (sent.id, "m.iris")
    assert "'ghost'" in letter["reason"]
    deliveries = worker.log().count(f"maas.infer[{sent.id}] received")
    assert deliveries == dlq.MAX_DELIVERIES + 1  # bounded, not a storm

    # The worker still serves its own model, and the CLI shows then drops the letter.
    answer = client.infer("iris", {"X": iris["x"][:3]}).wait()
    assert outputs_as_arrays(answer)["label"].tolist() == iris["expected"][:3].tolist()
    cli = [sys.executable, "-m", "app.cli", "dlq"]
    shown = subprocess.run([*cli, "list", "--json"], env={**env}, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert [e["task_id"] for e in json.loads(shown.stdout)] == [sent.id]
    purged = subprocess.run([*cli, "purge"], env={**env}, capture_output=True, text=True, timeout=120)
    assert "dropped 1 dead letters" in purged.stdout
    assert dlq.entries(client.redis) == []
