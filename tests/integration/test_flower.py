"""Flower on the fleet's broker: authentication on by default, and it sees workers and model queues."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from bench.models import add_one
from harness.fleet import wait_for
from harness.servers import free_port

pytestmark = pytest.mark.integration


def get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


def test_flower_refuses_to_start_without_credentials_unless_local(env):
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "flower"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "MAAS_FLOWER_BASIC_AUTH is not set" in result.stderr


def test_flower_requires_basic_auth_and_shows_workers_and_model_queues(client, fleet, register, tmp_path):
    register("add", add_one(tmp_path / "add.onnx"))
    fleet.worker(0, "w0@test")
    client.load("add").wait()
    port = free_port()
    fleet.env["MAAS_FLOWER_BASIC_AUTH"] = "admin:s3cret"
    fleet._spawn("flower", ["flower", "--port", str(port), "--address", "127.0.0.1"])
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(base + "/healthcheck", auth="admin:s3cret")[0] == 200, 120, "flower to answer")

    # Every page and API, the health check and Prometheus metrics included, needs the password.
    for path in ("/", "/metrics", "/healthcheck", "/workers", "/tasks", "/broker", "/api/workers", "/api/tasks"):
        assert get(base + path)[0] == 401, path
        assert get(base + path, auth="admin:wrong")[0] == 401, path
    assert get(base + "/", auth="admin:s3cret")[0] == 200
    assert get(base + "/metrics", auth="admin:s3cret")[0] == 200

    def workers():
        status, body = get(base + "/api/workers?refresh=1", auth="admin:s3cret")
        return status == 200 and "w0@test" in json.loads(body or b"{}")

    wait_for(workers, 90, "flower to see the worker", interval_s=1)
    status, body = get(base + "/api/queues/length", auth="admin:s3cret")
    assert status == 200
    queues = {q["name"]: q["messages"] for q in json.loads(body)["active_queues"]}
    assert "m.add" in queues and "ctl.w0@test" in queues
