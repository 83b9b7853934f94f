"""Triton's generate extension: what a request body may say, and what is refused with the field it names."""

from __future__ import annotations

import pytest

from app.errors import InvalidInput
from app.generation import SamplingParams
from gateway.generate_ext import parse_generate


def test_parameters_nested_or_at_the_top_level():
    nested = parse_generate({"text_input": "hi", "parameters": {"max_tokens": 5, "stop": ["\n"]}}, streaming=False)
    top = parse_generate({"id": "r1", "text_input": "hi", "max_tokens": 5, "stop": "\n"}, streaming=False)
    assert nested.params == top.params == SamplingParams(max_tokens=5, stop=("\n",))
    assert nested.request_id is None and top.request_id == "r1"
    sampled = parse_generate(
        {"text_input": "hi", "parameters": {"temperature": 0.7, "top_p": 0.9, "seed": 3, "stream": True}},
        streaming=True,
    )
    assert sampled.params == SamplingParams(temperature=0.7, top_p=0.9, seed=3)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({}, "text_input"),
        ({"text_input": ""}, "text_input"),
        ({"text_input": ["a"]}, "text_input"),
        ({"text_input": "a", "prompt": "b"}, "prompt"),
        ({"text_input": "a", "id": 3}, "id"),
        ({"text_input": "a", "parameters": []}, "parameters"),
        ({"text_input": "a", "parameters": {"max_tokens": 0}}, "max_tokens"),
        ({"text_input": "a", "parameters": {"top_k": 5}}, "top_k"),
        ({"text_input": "a", "parameters": {"temperature": "hot"}}, "temperature"),
        ({"text_input": "a", "max_tokens": 3, "parameters": {"max_tokens": 4}}, "max_tokens"),
        ({"text_input": "a", "parameters": {"stream": True}}, "stream"),
    ],
)
def test_bad_requests_name_what_is_wrong(body, named):
    with pytest.raises(InvalidInput, match=named):
        parse_generate(body, streaming=False)


def test_priority_and_timeout_as_the_infer_route_reads_them():
    nested = parse_generate({"text_input": "hi", "parameters": {"priority": 3, "timeout": 2_500_000}}, streaming=False)
    top = parse_generate({"text_input": "hi", "priority": 3, "timeout": 2_500_000}, streaming=True)
    assert (nested.level, nested.deadline_s) == (top.level, top.deadline_s) == (2, 2.5)
    assert nested.params == SamplingParams()  # scheduling fields are not sampling parameters
    # Triton's zeros: priority 0 leaves it to the policy, timeout 0 is no timeout; the earlier of two bounds wins.
    zeros = parse_generate({"text_input": "hi", "parameters": {"priority": 0, "timeout": 0}}, streaming=False)
    assert (zeros.level, zeros.deadline_s) == (None, None)
    both = parse_generate({"text_input": "hi", "parameters": {"timeout": 3_000_000, "deadline_ms": 500}}, False)
    assert both.deadline_s == 0.5


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"text_input": "a", "parameters": {"priority": -1}}, "priority"),
        ({"text_input": "a", "priority": "high"}, "priority"),
        ({"text_input": "a", "parameters": {"priority": True}}, "priority"),
        ({"text_input": "a", "parameters": {"timeout": -5}}, "timeout"),
        ({"text_input": "a", "timeout": "1s"}, "timeout"),
        ({"text_input": "a", "priority": 1, "parameters": {"priority": 2}}, "priority"),
    ],
)
def test_bad_scheduling_parameters_name_the_field(body, named):
    with pytest.raises(InvalidInput, match=named):
        parse_generate(body, streaming=False)
