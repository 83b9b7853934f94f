"""The one module that talks to NVML (``pynvml`` from the nvidia-ml-py package).

NVML reads device facts without creating a CUDA context, so it is safe before the worker pins its device.
"""

from __future__ import annotations

import os

from app.db.devices import DeviceInfo


def gpus() -> list[DeviceInfo] | None:
    """Every GPU NVML sees, or None when there is no driver (or no pynvml)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded / ImportError: no GPU here
        return None
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            found.append(DeviceInfo(index, _text(uuid), _text(name), "gpu", int(memory.total)))
        return found
    finally:
        pynvml.nvmlShutdown()


def process_used_bytes(index: int) -> int | None:
    """Device memory used by this process on GPU ``index`` (None when NVML cannot tell)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid():
                    return int(proc.usedGpuMemory or 0)
            return 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def usage(index: int) -> dict[str, float | int] | None:
    """Device memory used and utilisation of GPU ``index`` (None when NVML cannot tell)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            return {"mem_used_bytes": int(memory.used), "util_pct": float(util.gpu)}
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None
