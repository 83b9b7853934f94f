import pytest

from app.errors import InsufficientMemory, UnknownWorker
from app.placement import DeviceView, choose_device

GIB = 1024**3


def dev(name, index, mem_gib, used_gib, alive=True):
    return DeviceView(name, index, name, int(mem_gib * GIB), int(used_gib * GIB), alive)


FLEET = [dev("a", 0, 8, 6), dev("b", 1, 8, 2), dev("c", 2, 16, 15), dev("dead", 3, 80, 0, alive=False)]


@pytest.mark.parametrize(
    ("need_gib", "kw", "expected"),
    [(1, {}, "b"), (6, {}, "b"), (1, {"worker": "a"}, "a"), (1, {"device": 2}, "c"), (0.5, {"worker": "c"}, "c")],
)
def test_most_free_memory_or_the_named_target(need_gib, kw, expected):
    assert choose_device(FLEET, int(need_gib * GIB), **kw).worker_name == expected


def test_refusal_carries_the_figures():
    with pytest.raises(InsufficientMemory, match="needs 7.00 GiB.*b: 6.00 GiB free of 8.00 GiB"):
        choose_device(FLEET, 7 * GIB)


@pytest.mark.parametrize(
    ("kw", "message"), [({"worker": "dead"}, "not registered or not alive"), ({"device": 9}, "device 9")]
)
def test_unknown_or_dead_targets(kw, message):
    with pytest.raises(UnknownWorker, match=message):
        choose_device(FLEET, GIB, **kw)


def test_no_live_device():
    with pytest.raises(UnknownWorker, match="no live worker"):
        choose_device([dev("dead", 0, 8, 0, alive=False)], GIB)
