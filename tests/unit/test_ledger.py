import json

import pytest

from app.broker.layout import task_ids_in
from app.broker.ledger import classify


@pytest.mark.parametrize(
    ("candidates", "answered", "present", "suspects", "done", "lost", "suspect"),
    [
        ({"a", "b"}, {"a"}, {"b"}, set(), {"a"}, set(), set()),  # answered / still queued
        ({"a"}, set(), set(), set(), set(), set(), {"a"}),  # missing once: only suspect
        ({"a"}, set(), set(), {"a"}, set(), {"a"}, set()),  # missing twice: lost
        ({"a"}, {"a"}, set(), {"a"}, {"a"}, set(), set()),  # answered meanwhile: never resent
        ({"a"}, set(), {"a"}, {"a"}, set(), set(), set()),  # back in a queue (restored): not lost
    ],
)
def test_classify(candidates, answered, present, suspects, done, lost, suspect):
    v = classify(candidates, answered, present, suspects)
    assert (set(v.done), set(v.lost), set(v.suspect)) == (done, lost, suspect)


def _message(task_id: str, args: list) -> bytes:
    body = json.dumps([args, {}, {}])
    return json.dumps(
        {"body": body, "headers": {"lang": "py", "task": "maas.infer", "id": task_id, "root_id": "r"}}
    ).encode()


def test_ids_are_read_from_the_message_headers_only():
    # An id-shaped string inside the body (a tensor name, a model input) must not count as a task that is present.
    raw = _message("abc-1", ["m", None, [{"name": "x", "id": "not-a-task", "data": ['"id": "nor-this"']}]])
    assert task_ids_in([raw]) == {"abc-1"}


def test_ids_are_read_from_unacked_entries_and_junk_is_skipped():
    unacked = json.dumps([json.loads(_message("held-1", ["m", None, []])), "", "m.iris"]).encode()
    assert task_ids_in([unacked, b"not json", b'{"headers": "no"}', b"[]"]) == {"held-1"}
