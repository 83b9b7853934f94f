"""Shared by the PyTorch-based runtimes: which device to run on, and giving its memory back on unload."""

from __future__ import annotations

import gc


def pick(use_gpu: bool) -> str:
    import torch

    # The worker pinned one GPU with CUDA_VISIBLE_DEVICES, so "cuda" is always that one (index 0 in this process).
    return "cuda:0" if use_gpu and torch.cuda.is_available() else "cpu"


def limit_threads() -> None:
    import torch

    # One request at a time per worker, several workers per host: one intra-op thread, as for ONNX Runtime.
    torch.set_num_threads(1)


def release(device: str) -> None:
    """Return cached device memory to the driver, so NVML (and the footprint delta) sees it freed."""
    gc.collect()  # the module's tensors go only once nothing (a traceback, a cycle) still holds them
    if device.startswith("cuda"):
        import torch

        # cuBLAS keeps a workspace per stream, taken from PyTorch's caching allocator, that outlives the module:
        # on an H100 33 MiB stayed allocated after an unload without this. Private, hence looked up.
        clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear_workspaces is not None:
            clear_workspaces()
        torch.cuda.empty_cache()
