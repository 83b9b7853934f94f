"""A fleet across machines: workers on two hosts (network namespaces), beat and a controller on a third, Redis and
PostgreSQL on a fourth. The allocator spreads a model's replicas over both hosts; `maas status` and
`maas allocation show` group the fleet by host."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from app.client import outputs_as_arrays
from bench.models import add_one
from harness.fleet import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.multihost]


@pytest.fixture
def env(env):
    return {**env, "MAAS_ALLOCATION": "true", "MAAS_ALLOCATION_PERIOD_S": "2", "MAAS_WORKER_SYSTEM_TASKS": "false"}


def ready_hosts(client) -> dict[int, str]:
    """replica id -> host of every READY replica."""
    host = {d["worker"]: d["host"] for d in client.devices()}
    return {r["replica"]: host[r["worker"]] for r in client.replicas() if r["state"] == "READY"}


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_allocator_spreads_a_model_over_two_hosts_and_both_serve(env, client, hosts, register, configure, tmp_path):
    # Given host a with two devices and host b with one: without the spread, best fit puts both replicas on a
    register("add", add_one(tmp_path / "add.onnx"))
    configure("add", min_replicas=2)
    a, b, ctl = hosts.host("a"), hosts.host("b"), hosts.host("ctl")
    procs = [hosts.worker(a, 0), hosts.worker(a, 1), hosts.worker(b, 0), hosts.controller(ctl)]
    hosts.wait_ready(procs)
    devices = {d["worker"]: d["host"] for d in client.devices()}
    assert devices == {"gpu0@a": "a", "gpu1@a": "a", "gpu0@b": "b"}

    # When beat re-solves the placement
    hosts.beat(ctl)
    placed = wait_for(lambda: len(ready_hosts(client)) >= 2 and ready_hosts(client), 120, "two READY replicas")

    # Then the model is on both hosts, and both serve
    assert set(placed.values()) == {"a", "b"}
    x = np.zeros((1, 4), dtype=np.float32)
    handles = [client.infer("add", {"x": x}) for _ in range(40)]
    answers = [h.wait(timeout_s=120) for h in handles]
    assert all(np.allclose(outputs_as_arrays(ans)["y"], 1.0) for ans in answers)
    assert {devices[ans["parameters"]["worker"]] for ans in answers} == {"a", "b"}

    # And the CLI groups the fleet by host
    status = json.loads(cli(env, "status", "--json"))
    by_host = {h["host"]: h for h in status["hosts"]}
    assert set(by_host) == {"a", "b"}  # the controller holds no device
    assert [(by_host[h]["workers"], by_host[h]["alive"]) for h in ("a", "b")] == [(2, 2), (1, 1)]
    assert sum(by_host[h]["replicas"] for h in ("a", "b")) >= 2 and all(by_host[h]["models"] for h in ("a", "b"))
    shown = cli(env, "allocation", "show")
    assert shown.index("host a:") < shown.index("gpu0@a") < shown.index("host b:") < shown.index("gpu0@b")
