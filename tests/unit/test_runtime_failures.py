"""A runtime library's exception, named: corrupt artifact, out of memory, or a missing package.

The table drives ``workers.runtimes.failures.classify`` with the exceptions the libraries raise (look-alikes where
the real type cannot be built outside its library); the runtime tests check that every runtime's load goes through
it, with the library's exception chained as the cause.
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest

from app import errors
from tests.unit.test_runtimes import fake_model_dir
from workers.runtimes import archive, create
from workers.runtimes.failures import classify, translated

HERE = __name__


class RuntimeException(RuntimeError):
    """Named like onnxruntime.capi.onnxruntime_pybind11_state.RuntimeException."""


class Fail(RuntimeError):
    """Named like onnxruntime's Fail."""


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, for machines without torch."""


class BadZipFile(Exception):
    """Named like zipfile.BadZipFile."""


CASES = [
    # out of memory, by type
    (MemoryError(), errors.OutOfMemory),
    (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), errors.OutOfMemory),
    # out of memory, by message (ONNX Runtime, CUDA, cuBLAS, the host)
    (RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : std::bad_alloc"), errors.OutOfMemory),
    (Fail("Failed to allocate memory for requested buffer of size 4194304"), errors.OutOfMemory),
    (RuntimeError("CUDA error: out of memory"), errors.OutOfMemory),
    (RuntimeError("CUDA failure 2: cudaErrorMemoryAllocation ; GPU=0"), errors.OutOfMemory),
    (RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"), errors.OutOfMemory),
    (OSError(errno.ENOMEM, "Cannot allocate memory"), errors.OutOfMemory),
    # a package that is not there
    (ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime"), errors.MissingDependency),
    (ImportError("cannot import name 'SentenceTransformer'", name="sentence_transformers"), errors.MissingDependency),
    # anything else: the artifact
    (Fail("[ONNXRuntimeError] : 1 : FAIL : Load model failed:Protobuf parsing failed."), errors.CorruptArtifact),
    (RuntimeError("PytorchStreamReader failed reading zip archive"), errors.CorruptArtifact),
    (BadZipFile("File is not a zip file"), errors.CorruptArtifact),
    (ValueError(), errors.CorruptArtifact),
]


@pytest.mark.parametrize(("exc", "expected"), CASES, ids=lambda v: type(v).__name__ if isinstance(v, Exception) else "")
def test_library_exceptions_are_classified(exc, expected):
    err = classify(exc, "cannot load m.onnx")
    assert type(err) is expected
    assert err.message.startswith("cannot load m.onnx: ")
    assert type(exc).__name__ in err.message  # the library's type stays visible to the operator


def test_missing_dependency_is_still_an_unknown_runtime_and_names_the_module():
    err = classify(ModuleNotFoundError("No module named 'skops'", name="skops"), "skops cannot start")
    assert isinstance(err, errors.UnknownRuntime)
    assert "'skops'" in err.message


def test_the_default_applies_only_to_what_is_neither_memory_nor_import():
    model_error = errors.ModelExecutionError
    assert type(classify(ZeroDivisionError("x"), "model raised", model_error)) is errors.ModelExecutionError
    assert type(classify(MemoryError(), "model raised", model_error)) is errors.OutOfMemory


def test_a_maas_error_keeps_its_code():
    err = errors.UntrustedArtifact("refused")
    assert classify(err, "cannot load") is err


def test_translated_chains_the_library_exception_as_the_cause():
    original = RuntimeException("std::bad_alloc")
    with pytest.raises(errors.OutOfMemory) as info, translated("ONNX Runtime cannot load m.onnx"):
        raise original
    assert info.value.__cause__ is original


def test_translated_lets_a_maas_error_through_untouched():
    err = errors.InvalidInput("bad")
    with pytest.raises(errors.InvalidInput) as info, translated("model raised", errors.ModelExecutionError):
        raise err
    assert info.value is err and info.value.__cause__ is None


# --- every runtime's load goes through the classification ----------------------------------------------------------
def load(runtime: str, artifact: Path) -> None:
    create(runtime).load(artifact, use_gpu=False)


def test_onnx_out_of_memory_is_not_a_corrupt_artifact(monkeypatch, tmp_path):
    ort = pytest.importorskip("onnxruntime")

    def no_room(*args, **kwargs):
        raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory")

    monkeypatch.setattr(ort, "InferenceSession", no_room)
    with pytest.raises(errors.OutOfMemory, match="ONNX Runtime cannot load m.onnx: out of memory") as info:
        load("onnx", tmp_path / "m.onnx")
    assert isinstance(info.value.__cause__, RuntimeException)


def test_onnx_without_onnxruntime_is_a_missing_dependency(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    monkeypatch.setattr("workers.runtimes.optional.missing", lambda runtime: [])
    with pytest.raises(errors.MissingDependency, match="'onnxruntime'"):
        load("onnx", tmp_path / "m.onnx")


def test_torchscript_cuda_out_of_memory(monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")

    def no_room(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(torch.jit, "load", no_room)
    with pytest.raises(errors.OutOfMemory, match="PyTorch cannot load m.pt as TorchScript: out of memory"):
        load("torchscript", tmp_path / "m.pt")


def test_skops_out_of_memory(monkeypatch, tmp_path):
    sio = pytest.importorskip("skops.io")
    monkeypatch.setattr(sio, "get_untrusted_types", lambda **kwargs: [])

    def no_room(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(sio, "load", no_room)
    with pytest.raises(errors.OutOfMemory, match="skops cannot load m.skops: out of memory"):
        load("skops", tmp_path / "m.skops")


def greedy_factory():
    raise MemoryError("the factory asked for too much")


def test_entry_point_factory_out_of_memory_and_a_missing_module(monkeypatch, tmp_path):
    monkeypatch.setenv("MAAS_ENTRYPOINT_ALLOW", HERE)
    (tmp_path / "ep.json").write_text(json.dumps({"entrypoint": f"{HERE}:greedy_factory", "factory": True}))
    with pytest.raises(errors.OutOfMemory, match="greedy_factory raised: out of memory"):
        load("entrypoint", tmp_path / "ep.json")
    (tmp_path / "ep.json").write_text(json.dumps({"entrypoint": f"{HERE}.not_installed:f"}))
    with pytest.raises(errors.MissingDependency, match=f"cannot import {HERE}.not_installed"):
        load("entrypoint", tmp_path / "ep.json")


def test_sentence_transformers_out_of_memory(monkeypatch, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    torch = pytest.importorskip("torch")
    model = fake_model_dir(tmp_path / "m")

    def no_room(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 90.00 MiB")

    monkeypatch.setattr(st, "SentenceTransformer", no_room)
    with pytest.raises(errors.OutOfMemory, match="sentence-transformers cannot load m.tar: out of memory"):
        load("sentence_transformers", archive.pack(model, tmp_path / "m.tar"))
