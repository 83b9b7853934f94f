import pytest

from app.ledger import _ids_in, classify


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


def test_ids_are_read_from_the_message_headers_only():
    raw = b'{"body": "...", "headers": {"lang": "py", "task": "maas.infer", "id": "abc-1", "root_id": "zzz"}}'
    assert _ids_in([raw]) == {"abc-1"}
