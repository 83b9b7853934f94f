"""A generative replica's footprint counts the KV cache it may grow to, and the allocator sees it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from harness import tiny_lm

pytestmark = pytest.mark.integration
pytest.importorskip("transformers")

KV_BUDGET_BYTES = 48 * 1024**2


def test_the_allocator_and_status_see_the_kv_cache(tmp_path, env, fleet, register, client, settings):
    from app.db.session import session_scope
    from app.settings import Settings
    from beat import fleet_state, greedy
    from beat.snapshot import Device, Snapshot
    from workers.lifecycle import generative_reserve_bytes

    with tiny_lm.loaded(tmp_path, context=1024) as (artifact, runtime):
        register("lm", artifact, runtime="causal_lm", service_ms=5.0)
        worker_env = {"MAAS_GEN_MAX_SEQUENCES": "4", "MAAS_GEN_KV_CACHE_BYTES": str(KV_BUDGET_BYTES)}
        fleet.worker(0, "w0@test", **worker_env)
        info = client.load("lm").wait(timeout_s=120)
        expected_kv = generative_reserve_bytes(runtime, Settings.from_env({**env, **worker_env}))
    assert 0 < expected_kv <= KV_BUDGET_BYTES
    assert info["kv_cache_bytes"] == expected_kv
    assert info["footprint_bytes"] > expected_kv  # weights too

    with session_scope(settings.sqlalchemy_url) as session:
        state = fleet_state.read(session, client.redis, settings)
    assert state.mem_bytes["lm"] == info["footprint_bytes"]
    demand = next(m for m in state.snapshot.models if m.name == "lm")
    assert demand.mem_bytes == info["footprint_bytes"]
    # A device with room for the weights but not for the cache gets no replica from the greedy allocator.
    weights = info["footprint_bytes"] - expected_kv
    wanted = dataclasses.replace(demand, demand_per_s=10.0, current=())
    for room, placed in ((weights + expected_kv // 2, False), (info["footprint_bytes"] + 1, True)):
        placement = greedy.demand_greedy_placement(Snapshot((Device("d0", room),), (wanted,)))
        assert bool(placement.get("lm")) is placed, (room, placement)

    # maas status shows the replica's sequences in flight and tokens per second.
    generation = client.generate("lm", "the quick brown", max_tokens=600, timeout_s=60)
    next(iter(generation))
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "status", "--json"],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = json.loads(out.stdout)["generation"]
    assert [(r["model"], r["worker"], r["kv_cache_bytes"]) for r in rows] == [("lm", "w0@test", expected_kv)]
    assert {"sequences", "tokens_per_s", "kv_bytes"} <= set(rows[0])
    generation.result()
