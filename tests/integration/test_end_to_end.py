"""The whole path with real Redis, PostgreSQL and worker processes: register, load, infer, stop, history."""

from __future__ import annotations

import numpy as np
import pytest

from app import registry
from app.client import outputs_as_arrays
from app.db.session import session_scope

pytestmark = pytest.mark.integration


def test_model_registered_loaded_served_and_stopped_with_every_transition_recorded(client, fleet, iris, register):
    register("iris", iris["path"])
    fleet.worker(0, "w0@test")

    info = client.load("iris").wait()
    assert (info["state"], info["worker"], info["version"]) == ("READY", "w0@test", 1)
    assert info["footprint_bytes"] is not None

    answer = client.infer("iris", {"X": iris["x"]}, priority=3).wait()
    labels = outputs_as_arrays(answer)["label"]
    np.testing.assert_array_equal(labels, iris["expected"])
    assert answer["model_name"] == "iris" and answer["model_version"] == 1
    assert answer["parameters"]["worker"] == "w0@test"

    (stop,) = client.stop("iris")
    assert stop.wait()["state"] == "STOPPED"
    states = [(e["from"], e["to"]) for e in client.history("iris")]
    assert states == [
        (None, "PENDING"),
        ("PENDING", "LOADING"),
        ("LOADING", "READY"),
        ("READY", "DRAINING"),
        ("DRAINING", "UNLOADING"),
        ("UNLOADING", "STOPPED"),
    ]
    assert client.replicas() == []  # nothing live any more
    log = fleet.procs[0].log()
    assert '"event": "replica_transition"' in log and '"to_state": "STOPPED"' in log


def test_load_and_stop_are_idempotent(client, fleet, iris, register, stop_model):
    register("iris", iris["path"])
    fleet.worker(0, "w0@test")
    first = client.load("iris").wait()
    second = client.load("iris").wait()
    assert first["replica"] == second["replica"]
    # Loading again on the same worker by name reuses the live replica too.
    third = client.load("iris", worker="w0@test").wait()
    assert third["replica"] == first["replica"]
    assert len(client.replicas()) == 1

    stop_model("iris")
    assert client.stop("iris") == []  # nothing left to stop
    transitions = [e["to"] for e in client.history("iris")]
    assert transitions.count("READY") == 1 and transitions.count("STOPPED") == 1


def test_alias_selects_the_version_and_explicit_versions_are_served_exactly(
    settings, client, fleet, register, tmp_path
):
    from bench.models import add_one

    register("m", add_one(tmp_path / "a.onnx", width=4))
    register("m", add_one(tmp_path / "b.onnx", width=4), description="v2")
    with session_scope(settings.sqlalchemy_url) as session:
        registry.set_alias(session, "m", "prod", 1)
    fleet.worker(0, "w0@test")
    assert client.load("m").wait()["version"] == 1  # bare name -> prod alias -> version 1
    x = np.ones((1, 4), dtype=np.float32)
    assert client.infer("m@prod", {"x": x}).wait()["model_version"] == 1
    from app.errors import NotLoaded

    with pytest.raises(NotLoaded, match="serves versions \\[1\\]"):
        client.infer("m:2", {"x": x}).wait()
