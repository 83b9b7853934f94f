import numpy as np
import pytest

from app import policies
from app.broker.demand import ewma_rate
from app.errors import InvalidInput
from app.jobs import chunk_priority, split
from app.scheduling import Scheduler
from app.settings import Settings
from app.signature import decode_tensor
from beat.aging import due, work_ahead


def entry(task_id, level, submitted_at, cls="interactive", est=0.01, backlog=0.0):
    return (task_id, submitted_at, {"c": cls, "e": est, "b": backlog, "l": level})


def test_aging_promotes_only_what_waited_long_enough():
    params = policies.PolicyParams.around(0.01)
    now = 1000.0
    level = policies.aging(policies.RequestFacts("interactive", 0.01), params)  # where it was submitted
    moves = due([entry("old", level, now - 10.0), entry("new", level, now - 0.001)], now, params)
    assert len(moves) == 1 and moves[0][0] == "old" and moves[0][1] < level


def test_aging_never_demotes_and_a_backlog_stretches_the_clock():
    params = policies.PolicyParams.around(0.01)
    assert due([entry("top", 0, 0.0)], 1e6, params) == []
    level = policies.aging(policies.RequestFacts("interactive", 0.01), params)
    # Waiting 1 s is long against a 0.01 s request, but not against the 100 s FIFO would have made it wait.
    assert due([entry("a", level, 999.0, backlog=100.0)], 1000.0, params) == []
    assert due([entry("a", level, 999.0)], 1000.0, params) != []


def test_the_pass_sets_each_new_requests_backlog_to_the_work_submitted_before_it():
    # Given three waiting requests in submission order, the last one already seen by an earlier pass
    entries = [entry("a", 5, 1.0, est=2.0), entry("b", 5, 2.0, est=4.0), entry("c", 5, 3.0, est=1.0, backlog=9.0)]
    entries[2][2]["w"] = 1
    # When a pass sees them with two replicas serving the model
    changed = work_ahead(entries, replicas=2)
    # Then the new ones get the work ahead of them over the replicas, and the one seen before keeps its figure
    assert changed == ["a", "b"]
    assert [f["b"] for _, _, f in entries] == [0.0, 1.0, 9.0]
    assert work_ahead(entries, replicas=2) == []  # a second pass changes nothing
    assert work_ahead([entry("x", 5, 1.0, est=2.0), entry("y", 5, 2.0)], replicas=0)[1] == "y"


def test_split_into_chunks():
    chunks = split({"x": np.arange(10).reshape(10, 1).astype(np.float32)}, 4)
    assert [c[0]["shape"] for c in chunks] == [[4, 1], [4, 1], [2, 1]]
    assert decode_tensor(chunks[2][0]).reshape(-1).tolist() == [8.0, 9.0]


@pytest.mark.parametrize(
    "inputs", [{}, {"a": np.zeros((3, 1)), "b": np.zeros((4, 1))}, {"a": np.zeros((0, 2))}, {"a": np.float32(1)}]
)
def test_split_refuses_inputs_without_a_common_row_count(inputs):
    with pytest.raises(InvalidInput):
        split(inputs, 2)


def test_less_remaining_work_means_a_higher_level_under_srtf(tmp_path):
    settings = Settings.from_env({"MAAS_HOME": str(tmp_path), "MAAS_TYPICAL_SERVICE_S": "0.01"})
    long_level = chunk_priority("srtf", "batch", 0.013, 40, settings)
    short_level = chunk_priority("srtf", "batch", 0.013, 3, settings)
    assert short_level < long_level
    assert chunk_priority("fifo", "batch", 0.013, 3, settings) == chunk_priority("fifo", "batch", 0.013, 40, settings)


@pytest.mark.parametrize(
    ("prev", "delta", "dt", "half", "expected"),
    [(0.0, 100, 10.0, 10.0, 5.0), (10.0, 0, 10.0, 10.0, 5.0), (4.0, 40, 0.0, 10.0, 4.0), (2.0, 20, 1e9, 10.0, 0.0)],
)
def test_ewma_rate(prev, delta, dt, half, expected):
    assert ewma_rate(prev, delta, dt, half) == pytest.approx(expected, abs=1e-6)


def test_invalidate_makes_the_next_decision_read_a_models_new_settings(tmp_path, monkeypatch):
    from app import registry
    from app.artifacts import LocalArtifactStore
    from app.db.migrate import ensure_current
    from app.db.session import session_scope
    from bench.models import add_one

    monkeypatch.setattr("app.scheduling.CACHE_S", 3600.0)  # no expiry on a slow machine: only invalidate clears
    # Given two models on the embedded database, their facts read (and so cached) by a scheduler
    settings = Settings.from_env({"MAAS_HOME": str(tmp_path / "home"), "MAAS_POLICY": "fifo"})
    ensure_current(settings.sqlalchemy_url)
    store = LocalArtifactStore(settings.artifact_dir, settings.max_artifact_bytes)
    with session_scope(settings.sqlalchemy_url) as session:
        for name in ("a", "b"):
            registry.register(session, store, name, add_one(tmp_path / f"{name}.onnx"))
    scheduler = Scheduler(settings, client=None)
    assert (scheduler.facts("a").policy, scheduler.facts("b").policy) == ("fifo", "fifo")

    # When both change policy, as `maas model set` does
    with session_scope(settings.sqlalchemy_url) as session:
        registry.configure(session, "a", policy="sjf")
        registry.configure(session, "b", policy="sjf")

    # Then the cache answers until invalidated: for one model, then for all
    assert scheduler.facts("a").policy == "fifo"
    scheduler.invalidate("a")
    assert (scheduler.facts("a").policy, scheduler.facts("b").policy) == ("sjf", "fifo")
    scheduler.invalidate()
    assert scheduler.facts("b").policy == "sjf"
