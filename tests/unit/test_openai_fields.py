"""Our own fields on the OpenAI routes: priority and the two deadlines, checked with the field named."""

from __future__ import annotations

import pytest

from app.errors import InvalidInput, InvalidPriority
from gateway.openai_api import Scheduling, scheduling


def test_absent_fields_leave_it_to_the_policy_and_unbounded():
    assert scheduling({"model": "m", "prompt": "p"}) == Scheduling()


def test_the_client_s_names_and_values_are_taken():
    asked = scheduling({"priority": 0, "deadline_s": 30, "first_token_deadline_s": 0.5})
    assert asked == Scheduling(priority=0, deadline_s=30.0, first_token_deadline_s=0.5)


@pytest.mark.parametrize(
    ("doc", "error", "named"),
    [
        ({"priority": 10}, InvalidPriority, "priority"),
        ({"priority": -1}, InvalidPriority, "priority"),
        ({"priority": "high"}, InvalidPriority, "priority"),
        ({"priority": 2.0}, InvalidPriority, "priority"),
        ({"priority": True}, InvalidPriority, "priority"),
        ({"deadline_s": 0}, InvalidInput, "deadline_s"),
        ({"deadline_s": "5"}, InvalidInput, "deadline_s"),
        ({"deadline_s": True}, InvalidInput, "deadline_s"),
        ({"first_token_deadline_s": -1.5}, InvalidInput, "first_token_deadline_s"),
        ({"first_token_deadline_s": [1]}, InvalidInput, "first_token_deadline_s"),
    ],
)
def test_a_bad_value_is_refused_naming_the_field(doc, error, named):
    with pytest.raises(error, match=named):
        scheduling(doc)
