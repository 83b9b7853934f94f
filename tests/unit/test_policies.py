"""Table tests of the priority maths in app.policies."""

from __future__ import annotations

import dataclasses
import math

import pytest

from app.policies import (
    AGED_LEVEL,
    DEFAULT_PARAMS,
    LOWEST_LEVEL,
    Policy,
    PolicyParams,
    RequestFacts,
    aging,
    aging_boost,
    next_promotion_wait_s,
    parse_policy,
    priority_for,
    size_band,
)

# Defaults: bands from 0.01 s to 9 s, 7 bands of ~2.64x; aging after 1.5 s, one level per 0.6 s.


@pytest.mark.parametrize(
    ("service_s", "band"),
    [
        (0.0, 0),
        (-1.0, 0),
        (0.01, 0),
        (0.02, 0),
        (0.03, 1),
        (0.3, 3),
        (3.0, 5),
        (8.9, 6),
        (9.0, 6),
        (1e12, 6),
        (math.inf, 6),
        (math.nan, 6),  # an unknown estimate must not jump the queue
    ],
)
def test_size_band(service_s: float, band: int) -> None:
    assert size_band(service_s) == band


def test_size_band_is_monotonic() -> None:
    services_s = [0.001 * 1.1**i for i in range(120)]
    bands = [size_band(s) for s in services_s]
    assert bands == sorted(bands)
    assert set(bands) == set(range(DEFAULT_PARAMS.size_levels))


@pytest.mark.parametrize(
    ("policy", "request_class", "service_s", "level"),
    [
        ("fifo", "interactive", 0.001, 4),
        ("fifo", "batch", 100.0, 4),
        ("sjf", "interactive", 0.001, 1),
        ("sjf", "interactive", 0.3, 4),
        ("sjf", "interactive", 100.0, 7),
        ("sjf", "batch", 0.001, 3),
        ("sjf", "batch", 100.0, 9),
        ("srtf", "interactive", 0.001, 1),
        ("srtf", "batch", 100.0, 9),
        ("aging", "interactive", 0.001, 1),
        ("aging", "batch", 100.0, 9),
        (Policy.SJF, "interactive", 3.0, 6),
    ],
)
def test_level_at_submission(policy: str, request_class: str, service_s: float, level: int) -> None:
    assert priority_for(policy, RequestFacts(request_class, service_s)) == level


def test_srtf_uses_remaining_work() -> None:
    # Given a long job nearly done, when its last chunk is enqueued, then it is sized by what is left.
    facts = RequestFacts("batch", estimated_service_s=100.0, remaining_s=0.001)
    assert priority_for("srtf", facts) == 3
    assert priority_for("sjf", facts) == 9


@pytest.mark.parametrize(
    ("waited_s", "boost"),
    [(0.0, 0), (1.49, 0), (1.5, 1), (2.09, 1), (2.11, 2), (1.5 + 0.6 * 7 + 0.01, 8), (15.0, 23)],
)
def test_aging_boost(waited_s: float, boost: int) -> None:
    assert aging_boost(waited_s) == boost


@pytest.mark.parametrize(
    ("waited_s", "backlog_s", "level"),
    [
        (0.0, 0.0, 9),
        (1.5, 0.0, 8),
        (1.5 + 0.6 * 7, 0.0, 1),
        (1.5 + 0.6 * 8 + 0.01, 0.0, 0),
        (1e9, 0.0, 0),
        # A 100 s backlog stretches the clock: aging starts at 2 x 100 s, steps of 0.6 * 200 / 1.5 = 80 s.
        (199.0, 100.0, 9),
        (200.5, 100.0, 8),
        (280.5, 100.0, 7),
        (1.0, 0.5, 9),  # a backlog below the threshold never shortens it
    ],
)
def test_aging_level(waited_s: float, backlog_s: float, level: int) -> None:
    facts = RequestFacts("batch", 100.0, waited_s=waited_s, backlog_s=backlog_s)
    assert aging(facts) == level


def test_fresh_requests_never_get_the_aged_level() -> None:
    for policy in Policy:
        for request_class in ("interactive", "batch"):
            for service_s in (0.0, 1e-6, 0.5, 1e6):
                level = priority_for(policy, RequestFacts(request_class, service_s))
                assert AGED_LEVEL < level <= LOWEST_LEVEL


def test_every_request_reaches_level_zero_within_the_bound() -> None:
    params = DEFAULT_PARAMS
    for backlog_s in (0.0, 10.0, 1000.0):
        stretch = max(1.0, params.aging_backlog_factor * backlog_s / params.aging_threshold_s)
        bound_s = stretch * params.max_climb_s() + 1e-9
        facts = RequestFacts("batch", 1e6, waited_s=bound_s, backlog_s=backlog_s)
        assert aging(facts) == AGED_LEVEL
        assert aging(dataclasses.replace(facts, waited_s=bound_s * 0.99)) > AGED_LEVEL


@pytest.mark.parametrize(
    ("waited_s", "backlog_s", "next_s"),
    [(0.0, 0.0, 1.5), (1.5, 0.0, 2.1), (2.0, 0.0, 2.1), (0.0, 100.0, 200.0), (210.0, 100.0, 280.0)],
)
def test_next_promotion_wait(waited_s: float, backlog_s: float, next_s: float) -> None:
    facts = RequestFacts("batch", 100.0, waited_s=waited_s, backlog_s=backlog_s)
    assert next_promotion_wait_s(facts) == pytest.approx(next_s)


def test_next_promotion_always_promotes() -> None:
    # Given any wait, the promotion time handed to the beat must lower the level (else the beat would spin).
    for backlog_s in (0.0, 0.3, 7.0, 123.4):
        for i in range(200):
            facts = RequestFacts("interactive", 5.0, waited_s=i * 0.173, backlog_s=backlog_s)
            due_s = next_promotion_wait_s(facts)
            if aging(facts) == AGED_LEVEL:
                assert due_s == math.inf
                continue
            assert due_s > facts.waited_s
            assert aging(dataclasses.replace(facts, waited_s=due_s)) < aging(facts)


@pytest.mark.parametrize("name", ["lifo", "", "SJF ", "edf"])
def test_unknown_policy_is_named(name: str) -> None:
    with pytest.raises(ValueError, match="unknown scheduling policy") as excinfo:
        priority_for(name, RequestFacts("interactive", 1.0))
    assert repr(name) in str(excinfo.value)


def test_parse_policy() -> None:
    assert parse_policy("aging") is Policy.AGING
    assert parse_policy(Policy.FIFO) is Policy.FIFO


def test_unknown_request_class_is_named() -> None:
    with pytest.raises(ValueError, match="unknown request class 'realtime'"):
        priority_for("sjf", RequestFacts("realtime", 1.0))


@pytest.mark.parametrize(
    "overrides",
    [
        {"min_service_s": 0.0},
        {"min_service_s": 2.0, "max_service_s": 1.0},
        {"max_service_s": math.inf},
        {"size_levels": 0},
        {"size_levels": 8, "batch_offset_levels": 2},
        {"batch_offset_levels": -1},
        {"fifo_level": 10},
        {"aging_threshold_s": 0.0},
        {"aging_step_s": -1.0},
        {"aging_backlog_factor": -0.5},
    ],
)
def test_invalid_params_fail_loudly(overrides: dict) -> None:
    with pytest.raises(ValueError):
        PolicyParams(**overrides)


def test_params_around_a_typical_service_time() -> None:
    params = PolicyParams.around(0.1)
    assert params.min_service_s == pytest.approx(0.1 / 30)
    assert params.max_service_s == pytest.approx(3.0)
    assert params.aging_threshold_s == pytest.approx(0.5)
    assert params.aging_step_s == pytest.approx(0.2)
    assert PolicyParams.around(0.1, size_levels=5).size_levels == 5
    # The class defaults are the same shape, centred on 0.3 s.
    for field in dataclasses.fields(PolicyParams):
        assert getattr(PolicyParams.around(0.3), field.name) == pytest.approx(getattr(DEFAULT_PARAMS, field.name))
    with pytest.raises(ValueError, match="typical_service_s"):
        PolicyParams.around(0.0)
