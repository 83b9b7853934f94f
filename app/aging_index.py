"""The small index the producer keeps of waiting requests under the aging policy (see beat/aging.py for why).

The one module that knows these keys: the producer writes an entry per request (``app.admission``), beat's
aging pass reads them.
"""

from __future__ import annotations

_INDEX = "maas:aging:{model}"  # zset: task id -> submitted at (unix s)
FACTS = "maas:aging:facts"  # hash: task id -> {"c": class, "e": estimate s, "b": backlog s, "l": current level}
PROMOTED = "maas:aging:promoted"  # hash: model -> promoted copies sent so far (a counter)


def key(model: str) -> str:
    return _INDEX.format(model=model)
