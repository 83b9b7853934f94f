"""Reading a generation's stream: each character once, across a redelivery that streams the text again."""

from __future__ import annotations

from app.broker import streams
from app.errors import Cancelled, from_code


def feed(reader: streams.Reader, entries: list[dict[str, str]]) -> str:
    return "".join(reader.feed(e) for e in entries)


def test_a_redelivered_run_is_read_once():
    reader = streams.Reader("t1", "")
    first_run = [streams.text_entry(0, "he"), streams.text_entry(2, "llo")]
    second_run = [streams.text_entry(0, "hel"), streams.text_entry(3, "lo w"), streams.text_entry(7, "orld")]
    assert feed(reader, first_run) == "hello"
    assert feed(reader, second_run) == " world"
    assert not reader.done
    reader.feed(streams.end_entry("length", {"completion_tokens": 4}))
    assert reader.done and reader.text == "hello world"
    assert reader.finish_reason == "length" and reader.usage == {"completion_tokens": 4}


def test_an_error_entry_ends_the_stream_with_its_typed_error():
    reader = streams.Reader("t1", "")
    assert feed(reader, [streams.text_entry(0, "ab"), streams.error_entry("CANCELLED", "cancelled")]) == "ab"
    assert reader.done and reader.error is not None
    assert isinstance(from_code(*reader.error), Cancelled)


def test_a_chunk_past_a_gap_is_not_glued_on():
    reader = streams.Reader("t1", "")
    assert feed(reader, [streams.text_entry(0, "ab"), streams.text_entry(5, "zz")]) == "ab"


def test_signed_entries_are_read_and_forged_ones_refused():
    import pytest

    from app import signing
    from app.errors import ForgedMessage

    key = "k" * 32
    genuine = signing.sign_stream_entry(key, "t1", streams.text_entry(0, "hello"))
    reader = streams.Reader("t1", key)
    assert reader.feed(genuine) == "hello"
    forged_text = {**genuine, "x": "hello, forged"}  # the text changed under the genuine signature
    unsigned_end = streams.end_entry("stop", {"completion_tokens": 1})
    copied = signing.sign_stream_entry(key, "t2", streams.text_entry(5, " there"))  # another request's entry
    other_key = signing.sign_stream_entry("o" * 32, "t1", streams.text_entry(5, " there"))
    for bad in (forged_text, unsigned_end, copied, other_key):
        with pytest.raises(ForgedMessage):
            reader.feed(bad)
    assert reader.text == "hello" and not reader.done  # nothing of a refused entry was believed


def test_without_a_key_entries_are_not_signed():
    from app import signing

    entry = streams.text_entry(0, "ab")
    assert signing.sign_stream_entry("", "t1", entry) == entry
