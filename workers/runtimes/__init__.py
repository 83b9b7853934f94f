"""Runtimes by name. A version's ``runtime`` column picks one; an unknown or uninstalled one is a clear error.

Implementations are imported only when created: the worker pins its device before any of them imports a CUDA
library, and a worker without an optional runtime's packages still serves the others.
"""

from __future__ import annotations

import importlib

from app.errors import UnknownRuntime
from workers.runtimes import optional
from workers.runtimes.base import Runtime

#: runtime name -> (module, class) implementing it.
IMPLEMENTATIONS: dict[str, tuple[str, str]] = {
    "onnx": ("workers.runtimes.onnx", "OnnxRuntime"),
    "torchscript": ("workers.runtimes.torchscript", "TorchScriptRuntime"),
    "skops": ("workers.runtimes.skops_runtime", "SkopsRuntime"),
    "entrypoint": ("workers.runtimes.entrypoint", "EntryPointRuntime"),
    "sentence_transformers": ("workers.runtimes.sentence_transformers_runtime", "SentenceTransformersRuntime"),
    "causal_lm": ("workers.runtimes.causal_lm", "CausalLMRuntime"),
}


def create(name: str) -> Runtime:
    if name not in IMPLEMENTATIONS:
        raise UnknownRuntime(f"runtime {name!r} does not exist (runtimes: {', '.join(IMPLEMENTATIONS)})")
    optional.require(name)
    module, cls = IMPLEMENTATIONS[name]
    runtime: Runtime = getattr(importlib.import_module(module), cls)()
    return runtime
