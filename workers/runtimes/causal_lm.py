"""Generative text models (causal language models) with transformers and PyTorch: a prompt in, text out.

The artifact is a tar of a transformers model directory saved with ``save_pretrained`` (model and tokenizer:
``config.json``, ``*.safetensors``, ``tokenizer.json`` and its configs), packed with ``maas model pack`` like an
embedding model: one file, one sha256 checked before every load. Nothing is unpickled and no code travels in it:
safetensors weights only, ``trust_remote_code`` off, a config naming custom code (``auto_map``) refused, and the
Hugging Face Hub never asked.

Two entries: ``generate`` (the real one: a prompt and sampling parameters, text chunks as they are made, through
the continuous-batching :class:`~workers.generation.Engine`), and ``infer`` so that the Open Inference Protocol
path still works: one BYTES tensor of prompts in, one BYTES tensor ``text`` out, greedy with the default
``max_tokens``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import Cancelled, CorruptArtifact, LoadFailed, ModelExecutionError
from app.generation import SamplingParams, kv_reserve_bytes
from app.policies import DEFAULT_PARAMS, Policy, PolicyParams
from workers.runtimes import archive, torch_device
from workers.runtimes.failures import translated
from workers.runtimes.sentence_transformers_runtime import _texts

#: The output tensor's name on the infer path.
OUTPUT = "text"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def describe(artifact: Path) -> dict[str, Any]:
    """Check the archive without loading it: {"files", "model_type", "context"}."""
    with archive.opened(artifact) as (tar, names):
        config = archive.read_json(tar, "config.json")
        if not isinstance(config, dict) or "model_type" not in config:
            raise CorruptArtifact(f"{artifact.name} has no config.json with a model_type: not a transformers model")
        if config.get("auto_map"):
            raise CorruptArtifact(f"{artifact.name} asks for custom model code (auto_map); no code may ship")
        if not any(n.endswith(".safetensors") for n in names):
            raise CorruptArtifact(f"{artifact.name} has no .safetensors weights")
        if not any(n in names for n in TOKENIZER_FILES):
            raise CorruptArtifact(f"{artifact.name} has no tokenizer (tokenizer.json); save it beside the model")
        context = config.get("n_positions") or config.get("max_position_embeddings")
    return {"files": names, "model_type": config["model_type"], "context": context}


def signature() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (
        [{"name": "prompt", "datatype": "BYTES", "shape": [-1]}],
        [{"name": OUTPUT, "datatype": "BYTES", "shape": [-1]}],
    )


class CausalLMRuntime:
    name = "causal_lm"
    generative = True

    def __init__(self) -> None:
        self._model: Any = None
        self._tokenizer: Any = None
        self._device = "cpu"
        self.kv_bytes_per_token = 0

    def load(self, artifact: Path, use_gpu: bool) -> None:
        describe(artifact)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        with translated("transformers cannot start", LoadFailed):
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            torch_device.limit_threads()
            device = torch_device.pick(use_gpu)
        with tempfile.TemporaryDirectory(prefix="maas-lm-") as tmp:
            archive.extract(artifact, Path(tmp))
            with translated(f"transformers cannot load {artifact.name}"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tokenizer = AutoTokenizer.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
                # Eager attention: the padded decode batch must give each sequence what it gets alone.
                model: Any = AutoModelForCausalLM.from_pretrained(
                    tmp,
                    local_files_only=True,
                    trust_remote_code=False,
                    use_safetensors=True,
                    attn_implementation="eager",
                )
        model.to(device)
        model.eval()
        self._model, self._tokenizer, self._device = model, tokenizer, device
        with translated(f"{artifact.name} cannot run a forward pass", LoadFailed):
            self.kv_bytes_per_token = self._measure_kv_bytes_per_token()

    def _measure_kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token takes, measured: the cache a short prompt leaves, over its length.

        Measured rather than computed from the configuration, so that what the model really keeps (grouped or
        multi-query heads, its dtype on this device) is what placement and the engine's budget count."""
        import torch

        tokens = 8
        ids = torch.zeros((1, tokens), dtype=torch.long, device=self._device)
        with torch.inference_mode():
            out = self._model(input_ids=ids, use_cache=True)
        held = sum(int(layer.keys.nbytes + layer.values.nbytes) for layer in out.past_key_values.layers)
        return max(1, held // tokens)

    @property
    def context_tokens(self) -> int:
        """Most tokens (prompt and generated) one sequence may hold."""
        config: Any = self._model.config
        context: Any = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 1024)
        return int(context)

    def engine(
        self,
        *,
        max_sequences: int = 8,
        max_kv_bytes: int = 256 * 1024**2,
        policy: Policy = Policy.FIFO,
        policy_params: PolicyParams | None = None,
    ) -> Any:
        """A continuous-batching engine over this model (``workers.generation.Engine``)."""
        from workers.generation import Engine

        assert self._model is not None, "engine before load"
        return Engine(
            self._model,
            self._tokenizer,
            self._device,
            max_sequences=max_sequences,
            max_kv_bytes=max_kv_bytes,
            bytes_per_token=self.kv_bytes_per_token,
            policy=policy,
            policy_params=policy_params or DEFAULT_PARAMS,
        )

    def kv_reserve_bytes(self, max_sequences: int, max_kv_bytes: int) -> int:
        """The KV cache this replica's engine may grow to (see :func:`app.generation.kv_reserve_bytes`)."""
        return kv_reserve_bytes(self.kv_bytes_per_token, max_sequences, self.context_tokens, max_kv_bytes)

    def generate(
        self, prompt: str, params: SamplingParams, cancelled: Callable[[], bool] | None = None
    ) -> Iterator[str]:
        """Text chunks of one generation as they are made; raises Cancelled when ``cancelled()`` turns true."""
        engine = self.engine(max_sequences=1)
        engine.add("one", prompt, params)
        while engine.busy:
            if cancelled is not None and cancelled():
                engine.cancel("one")
            with translated("model raised", ModelExecutionError):
                events = engine.step()
            for event in events:
                if event.finished == "cancelled":
                    raise Cancelled("the generation was cancelled")
                if event.text:
                    yield event.text

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = _texts(inputs)
        texts = ["".join(self.generate(p, SamplingParams())) for p in prompts]
        return {OUTPUT: np.array([t.encode() for t in texts], dtype=object)}

    def unload(self) -> None:
        self._model = self._tokenizer = None
        torch_device.release(self._device)

    @property
    def device_label(self) -> str:
        return f"torch:{self._device}" if self._model is not None else "unloaded"
