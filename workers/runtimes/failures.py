"""What a runtime's own exception means, as one typed error every runtime raises the same way.

A runtime library (ONNX Runtime, PyTorch, skops, sentence-transformers, an entry point's package) raises its own
exception types, and an operator needs to know which of three things went wrong: the artifact cannot be parsed
(a new artifact is needed), the device or host ran out of memory (place it elsewhere, or free memory), or a
package is missing on this worker (install it). ``classify`` tells them apart by type and message, without
importing any of those libraries; ``translated`` wraps a block so that whatever it raises leaves as a MaasError
with the original chained as its cause.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from app.errors import CorruptArtifact, MaasError, MissingDependency, OutOfMemory

#: Exception type names that always mean out of memory (torch.cuda.OutOfMemoryError, onnxruntime's EP errors...).
OOM_TYPES = frozenset({"MemoryError", "OutOfMemoryError", "OutOfMemory"})
#: Lower-case message fragments by which CUDA, cuBLAS, cuDNN, PyTorch and ONNX Runtime report an allocation failure.
OOM_MESSAGES = (
    "out of memory",
    "bad_alloc",
    "failed to allocate",
    "cudaerrormemoryallocation",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cuda_error_out_of_memory",
    "cannot allocate memory",
)
#: Characters of the library's message kept in ours; the full message stays on the chained cause.
DETAIL_CHARS = 200


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` (or a type it derives from) reports an allocation failure."""
    if any(cls.__name__ in OOM_TYPES for cls in type(exc).__mro__):
        return True
    text = str(exc).lower()
    return any(fragment in text for fragment in OOM_MESSAGES)


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, shortened; the full message stays on the chained cause."""
    text = str(exc).strip()
    first = text.splitlines()[0][:DETAIL_CHARS] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def classify(exc: BaseException, what: str, default: type[MaasError] = CorruptArtifact) -> MaasError:
    """The typed error for ``exc``, raised while doing ``what`` (e.g. "ONNX Runtime cannot load m.onnx").

    A MaasError is returned unchanged: whoever raised it already chose its code. Out of memory becomes
    OutOfMemory, a failed import MissingDependency, and anything else ``default`` (CorruptArtifact for a load).
    """
    if isinstance(exc, MaasError):
        return exc
    if is_out_of_memory(exc):
        return OutOfMemory(f"{what}: out of memory ({describe(exc)})")
    if isinstance(exc, ImportError):
        module = f" (module {exc.name!r} cannot be imported on this worker)" if exc.name else ""
        return MissingDependency(f"{what}: {describe(exc)}{module}")
    return default(f"{what}: {describe(exc)}")


@contextmanager
def translated(what: str, default: type[MaasError] = CorruptArtifact) -> Iterator[None]:
    """Raise whatever the block raises as ``classify`` names it, with the original exception as its cause."""
    try:
        yield
    except MaasError:
        raise
    except Exception as exc:
        raise classify(exc, what, default) from exc
