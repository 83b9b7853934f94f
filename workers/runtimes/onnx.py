"""ONNX Runtime: the CUDA provider on a GPU, the CPU provider otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.errors import ModelExecutionError
from workers.runtimes.failures import translated


class OnnxRuntime:
    name = "onnx"

    def __init__(self) -> None:
        self._session: Any = None
        self._outputs: list[str] = []

    def load(self, artifact: Path, use_gpu: bool) -> None:
        # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types; a failed allocation (bad_alloc,
        # "Failed to allocate memory") is OutOfMemory, anything else a CorruptArtifact.
        with translated(f"ONNX Runtime cannot load {artifact.name}"):
            # Imported here, after the worker pinned its device: importing onnxruntime-gpu may touch CUDA.
            import onnxruntime as ort

            available = ort.get_available_providers()
            providers = ["CPUExecutionProvider"]
            if use_gpu and "CUDAExecutionProvider" in available:
                providers.insert(0, "CUDAExecutionProvider")
            options = ort.SessionOptions()
            # One request at a time per worker: a single intra-op thread avoids oversubscribing the host's cores
            # when several workers share them, and keeps the latency of small models low.
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(artifact), sess_options=options, providers=providers)
        self._session = session
        self._outputs = [o.name for o in session.get_outputs()]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._session is not None, "infer before load"
        with translated("model raised", ModelExecutionError):
            values = self._session.run(self._outputs, inputs)
        return dict(zip(self._outputs, values, strict=True))

    def unload(self) -> None:
        self._session = None

    @property
    def device_label(self) -> str:
        return str(self._session.get_providers()[0]) if self._session is not None else "unloaded"
