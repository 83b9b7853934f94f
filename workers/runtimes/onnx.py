"""ONNX Runtime: the CUDA provider on a GPU, the CPU provider otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.errors import CorruptArtifact, ModelExecutionError


class OnnxRuntime:
    name = "onnx"

    def __init__(self) -> None:
        self._session = None
        self._outputs: list[str] = []

    def load(self, artifact: Path, use_gpu: bool) -> None:
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
        try:
            self._session = ort.InferenceSession(str(artifact), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise CorruptArtifact(
                f"ONNX Runtime cannot load {artifact.name}: {str(exc).splitlines()[0][:200]}"
            ) from None
        self._outputs = [o.name for o in self._session.get_outputs()]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._session is not None, "infer before load"
        try:
            values = self._session.run(self._outputs, inputs)
        except Exception as exc:
            raise ModelExecutionError(f"model raised: {str(exc).splitlines()[0][:300]}") from None
        return dict(zip(self._outputs, values, strict=True))

    def unload(self) -> None:
        self._session = None

    @property
    def device_label(self) -> str:
        return self._session.get_providers()[0] if self._session is not None else "unloaded"
