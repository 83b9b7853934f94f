"""Which devices this host has: real GPUs from NVML, or declared virtual devices where there is none."""

from __future__ import annotations

import os
import sys

from app.db.devices import DeviceInfo
from app.errors import ConfigError
from app.service_time import VIRTUAL_CLASS_PREFIX
from app.settings import Settings
from workers import nvml

#: Modules that may create a CUDA context on import; none may be loaded before the device is pinned.
_CUDA_MODULES = ("torch", "onnxruntime", "cupy", "tensorflow", "jax")


def discover(settings: Settings) -> list[DeviceInfo]:
    if settings.device_mode != "virtual":
        found = nvml.gpus()
        if found:
            return found
        if settings.device_mode == "nvml":
            raise ConfigError("MAAS_DEVICE_MODE=nvml but NVML found no GPU (is the NVIDIA driver loaded?)")
    host = settings.host
    label = f"{VIRTUAL_CLASS_PREFIX}{settings.virtual_device_class}" if settings.virtual_device_class else "virtual"
    return [
        DeviceInfo(i, f"virtual-{host}-{i}", f"{label} device {i}", "virtual", mem)
        for i, mem in enumerate(settings.virtual_devices)
    ]


def pick(devices: list[DeviceInfo], index: int) -> DeviceInfo:
    for device in devices:
        if device.index == index:
            return device
    have = ", ".join(f"{d.index} ({d.name})" for d in devices) or "none (declare some with MAAS_VIRTUAL_DEVICES)"
    raise ConfigError(f"--device {index}: no such device (devices: {have})")


def pin(device: DeviceInfo) -> None:
    """Make ``device`` the only GPU this process can see. Must run before any CUDA library is imported."""
    early = [m for m in _CUDA_MODULES if m in sys.modules]
    if early:
        raise RuntimeError(f"cannot pin device: {early} already imported and may have initialised CUDA")
    if device.kind == "gpu":
        # The uuid survives PCI re-enumeration, unlike the index.
        os.environ["CUDA_VISIBLE_DEVICES"] = device.uuid
    else:
        # A virtual device is the CPU; hide any GPU so a runtime cannot wander onto one.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
