"""Sentence embeddings with sentence-transformers (PyTorch): text in, one vector per text out.

The artifact is a tar of a sentence-transformers model directory (``workers.runtimes.archive.pack``), so the whole
model (weights, tokenizer, configs) is one file with one sha256, checked before every load. It is unpacked into a
private temporary directory only for the load. Weights must be safetensors and every module class must come from
``sentence_transformers`` itself: nothing is unpickled, and no code travels in the artifact (``trust_remote_code``
stays off, and the Hugging Face Hub is never asked: a worker serves what the registry holds, nothing else).

Signature: one BYTES input of shape ``[-1]`` (UTF-8 strings), one FP32 output ``embedding`` of shape ``[-1, dim]``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import CorruptArtifact, InvalidInput, LoadFailed, ModelExecutionError
from workers.runtimes import archive, torch_device
from workers.runtimes.failures import translated

#: The output tensor's name.
OUTPUT = "embedding"
#: Texts encoded per forward pass; bounds activation memory for a long request.
BATCH_SIZE = 32


def describe(artifact: Path) -> dict[str, Any]:
    """Check the archive without loading it: {"files", "dim"}; dim is None when the configs do not say it."""
    with archive.opened(artifact) as (tar, names):
        modules = archive.read_json(tar, "modules.json")
        if not isinstance(modules, list) or not modules:
            raise CorruptArtifact(f"{artifact.name} has no modules.json: not a sentence-transformers model directory")
        foreign = [m.get("type") for m in modules if not str(m.get("type", "")).startswith("sentence_transformers.")]
        if foreign:
            raise CorruptArtifact(f"{artifact.name} names module classes outside sentence_transformers: {foreign}")
        if not any(n.endswith(".safetensors") for n in names):
            raise CorruptArtifact(f"{artifact.name} has no .safetensors weights")
        dim = None
        for module in modules:  # the last module that sets the width wins (Pooling, then maybe Dense)
            config = archive.read_json(tar, f"{module.get('path', '')}/config.json".lstrip("/")) or {}
            if "Pooling" in module["type"]:
                dim = config.get("word_embedding_dimension", dim)
            elif "Dense" in module["type"]:
                dim = config.get("out_features", dim)
    return {"files": names, "dim": dim}


def signature(dim: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (
        [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, dim]}],
    )


class SentenceTransformersRuntime:
    name = "sentence_transformers"

    def __init__(self) -> None:
        self._model: Any = None
        self._device = "cpu"
        self._dim = 0

    def load(self, artifact: Path, use_gpu: bool) -> None:
        describe(artifact)
        # Before the first import: huggingface_hub reads it once. A worker must never fetch weights or code.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        with translated("sentence-transformers cannot start", LoadFailed):
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            # Progress bars on stderr would interleave with the JSON log lines. (transformers leaves it unannotated.)
            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            torch_device.limit_threads()
            device = torch_device.pick(use_gpu)
        with tempfile.TemporaryDirectory(prefix="maas-st-") as tmp:
            archive.extract(artifact, Path(tmp))
            # OSError, ValueError, safetensors errors: the directory is not a usable model; OOM on the device
            with translated(f"sentence-transformers cannot load {artifact.name}"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # transformers' deprecation chatter would flood the JSON logs
                model = SentenceTransformer(tmp, device=device, trust_remote_code=False, local_files_only=True)
        # The directory is gone now; the weights are in memory (or mapped from the unlinked file, which is kept).
        model.eval()
        self._model, self._device = model, device
        # Renamed in sentence-transformers 6 (get_embedding_dimension); the old name warns there.
        width = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self._dim = int(width() or 0)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        assert self._model is not None, "infer before load"
        texts = _texts(inputs)
        if not texts:
            return {OUTPUT: np.zeros((0, self._dim), dtype=np.float32)}
        with translated("model raised", ModelExecutionError), torch.inference_mode():
            vectors = self._model.encode(texts, batch_size=BATCH_SIZE, convert_to_numpy=True, show_progress_bar=False)
        return {OUTPUT: np.asarray(vectors, dtype=np.float32)}

    def unload(self) -> None:
        self._model = None
        torch_device.release(self._device)

    @property
    def device_label(self) -> str:
        return f"torch:{self._device}" if self._model is not None else "unloaded"


def _texts(inputs: dict[str, np.ndarray]) -> list[str]:
    if len(inputs) != 1:
        raise InvalidInput(f"an embedding model takes one BYTES tensor of texts, got {sorted(inputs)}")
    (array,) = inputs.values()
    if array.ndim != 1:
        raise InvalidInput(f"texts must be a 1-d tensor, got shape {list(array.shape)}")
    texts = []
    for item in array.tolist():
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput("a text is not valid UTF-8") from exc
        if not isinstance(item, str):
            raise InvalidInput(f"texts must be strings, got a {type(item).__name__}")
        texts.append(item)
    return texts
