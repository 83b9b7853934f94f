"""Measuring the memory a replica really takes: device-memory delta on a GPU, RSS delta on the CPU."""

from __future__ import annotations

import gc

import psutil

from workers import nvml


def used_bytes(kind: str, index: int) -> int:
    if kind == "gpu":
        used = nvml.process_used_bytes(index)
        if used is not None:
            return used
    gc.collect()
    return psutil.Process().memory_info().rss
