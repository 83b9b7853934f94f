"""``python -m bench.gpu``: the GPU path of a worker, checked on the machine it runs on. Prints one JSON line.

On a GPU: NVML discovery, pinning with ``CUDA_VISIBLE_DEVICES``, ONNX Runtime on its CUDA provider and a TorchScript
model on CUDA, each loaded, compared with the CPU answer, and unloaded, with the device memory it took (NVML process
memory; ``torch.cuda.memory_allocated`` too for PyTorch) and what the unload gave back. Exits 1 if a check fails.

Without one it says so (``"gpu": false`` and the reason) and runs the same checks on the CPU path (virtual device,
CPU provider, TorchScript on the CPU, RSS footprints), exiting 0 when they pass.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.db.devices import DeviceInfo
from app.settings import Settings
from bench.models import add_one
from workers import devices, nvml
from workers.footprint import used_bytes

#: Width of the TorchScript MLP: 4 layers of WIDTH x WIDTH FP32 weights (64 MiB at 2048), big enough to measure.
WIDTH = 2048


def choose_device(index: int) -> tuple[DeviceInfo, str]:
    """The device to check and, when it is not a GPU, why."""
    found = nvml.gpus()
    if found:
        return devices.pick(found, index), ""
    reason = "NVML found no GPU (no NVIDIA driver, or nvidia-ml-py missing)"
    virtual = devices.discover(Settings.from_env({"MAAS_DEVICE_MODE": "virtual", "MAAS_VIRTUAL_DEVICES": "1x8GiB"}))
    return virtual[0], reason


def exercise(runtime: Any, artifact: Path, inputs: dict[str, np.ndarray], expected: np.ndarray, device: DeviceInfo):
    """Load, answer, unload one runtime; the figures a worker would record, plus whether the answer is right."""
    kind, index = device.kind, device.index
    before = used_bytes(kind, index)
    t0 = time.perf_counter()
    runtime.load(artifact, use_gpu=kind == "gpu")
    load_ms = (time.perf_counter() - t0) * 1000
    loaded = used_bytes(kind, index)
    runtime.infer(inputs)  # first call builds kernels / CUDA graphs; time the second
    t0 = time.perf_counter()
    (answer,) = runtime.infer(inputs).values()
    infer_ms = (time.perf_counter() - t0) * 1000
    label = runtime.device_label
    runtime.unload()
    after = used_bytes(kind, index)
    return {
        "device_label": label,
        "correct": bool(np.allclose(answer, expected, rtol=1e-3, atol=1e-3)),
        "load_ms": round(load_ms, 1),
        "infer_ms": round(infer_ms, 2),
        "footprint_bytes": loaded - before,
        "freed_bytes": loaded - after,
        "memory": "nvml process memory" if kind == "gpu" else "process RSS",
    }


def check_onnx(tmp: Path, device: DeviceInfo) -> dict[str, Any]:
    from workers.runtimes.onnx import OnnxRuntime

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = exercise(OnnxRuntime(), add_one(tmp / "add_one.onnx"), {"x": x}, x + 1, device)
    if device.kind == "gpu":
        result["ok"] = result["correct"] and result["device_label"] == "CUDAExecutionProvider"
        if result["device_label"] != "CUDAExecutionProvider":
            result["why"] = "onnxruntime has no CUDA provider here: install onnxruntime-gpu"
    else:
        result["ok"] = result["correct"]
    return result


def check_torchscript(tmp: Path, device: DeviceInfo) -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None:
        return {"ok": None, "skipped": "torch is not installed (pip install torch==2.13.0)"}
    import warnings

    import torch

    from workers.runtimes.torchscript import TorchScriptRuntime

    torch.manual_seed(0)
    layers = [m for _ in range(4) for m in (torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in 2.13, still supported
        net = torch.jit.script(torch.nn.Sequential(*layers).eval())
        torch.jit.save(net, str(tmp / "mlp.pt"))
    x = np.random.default_rng(0).normal(size=(8, WIDTH)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()  # the CPU answer, in this process
    del net
    on_gpu = device.kind == "gpu" and torch.cuda.is_available()
    allocated_before = torch.cuda.memory_allocated() if on_gpu else 0
    runtime = TorchScriptRuntime()
    result = exercise(runtime, tmp / "mlp.pt", {"input": x}, expected, device)
    result["weights_bytes"] = 4 * 4 * (WIDTH * WIDTH + WIDTH)
    if on_gpu:
        result["cuda_allocated_after_unload_bytes"] = torch.cuda.memory_allocated() - allocated_before
    ok_device = result["device_label"] == ("torch:cuda:0" if device.kind == "gpu" else "torch:cpu")
    result["ok"] = result["correct"] and ok_device and result.get("cuda_allocated_after_unload_bytes", 0) == 0
    return result


def run(index: int) -> dict[str, Any]:
    device, reason = choose_device(index)
    # Before any runtime is imported, as a worker does; pin refuses if a CUDA library is already loaded.
    devices.pin(device)
    report: dict[str, Any] = {"gpu": device.kind == "gpu"}
    if reason:
        report["reason"] = reason
    report["device"] = {"kind": device.kind, "name": device.name, "uuid": device.uuid, "mem_bytes": device.mem_bytes}
    report["pinned"] = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    with tempfile.TemporaryDirectory(prefix="maas-bench-gpu-") as tmp:
        for name, check in (("onnx", check_onnx), ("torchscript", check_torchscript)):
            try:
                report[name] = check(Path(tmp), device)
            except Exception as exc:  # a failed check is a result to print, not a traceback
                report[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    report["ok"] = all(report[n]["ok"] is not False for n in ("onnx", "torchscript"))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=int, default=0, help="NVML index of the GPU to check (default 0)")
    args = parser.parse_args()
    report = run(args.device)
    print(json.dumps(report))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
