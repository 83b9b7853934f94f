"""gateway.metrics.SERIES is what a scrape holds: every family filled in from a hand-made snapshot, no servers."""

import re

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.broker.layout import PRIORITY_LEVELS
from gateway import metrics


def _snapshot() -> metrics._Snapshot:
    snap = metrics._Snapshot()
    snap.counts = {
        ("iris", "1"): {"success": 3, "fail:INVALID_INPUT": 1, "inference_count": 5, "exec_count": 2, "b:2": 3},
        ("lm", "1"): {"success": 1, "gen_tokens": 9, "ttft:b:3": 1, "ttft_s": 0.01, "itl:b:1": 8, "itl_s": 0.02},
    }
    snap.live = {("w0", "lm"): {"seqs": 2, "kv_bytes": 4096}}
    snap.depths = {"iris": [0] * len(PRIORITY_LEVELS)}
    snap.promotions = {"iris": 1}
    snap.fleet_counters = {"ledger_resent": 2}
    device = {"uuid": "GPU-1", "name": "cuda0", "worker": "w0", "kind": "gpu", "mem_bytes": 8, "used_bytes": 2}
    snap.db = {
        "devices": [{**device, "util": 0.5}],
        "replica_states": {("iris", "READY"): 1},
        "replica_memory": [{"model": "iris", "version": 1, "worker": "w0", "device": "cuda0", "bytes": 2}],
        "run_counts": {"ok": 1},
        "last_run": {"objective": 1.0, "gap": 0.0, "solve_s": 0.1, "moves": 0},
    }
    return snap


def _series(text: str) -> set[str]:
    """Sample names as Prometheus stores them (prometheus_client's parser would add ``_total`` to counters)."""
    list(text_string_to_metric_families(text))  # it parses at all
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0) for line in lines}  # type: ignore[union-attr]


def test_series_lists_exactly_what_a_scrape_holds():
    snap = _snapshot()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics._Collector(snap))
    metrics.observe_http("/v2/models/iris/infer", 0.01)
    text = metrics.triton_text(snap.counts, {"iris": 0}) + generate_latest(registry).decode()
    text += generate_latest().decode()
    ours = {name for name in _series(text) if name.startswith(("nv_", "maas_"))}
    assert ours == set(metrics.SERIES)
    assert len(metrics.SERIES) == len(set(metrics.SERIES))
