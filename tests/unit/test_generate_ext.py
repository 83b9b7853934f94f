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
