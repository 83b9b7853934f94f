"""``python -m bench.gpu``: the GPU path of a worker, checked on the machine it runs on. Prints one JSON line.

On a GPU: NVML discovery, pinning with ``CUDA_VISIBLE_DEVICES``, ONNX Runtime on its CUDA provider and a TorchScript
model on CUDA, each loaded, compared with the CPU answer, and unloaded, with the device memory it took (NVML process
memory; ``torch.cuda.memory_allocated`` too for PyTorch) and what the unload gave back. Exits 1 if a check fails.

Without one it says so (``"gpu": false`` and the reason) and runs the same checks on the CPU path (virtual device,
CPU provider, TorchScript on the CPU, RSS footprints), exiting 0 when they pass.

``--fleet`` adds the whole path through real processes: Redis, the embedded database and a ``maas worker`` started
on device 0 (NVML, pinned), a TorchScript model registered, loaded, asked and stopped through the client, with
what the worker recorded: the device row (name, kind, memory, telemetry) and the replica's measured footprint.
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
from workers.footprint import open_cuda_context, used_bytes

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
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            # Not a failure of this code: the CUDA path cannot be checked without the GPU build installed.
            result["ok"] = None
            result["skipped"] = "onnxruntime has no CUDA provider here (install onnxruntime-gpu); served on the CPU"
        else:
            result["ok"] = result["correct"] and result["device_label"] == "CUDAExecutionProvider"
    else:
        result["ok"] = result["correct"]
    return result


def torch_mlp(path: Path, x: np.ndarray) -> np.ndarray:
    """Save a seeded TorchScript MLP (4 layers of WIDTH x WIDTH) at ``path``; its CPU answer for ``x``."""
    import warnings

    import torch

    torch.manual_seed(0)
    layers = [m for _ in range(4) for m in (torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in 2.13, still supported
        net = torch.jit.script(torch.nn.Sequential(*layers).eval())
        torch.jit.save(net, str(path))
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()  # the CPU answer, in this process


def check_torchscript(tmp: Path, device: DeviceInfo) -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None:
        return {"ok": None, "skipped": "torch is not installed (pip install torch==2.13.0)"}
    import torch

    from workers.runtimes.torchscript import TorchScriptRuntime

    x = np.random.default_rng(0).normal(size=(8, WIDTH)).astype(np.float32)
    expected = torch_mlp(tmp / "mlp.pt", x)
    on_gpu = device.kind == "gpu" and torch.cuda.is_available()
    allocated_before = torch.cuda.memory_allocated() if on_gpu else 0
    runtime = TorchScriptRuntime()
    result = exercise(runtime, tmp / "mlp.pt", {"input": x}, expected, device)
    result["weights_bytes"] = 4 * 4 * (WIDTH * WIDTH + WIDTH)
    if on_gpu:
        result["cuda_allocated_after_unload_bytes"] = torch.cuda.memory_allocated() - allocated_before
        result["cuda_reserved_after_unload_bytes"] = torch.cuda.memory_reserved()
    ok_device = result["device_label"] == ("torch:cuda:0" if device.kind == "gpu" else "torch:cpu")
    result["ok"] = result["correct"] and ok_device and result.get("cuda_allocated_after_unload_bytes", 0) == 0
    return result


def check_fleet(tmp: Path) -> dict[str, Any]:
    """A worker process on device 0 serving a TorchScript MLP through Redis, checked against the CPU answer."""
    if importlib.util.find_spec("torch") is None:
        return {"ok": None, "skipped": "torch is not installed"}
    from sqlalchemy import select

    from app.client import outputs_as_arrays
    from app.db.schema import Device, Replica
    from app.db.session import session_scope
    from bench.fleet import BenchFleet

    x = np.random.default_rng(1).normal(size=(16, WIDTH)).astype(np.float32)
    expected = torch_mlp(tmp / "fleet_mlp.pt", x)
    signature = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, WIDTH]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, WIDTH]}],
    }
    with BenchFleet(MAAS_ALLOCATION="false", MAAS_DEVICE_MODE="auto") as fleet:
        fleet.register("mlp", tmp / "fleet_mlp.pt", runtime="torchscript", mem_bytes=512 * 2**20, **signature)
        fleet.worker(0, "gpu0@bench")
        client = fleet.client
        loaded = client.load("mlp").wait(timeout_s=300)
        t0 = time.perf_counter()
        answer = client.infer("mlp", {"input": x}).wait(timeout_s=120)
        first_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        for _ in range(20):
            answer = client.infer("mlp", {"input": x}).wait(timeout_s=120)
        round_trip_ms = (time.perf_counter() - t0) * 1000 / 20
        got = outputs_as_arrays(answer)["output"]
        time.sleep(fleet.settings.heartbeat_s + 1.0)  # one heartbeat carries the device telemetry
        with session_scope(fleet.settings.sqlalchemy_url) as session:
            device = session.scalars(select(Device).where(Device.worker_name == "gpu0@bench")).one()
            replica = session.get(Replica, loaded["replica"])
            recorded = {
                "name": device.name,
                "kind": device.kind,
                "mem_bytes": device.mem_bytes,
                "mem_used_bytes": device.mem_used_bytes,
                "util_pct": device.util_pct,
                "footprint_bytes": replica.footprint_bytes,
            }
        stopped = [h.wait(timeout_s=120)["state"] for h in client.stop("mlp")]
    result = {
        "state_after_load": loaded["state"],
        "correct": bool(np.allclose(got, expected, rtol=1e-3, atol=1e-3)),
        "first_infer_ms": round(first_ms, 1),
        "round_trip_ms": round(round_trip_ms, 2),
        "recorded": recorded,
        "stopped": stopped,
    }
    weights_bytes = 4 * 4 * (WIDTH * WIDTH + WIDTH)
    result["ok"] = (
        result["correct"]
        and loaded["state"] == "READY"
        and stopped == ["STOPPED"]
        # NVML counts in 2 MiB pages and the biases share a segment already open: the weights to within 2 MiB.
        and (recorded["footprint_bytes"] or 0) >= weights_bytes - 2 * 2**20
    )
    return result


def run(index: int, fleet: bool = False) -> dict[str, Any]:
    device, reason = choose_device(index)
    # Before any runtime is imported, as a worker does; pin refuses if a CUDA library is already loaded.
    devices.pin(device)
    report: dict[str, Any] = {"gpu": device.kind == "gpu"}
    if reason:
        report["reason"] = reason
    report["device"] = {"kind": device.kind, "name": device.name, "uuid": device.uuid, "mem_bytes": device.mem_bytes}
    report["pinned"] = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if device.kind == "gpu":
        # As a worker does at start, so the footprints below are the models', not the CUDA context's.
        report["cuda_context_bytes"] = open_cuda_context(device.index)
    with tempfile.TemporaryDirectory(prefix="maas-bench-gpu-") as tmp:
        for name, check in (("onnx", check_onnx), ("torchscript", check_torchscript)):
            try:
                report[name] = check(Path(tmp), device)
            except Exception as exc:  # a failed check is a result to print, not a traceback
                report[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        names = ["onnx", "torchscript"]
        if fleet:
            names.append("fleet")
            try:
                report["fleet"] = check_fleet(Path(tmp))
            except Exception as exc:  # reported, like the other checks
                report["fleet"] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:600]}"}
    report["ok"] = all(report[n]["ok"] is not False for n in names)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=int, default=0, help="NVML index of the GPU to check (default 0)")
    parser.add_argument("--fleet", action="store_true", help="also serve a model through Redis and a real worker")
    args = parser.parse_args()
    report = run(args.device, fleet=args.fleet)
    print(json.dumps(report))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
