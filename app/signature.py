"""Tensor signatures and Open Inference Protocol (OIP) tensors, validated without touching a runtime.

A signature is a list of tensor specs ``{"name", "datatype", "shape"}`` where ``-1`` in a shape is a variable
dimension. Requests carry OIP tensors ``{"name", "shape", "datatype", "data"}`` (data flattened, row-major), so an
HTTP front door speaking the KServe v2 protocol can map onto them later. Pure: numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import InvalidInput, ModelExecutionError

#: OIP datatype names and the numpy dtypes they travel as.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_DTYPE = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a variable dimension

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TensorSpec:
        try:
            name, datatype, shape = str(raw["name"]), str(raw["datatype"]).upper(), tuple(int(d) for d in raw["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"tensor spec {raw!r} needs name, datatype and an integer shape ({exc})") from None
        if datatype not in DATATYPES:
            raise InvalidInput(f"tensor spec {name!r}: unknown datatype {datatype!r} (one of {', '.join(DATATYPES)})")
        if any(d < -1 or d == 0 for d in shape):
            raise InvalidInput(f"tensor spec {name!r}: shape {list(shape)} may hold only positive sizes and -1")
        return cls(name, datatype, shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )


def parse_signature(raw: Iterable[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
    specs = tuple(TensorSpec.from_dict(r) for r in raw)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"signature repeats a tensor name: {names}")
    return specs


def datatype_of(array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _BY_DTYPE[array.dtype]
    except KeyError:
        raise InvalidInput(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype") from None


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """Numpy array -> OIP tensor dict (JSON-safe)."""
    array = np.asarray(array)
    datatype = datatype_of(array)
    flat = array.reshape(-1)
    data = [_text(name, x) for x in flat] if datatype == "BYTES" else flat.tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def _text(name: str, value: object) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ModelExecutionError(f"tensor {name!r}: BYTES value is not UTF-8 text") from None
    if isinstance(value, str):
        return value
    raise ModelExecutionError(f"tensor {name!r}: BYTES value of type {type(value).__name__} is not text")


def decode_tensor(tensor: Mapping[str, Any]) -> np.ndarray:
    """OIP tensor dict -> numpy array; raise InvalidInput if its parts disagree."""
    try:
        name, shape, datatype, data = tensor["name"], list(tensor["shape"]), str(tensor["datatype"]), tensor["data"]
    except (KeyError, TypeError):
        raise InvalidInput(f"a tensor needs name, shape, datatype and data; got keys {sorted(tensor)}") from None
    if datatype not in DATATYPES:
        raise InvalidInput(f"tensor {name!r}: unknown datatype {datatype!r}")
    count = int(np.prod(shape)) if shape else 1
    if not isinstance(data, list) or len(data) != count:
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise InvalidInput(f"tensor {name!r}: shape {shape} needs {count} values, data has {got}")
    if datatype == "BYTES" and not all(isinstance(x, str) for x in data):
        raise InvalidInput(f"tensor {name!r}: BYTES data must be strings")
    try:
        return np.asarray(data, dtype=DATATYPES[datatype]).reshape(shape)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"tensor {name!r}: data is not {datatype} ({exc})") from None


def validate_inputs(specs: Sequence[TensorSpec], tensors: Sequence[Mapping[str, Any]]) -> None:
    """Check request tensors against a signature: every name present once, datatype and shape matching."""
    by_name = {s.name: s for s in specs}
    seen: set[str] = set()
    for tensor in tensors:
        name = tensor.get("name") if isinstance(tensor, Mapping) else None
        spec = by_name.get(name)  # type: ignore[arg-type]
        if spec is None:
            raise InvalidInput(f"unexpected input tensor {name!r}; the model takes {sorted(by_name)}")
        if name in seen:
            raise InvalidInput(f"input tensor {name!r} given twice")
        seen.add(name)
        if str(tensor.get("datatype")) != spec.datatype:
            raise InvalidInput(
                f"input {name!r}: datatype {tensor.get('datatype')!r}, the model expects {spec.datatype}"
            )
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not spec.accepts_shape(shape):
            raise InvalidInput(f"input {name!r}: shape {shape}, the model expects {list(spec.shape)} (-1 = any)")
        data, count = tensor.get("data"), int(np.prod(shape)) if shape else 1
        if not isinstance(data, list) or len(data) != count:
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise InvalidInput(f"tensor {name!r}: shape {shape} needs {count} values, data has {got}")
    missing = sorted(set(by_name) - seen)
    if missing:
        raise InvalidInput(f"missing input tensor(s) {missing}")


def rows_of(tensors: Sequence[Mapping[str, Any]]) -> int:
    """Rows of the first tensor (its leading dimension): the size service time is learned against."""
    shape = tensors[0].get("shape") if tensors else None
    return int(shape[0]) if shape else 1
