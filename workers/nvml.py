"""The one module that talks to NVML (``pynvml`` from the nvidia-ml-py package).

NVML reads device facts without creating a CUDA context, so it is safe before the worker pins its device.
A failing NVML call is answered with None (callers fall back: virtual devices, RSS for footprints, no GPU
telemetry) and logged with its traceback: at WARNING the first time per call, at DEBUG after that, since the
heartbeat asks every few seconds.
"""

from __future__ import annotations

import logging
import os

from app import logs
from app.db.devices import DeviceInfo

log = logging.getLogger("maas.worker")
#: NVML errors that only mean "no NVIDIA driver on this host": a CPU-only host, not a fault.
NO_DRIVER = frozenset({"NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded"})
_reported: set[str] = set()


def _failed(call: str, exc: Exception, *, level: int = logging.WARNING) -> None:
    """Log a failed NVML call with its traceback; repeats of the same call go to DEBUG."""
    first = call not in _reported
    _reported.add(call)
    logs.event(
        log,
        "nvml_failed",
        level if first else logging.DEBUG,
        exc_info=exc,
        call=call,
        reason=f"{type(exc).__name__}: {exc}",
    )


def gpus() -> list[DeviceInfo] | None:
    """Every GPU NVML sees, or None when there is no driver (or no pynvml)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded / ImportError: no GPU here
        no_gpu = isinstance(exc, ImportError) or type(exc).__name__ in NO_DRIVER
        _failed("nvmlInit", exc, level=logging.INFO if no_gpu else logging.WARNING)
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
    except Exception as exc:  # NVMLError_NotSupported (MIG, some drivers), a lost GPU: the caller measures RSS
        _failed("process_used_bytes", exc)
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
    except Exception as exc:  # the heartbeat goes on without GPU telemetry
        _failed("usage", exc)
        return None
