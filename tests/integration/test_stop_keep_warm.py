"""`maas stop` of a model the allocator must keep (keep-warm, min_replicas) is refused with the reason, rather than
stopped and silently loaded again at the next allocation run."""

from __future__ import annotations

import pytest

from app import cli
from app.errors import StopRefused
from bench.models import add_one

pytestmark = pytest.mark.integration


def test_stopping_a_keep_warm_model_is_refused_until_keep_warm_is_off(
    env, client, fleet, register, configure, tmp_path, monkeypatch, capsys
):
    register("add", add_one(tmp_path / "add.onnx"))
    fleet.worker(0, "w0@test")
    client.load("add").wait(timeout_s=120)
    configure("add", keep_warm=True)

    with pytest.raises(StopRefused, match=r"keep-warm is on.*maas model set add --keep-warm off"):
        client.stop("add")
    assert [r["state"] for r in client.replicas()] == ["READY"]  # nothing was sent

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["stop", "add"]) == 1
    assert capsys.readouterr().err.startswith("error: STOP_REFUSED: add: keep-warm is on")

    configure("add", keep_warm=False, min_replicas=1)
    with pytest.raises(StopRefused, match="min_replicas is 1"):
        client.stop("add")

    configure("add", min_replicas=0)
    assert cli.main(["stop", "add"]) == 0
    assert client.replicas() == []

    # Every lifecycle event records who asked: the load came from this client, the stop from the command line.
    by = {e["to"]: e["by"] for e in client.history("add")}
    assert by["PENDING"] == by["READY"] == client.requester and client.requester.endswith("via client")
    assert by["DRAINING"] == by["STOPPED"] and by["STOPPED"].startswith("user ") and by["STOPPED"].endswith("via cli")
    capsys.readouterr()
    assert cli.main(["history", "add"]) == 0
    table = capsys.readouterr().out
    assert " BY " in table.splitlines()[0] and "via cli" in table
