"""Which optional packages each runtime needs, checked without importing them.

Heavy runtimes (PyTorch, skops, sentence-transformers) are extras. A worker or registry without one must say which
package is missing, by name, instead of failing with an ImportError deep in a load. ``find_spec`` locates a package
without executing it, so the check is safe before the worker pins its device (importing torch may touch CUDA).
"""

from __future__ import annotations

import importlib.util

from app.errors import MissingDependency

#: runtime -> (import name, pip requirement) of every optional package it needs.
NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "onnx": (("onnxruntime", "onnxruntime"),),
    "torchscript": (("torch", "torch==2.13.0"),),
    "skops": (("skops", "skops"), ("sklearn", "scikit-learn")),
    "entrypoint": (),
    "sentence_transformers": (("torch", "torch==2.13.0"), ("sentence_transformers", "sentence-transformers")),
    "causal_lm": (("torch", "torch==2.13.0"), ("transformers", "transformers")),
}


def missing(runtime: str) -> list[str]:
    """pip requirements of ``runtime`` that are not installed here."""
    return [pip for module, pip in NEEDS.get(runtime, ()) if importlib.util.find_spec(module) is None]


def require(runtime: str) -> None:
    """Raise MissingDependency (an UnknownRuntime) naming the missing packages, if any."""
    absent = missing(runtime)
    if absent:
        raise MissingDependency(
            f"runtime {runtime!r} needs {', '.join(absent)}, not installed here (pip install {' '.join(absent)})"
        )
