"""Measuring the memory a replica really takes: device-memory delta on a GPU, RSS delta on the CPU."""

from __future__ import annotations

import gc
import importlib.util

import psutil

from workers import nvml


def used_bytes(kind: str, index: int) -> int:
    if kind == "gpu":
        used = nvml.process_used_bytes(index)
        if used is not None:
            return used
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def open_cuda_context(index: int) -> int | None:
    """Create this process's CUDA context now, before any model loads; the bytes NVML saw it take, or None.

    The context (driver state, the kernels of the CUDA libraries) is created by the first CUDA call and is shared by
    every runtime in the process (PyTorch and ONNX Runtime both use the device's primary context). Left to the
    first load, its hundreds of MB would be charged to that one replica's footprint and to no other. Created with
    PyTorch where it is installed; without it, the first replica still pays for the context.
    """
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    before = nvml.process_used_bytes(index) or 0
    torch.zeros(1, device="cuda:0")  # the device the worker pinned is cuda:0 in this process
    torch.cuda.synchronize()
    after = nvml.process_used_bytes(index)
    return None if after is None else after - before
