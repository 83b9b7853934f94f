import json

import numpy as np
import pytest

from app import policies
from app.errors import InvalidInput
from app.jobs import chunk_priority, split
from app.settings import Settings
from app.telemetry import ewma_rate
from beat.aging import promotions


def message(level, submitted_at, cls="interactive", est=0.01, backlog=0.0):
    headers = {"maas_submitted_at": submitted_at, "maas_class": cls, "maas_est_s": est, "maas_backlog_s": backlog}
    return json.dumps({"headers": headers, "properties": {"priority": level}}).encode()


def test_aging_promotes_only_what_waited_long_enough():
    params = policies.PolicyParams.around(0.01)
    now = 1000.0
    level = policies.aging(policies.RequestFacts("interactive", 0.01), params)  # where it was submitted
    raws = [message(level, now - 10.0), message(level, now - 0.001), json.dumps({"headers": {}}).encode()]
    moved = promotions(raws, level, now, params)
    assert len(moved) == 1 and moved[0].raw == raws[0] and moved[0].dst < level


def test_aging_never_demotes():
    params = policies.PolicyParams.around(0.01)
    assert promotions([message(0, 0.0)], 0, 1e6, params) == []


def test_split_into_chunks():
    chunks = split({"x": np.arange(10).reshape(10, 1).astype(np.float32)}, 4)
    assert [c[0]["shape"] for c in chunks] == [[4, 1], [4, 1], [2, 1]]
    assert chunks[2][0]["data"] == [8.0, 9.0]


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
