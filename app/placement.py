"""Choosing a device for a load, until the allocation solver takes over. Pure: no database, no Celery.

A load goes to the named worker or device when one is given; otherwise to the live device with the most free
memory that fits the version's footprint. A version that fits nowhere is refused with the figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.errors import InsufficientMemory, UnknownWorker

_GIB = 1024**3


@dataclass(frozen=True)
class DeviceView:
    worker_name: str
    index: int
    label: str
    mem_bytes: int
    used_bytes: int  # footprints of replicas that hold or are about to hold memory on it
    alive: bool

    @property
    def free_bytes(self) -> int:
        return self.mem_bytes - self.used_bytes


def _gib(n: int) -> str:
    return f"{n / _GIB:.2f} GiB"


def choose_device(
    devices: Sequence[DeviceView], need_bytes: int, *, worker: str | None = None, device: int | None = None
) -> DeviceView:
    """The device a new replica needing ``need_bytes`` goes to; raise a PlacementError naming why none fits."""
    candidates = [d for d in devices if d.alive]
    if worker is not None:
        candidates = [d for d in candidates if d.worker_name == worker]
        if not candidates:
            known = ", ".join(sorted(d.worker_name for d in devices if d.alive)) or "none"
            raise UnknownWorker(f"worker {worker!r} is not registered or not alive (alive: {known})")
    if device is not None:
        candidates = [d for d in candidates if d.index == device]
        if not candidates:
            raise UnknownWorker(f"no live worker is pinned to device {device}")
    if not candidates:
        raise UnknownWorker("no live worker: start one with `maas worker --device N`")
    best = max(candidates, key=lambda d: (d.free_bytes, -d.used_bytes, d.worker_name))
    if best.free_bytes < need_bytes:
        figures = "; ".join(f"{d.label}: {_gib(d.free_bytes)} free of {_gib(d.mem_bytes)}" for d in candidates)
        raise InsufficientMemory(f"needs {_gib(need_bytes)}, which fits on no device ({figures})")
    return best
