"""Chaos: SIGKILL a worker (mid-request, mid-batch, mid-load), SIGKILL Redis, stop PostgreSQL for 60 s, kill beat and
the controller, each under steady traffic on real processes (harness/chaos.py). Every accepted request is answered
exactly once or ends in a typed error; nothing hangs; the time to recover is printed (``-s`` shows it) and bounded.

The visibility timeout stays at its production default: recovery never waits for it. Select these with
``-m chaos``; they take about four minutes, most of it the 60 s database outage.
"""

from __future__ import annotations

import json

import pytest

from harness import chaos

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def _run(fault: str, tmp_path) -> chaos.Outcome:
    with chaos.rig(tmp_path) as r:
        assert r.settings.visibility_timeout_s >= 1800  # the production default
        try:
            outcome = chaos.RUNNERS[fault](r)
        except BaseException:
            print(r.logs())
            raise
        print(json.dumps(outcome.line()))
        if outcome.untyped or outcome.lost or outcome.answered_twice:
            print(r.logs())
    return outcome


def _every_request_ends_once(outcome: chaos.Outcome) -> None:
    assert outcome.untyped_errors == 0, outcome.untyped  # no raw driver exception reached a caller
    assert outcome.answered_twice == 0
    # Each request ended exactly one way: answered, or a typed error (at submission or at its wait).
    assert outcome.answered + outcome.typed_errors == outcome.sent, outcome.line()


@pytest.mark.parametrize("fault", ["worker_mid_request", "worker_mid_batch"])
def test_a_worker_killed_mid_request_or_mid_batch_loses_nothing(fault, tmp_path):
    outcome = _run(fault, tmp_path)
    _every_request_ends_once(outcome)
    assert outcome.lost == 0 and outcome.answered == outcome.sent
    # The other replica answers what the dead one held once the reaper saw it silent (3 s here), not after the
    # visibility timeout (30 minutes).
    assert outcome.recovery_s < 30, outcome.line()


def test_a_worker_killed_mid_load_leaves_no_replica_loading_and_serving_goes_on(tmp_path):
    outcome = _run("worker_mid_load", tmp_path)
    _every_request_ends_once(outcome)
    assert outcome.lost == 0 and outcome.answered == outcome.sent
    assert outcome.extra["big_replicas"] == ["FAILED", "READY"]  # the interrupted load failed; the restart reloaded


def test_redis_killed_and_restarted_loses_at_most_its_last_second(tmp_path):
    outcome = _run("redis_kill", tmp_path)
    _every_request_ends_once(outcome)
    # appendfsync everysec: what was admitted in the last second before the SIGKILL may not be on disk. Such a
    # request ends in TIMEOUT (typed) at its caller's timeout; nothing else may be lost.
    assert outcome.lost <= outcome.extra["accepted_in_last_1_5s_before_kill"], outcome.line()
    assert outcome.codes.get("TIMEOUT", 0) >= outcome.lost
    assert outcome.recovery_s < 60, outcome.line()


def test_a_60s_database_outage_does_not_stop_serving(tmp_path):
    outcome = _run("postgres_stop", tmp_path)
    _every_request_ends_once(outcome)
    # Submissions go on from cached references, workers serve what they hold and are not reaped meanwhile.
    assert outcome.answered == outcome.sent, outcome.line()
    assert set(outcome.extra["replicas_after"].values()) == {"READY"}, outcome.line()
    assert outcome.extra["db_back_s"] < 30
    # A load caught mid-way wrote its READY once the database was back (retried, not dropped).
    assert outcome.extra["load_across_outage"] == "READY"
    # A model no cache had seen is refused typed, after the bounded retry (MAAS_RETRY_MAX_S, 10 s), not a hang.
    assert outcome.extra["unseen_model"] == "DATABASE_UNAVAILABLE"
    assert outcome.extra["unseen_answered_in_s"] < 20


def test_beat_and_the_controller_killed_and_restarted(tmp_path):
    outcome = _run("beat_controller_kill", tmp_path)
    _every_request_ends_once(outcome)
    assert outcome.answered == outcome.sent
    assert outcome.extra["reported_dead_after_s"] < 15  # maas status says "dead for N s" soon after
