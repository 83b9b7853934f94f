"""Read an ONNX file's input and output signature with the ``onnx`` package (no runtime, no device)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from app.errors import CorruptArtifact

# ONNX TensorProto element types -> Open Inference Protocol datatypes.
_ELEM = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
}


def _specs(values: Iterable[Any]) -> list[dict[str, Any]]:
    """OIP specs of onnx ValueInfoProtos (tensors only)."""
    out = []
    for value in values:
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            continue  # sequence/map outputs (e.g. ZipMap) are not tensors; they are not served
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim]
        out.append({"name": value.name, "datatype": _ELEM.get(tensor.elem_type, "BYTES"), "shape": dims})
    return out


def read_signature(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError and others for a bad file
        raise CorruptArtifact(f"{path.name} is not a valid ONNX model: {str(exc).splitlines()[0][:200]}") from exc
    initializers = {i.name for i in model.graph.initializer}
    inputs = _specs(v for v in model.graph.input if v.name not in initializers)
    return inputs, _specs(model.graph.output)
