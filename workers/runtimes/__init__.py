"""Runtimes by name. A version's ``runtime`` column picks one; an unknown name is a clear error."""

from __future__ import annotations

from app.errors import UnknownRuntime
from workers.runtimes.base import Runtime


def create(name: str) -> Runtime:
    if name == "onnx":
        from workers.runtimes.onnx import OnnxRuntime

        return OnnxRuntime()
    raise UnknownRuntime(f"runtime {name!r} is not installed on this worker (installed: onnx)")
