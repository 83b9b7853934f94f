"""Tests of the online service-time estimator in app.service_time."""

from __future__ import annotations

import json
import math

import pytest

from app.service_time import EstimatorKey, ServiceTimeEstimator

KEY = ("resnet50@3", "gpu")


def test_cold_key_uses_the_default() -> None:
    estimator = ServiceTimeEstimator(default_service_s=0.25)
    assert estimator.estimate(KEY, 10) == 0.25
    assert estimator.observations(KEY) == 0.0


@pytest.mark.parametrize(("size", "expected_s"), [(0, 0.02), (100, 0.07), (1000, 0.52)])
def test_cold_key_uses_the_declared_figure(size: float, expected_s: float) -> None:
    estimator = ServiceTimeEstimator()
    estimator.declare(KEY, 0.02, per_unit_s=0.0005)
    assert estimator.estimate(KEY, size) == pytest.approx(expected_s)


@pytest.mark.parametrize(("size", "expected_s"), [(1, 0.011), (500, 0.51), (2000, 2.01)])
def test_learns_a_linear_cost(size: float, expected_s: float) -> None:
    # Given a model costing 10 ms plus 1 ms per row, declared far off, when it has run a few hundred requests,
    # then the estimate follows the measurements, not the declaration.
    estimator = ServiceTimeEstimator()
    estimator.declare(KEY, 5.0)
    for i in range(400):
        rows = (i * 37) % 1000 + 1
        estimator.observe(KEY, rows, 0.01 + 0.001 * rows)
    # The declaration still counts as prior_weight (2) of the 402 observations.
    assert estimator.estimate(KEY, size) == pytest.approx((2 * 5.0 + 400 * expected_s) / 402, rel=0.01)


def test_follows_a_change_of_speed() -> None:
    estimator = ServiceTimeEstimator(half_life_obs=50)
    for _ in range(300):
        estimator.observe(KEY, 100, 1.0)
    for _ in range(300):
        estimator.observe(KEY, 100, 0.2)  # e.g. the model was moved to a faster card
    # 300 observations are six half-lives: 1/64 of the old speed is left in the moments.
    assert estimator.estimate(KEY, 100) == pytest.approx(0.2 + 0.8 / 64, rel=0.01)


def test_first_observation_is_blended_with_the_prior() -> None:
    estimator = ServiceTimeEstimator(prior_weight=1.0)
    estimator.declare(KEY, 1.0)
    estimator.observe(KEY, 10, 3.0)
    assert estimator.estimate(KEY, 10) == pytest.approx(2.0)


def test_one_size_seen_borrows_the_declared_slope() -> None:
    estimator = ServiceTimeEstimator(prior_weight=0.0)
    estimator.declare(KEY, 0.0, per_unit_s=0.01)
    for _ in range(10):
        estimator.observe(KEY, 100, 2.0)
    assert estimator.estimate(KEY, 200) == pytest.approx(3.0)


def test_noise_never_gives_a_negative_slope_or_estimate() -> None:
    estimator = ServiceTimeEstimator(prior_weight=0.0)
    for size, service_s in [(10, 1.0), (1000, 0.5), (20, 0.9), (900, 0.4)]:
        estimator.observe(KEY, size, service_s)
    assert estimator.estimate(KEY, 1e9) >= estimator.estimate(KEY, 0)
    assert estimator.estimate(KEY, 0) >= 0.0


def test_keys_are_separate() -> None:
    estimator = ServiceTimeEstimator()
    estimator.observe(("m", "gpu"), 1, 0.1)
    estimator.observe(("m", "cpu"), 1, 2.0)
    assert estimator.estimate(EstimatorKey("m", "gpu"), 1) < estimator.estimate(("m", "cpu"), 1)


def test_state_round_trips_through_json() -> None:
    estimator = ServiceTimeEstimator(half_life_obs=30, prior_weight=3.0, default_service_s=0.5)
    estimator.declare(("a/b:c", "gpu"), 0.3, 0.001)  # separators in model names must survive
    for i in range(50):
        estimator.observe(("a/b:c", "gpu"), i, 0.01 * i + 0.1)
        estimator.observe(("x", "cpu"), i, 0.2)
    restored = ServiceTimeEstimator.from_dict(json.loads(json.dumps(estimator.to_dict())))
    for key in (("a/b:c", "gpu"), ("x", "cpu"), ("never", "seen")):
        for size in (0, 25, 1000):
            assert restored.estimate(key, size) == estimator.estimate(key, size)
    restored.observe(("x", "cpu"), 3, 0.3)
    estimator.observe(("x", "cpu"), 3, 0.3)
    assert restored.estimate(("x", "cpu"), 3) == estimator.estimate(("x", "cpu"), 3)


@pytest.mark.parametrize(
    "state",
    [
        None,
        {},
        {"version": 99},
        {"version": 1, "half_life_obs": 10, "prior_weight": 1, "default_service_s": 0.1},
        {"version": 1, "half_life_obs": 10, "prior_weight": 1, "default_service_s": 0.1, "entries": [{}]},
        {"version": 1, "half_life_obs": 0, "prior_weight": 1, "default_service_s": 0.1, "entries": []},
        {
            "version": 1,
            "half_life_obs": 10,
            "prior_weight": 1,
            "default_service_s": 0.1,
            "entries": [
                {
                    "model": "m",
                    "device_kind": "gpu",
                    "prior_s": math.nan,
                    "prior_per_unit_s": 0,
                    "count": 1,
                    "weight": 1,
                    "mean_size": 1,
                    "mean_service_s": 1,
                    "sxx": 0,
                    "sxy": 0,
                }
            ],
        },
    ],
)
def test_malformed_state_is_refused(state: object) -> None:
    with pytest.raises(ValueError):
        ServiceTimeEstimator.from_dict(state)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "service_s", "name"),
    [(-1, 0.1, "size"), (math.nan, 0.1, "size"), (1, -0.1, "service_s"), (1, math.inf, "service_s")],
)
def test_bad_observations_are_refused_by_name(size: float, service_s: float, name: str) -> None:
    estimator = ServiceTimeEstimator()
    with pytest.raises(ValueError, match=name):
        estimator.observe(KEY, size, service_s)
    assert estimator.observations(KEY) == 0.0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="half_life_obs"):
        ServiceTimeEstimator(half_life_obs=0.5)
    with pytest.raises(ValueError, match="declared service_s"):
        ServiceTimeEstimator().declare(KEY, -1.0)
