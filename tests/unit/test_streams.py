"""Reading a generation's stream: each character once, across a redelivery that streams the text again."""

from __future__ import annotations

from app.broker import streams
from app.errors import Cancelled, from_code


def feed(reader: streams.Reader, entries: list[dict[str, str]]) -> str:
    return "".join(reader.feed(e) for e in entries)


def test_a_redelivered_run_is_read_once():
    reader = streams.Reader()
    first_run = [streams.text_entry(0, "he"), streams.text_entry(2, "llo")]
    second_run = [streams.text_entry(0, "hel"), streams.text_entry(3, "lo w"), streams.text_entry(7, "orld")]
    assert feed(reader, first_run) == "hello"
    assert feed(reader, second_run) == " world"
    assert not reader.done
    reader.feed(streams.end_entry("length", {"completion_tokens": 4}))
    assert reader.done and reader.text == "hello world"
    assert reader.finish_reason == "length" and reader.usage == {"completion_tokens": 4}


def test_an_error_entry_ends_the_stream_with_its_typed_error():
    reader = streams.Reader()
    assert feed(reader, [streams.text_entry(0, "ab"), streams.error_entry("CANCELLED", "cancelled")]) == "ab"
    assert reader.done and reader.error is not None
    assert isinstance(from_code(*reader.error), Cancelled)


def test_a_chunk_past_a_gap_is_not_glued_on():
    reader = streams.Reader()
    assert feed(reader, [streams.text_entry(0, "ab"), streams.text_entry(5, "zz")]) == "ab"
