"""The Open Inference Protocol (KServe v2 / Triton HTTP) on the wire, converted to and from the fleet's tensors.

Pure: bytes in, bytes out, numpy in between; no I/O. The fleet's own tensors travel as ``raw`` (little-endian
bytes in base64) or ``data`` lists (:mod:`app.signature`); an OIP request carries ``data`` (flat or nested) or,
with the binary tensor data extension, bytes after the JSON header. For every numeric datatype the extension's
layout is exactly ``raw`` decoded, so binary inputs become ``raw`` with one base64 call and JSON ``data`` is
checked element by element (numbers for numbers, integers for integers, booleans for BOOL, strings for BYTES)
before it is packed, so a wrong value is a 400 here rather than a coercion in a worker.

Scheduling knobs ride in the request's ``parameters``:

- ``priority`` (Triton's): 0 or absent = the policy decides; 1 is the highest; level = min(priority - 1, 9).
- ``timeout`` (Triton's, microseconds) and ``deadline_ms`` (ours): work not started by then is never executed
  and the request ends with DEADLINE_EXCEEDED (504). When both are given the earlier one wins.
- ``class``: ``interactive`` (default) or ``batch``.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from app.errors import InvalidInput
from app.signature import DATATYPES, TensorSpec, decode_tensor

#: Header that carries the JSON part's length when binary tensors follow it (the binary data extension).
HEADER_LENGTH = "inference-header-content-length"
#: Highest priority level of the fleet's scale (0 highest .. 9 lowest).
LOWEST_LEVEL = 9

_INTEGER_KINDS = "iu"


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: follow the request's binary_data_output


@dataclass
class InferRequest:
    """One OIP inference request, its tensors already in the fleet's form."""

    id: str | None
    inputs: list[dict[str, Any]]
    outputs: list[RequestedOutput] | None  # None: every output
    binary_outputs: bool = False
    level: int | None = None  # our 0-9 priority, None: the policy decides
    deadline_s: float | None = None
    request_class: str = "interactive"
    parameters: dict[str, Any] = field(default_factory=dict)


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message)


def _json_part(body: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    if header_length is None:
        json_bytes, rest = body, memoryview(b"")
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise _bad(f"Inference-Header-Content-Length {header_length!r} is not a number") from None
        if not 0 < n <= len(body):
            raise _bad(f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes")
        json_bytes, rest = body[:n], memoryview(body)[n:]
    try:
        return orjson.loads(json_bytes), rest
    except orjson.JSONDecodeError as exc:
        raise _bad(f"the request's JSON ({len(json_bytes)} bytes) is not valid: {exc}") from None


def _shape(name: str, raw: object) -> list[int]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise _bad(f"input {name!r}: shape must be a list of non-negative integers, got {raw!r}")
    return raw


def _count(shape: Sequence[int]) -> int:
    return int(np.prod(shape)) if shape else 1


def _array_from_data(name: str, datatype: str, data: object, shape: list[int]) -> np.ndarray:
    """Nested or flat JSON data -> a checked numpy array of the datatype (no silent coercion)."""
    if not isinstance(data, list):
        raise _bad(f"input {name!r}: data must be a list, got {type(data).__name__}")
    if datatype == "BYTES":
        flat = _flatten(name, data)
        if not all(isinstance(x, str) for x in flat):
            raise _bad(f"input {name!r}: BYTES data must be strings")
        array = np.asarray(flat, dtype=object)
    else:
        try:
            array = np.asarray(data)
        except ValueError as exc:  # ragged nesting
            raise _bad(f"input {name!r}: data is not a regular array ({exc})") from None
        if array.size:
            _check_kind(name, datatype, array)
        array = array.reshape(-1)
        if datatype in ("FP16", "FP32", "FP64", "BOOL"):
            array = array.astype(DATATYPES[datatype])
        else:
            info = np.iinfo(DATATYPES[datatype])
            if array.size and (array.min() < info.min or array.max() > info.max):
                raise _bad(f"input {name!r}: a value is outside the range of {datatype}")
            array = array.astype(DATATYPES[datatype])
    if array.size != _count(shape):
        raise _bad(f"input {name!r}: shape {shape} needs {_count(shape)} values, data has {array.size}")
    return array.reshape(shape)


def _flatten(name: str, data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _check_kind(name: str, datatype: str, array: np.ndarray) -> None:
    kind = array.dtype.kind
    if datatype == "BOOL":
        ok = kind == "b"
    elif datatype.startswith(("INT", "UINT")):
        ok = kind in _INTEGER_KINDS
    else:  # FP16/32/64: JSON integers are numbers too
        ok = kind in "iuf"
    if not ok:
        want = {"BOOL": "true/false"}.get(datatype, "integers" if "INT" in datatype else "numbers")
        raise _bad(f"input {name!r}: {datatype} data must be {want}; got values of numpy kind {array.dtype}")


def _bytes_elements(name: str, buffer: memoryview, count: int) -> list[str]:
    """The binary extension's BYTES layout: each element a 4-byte little-endian length, then its bytes."""
    out, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(buffer):
            raise _bad(f"input {name!r}: binary BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + length > len(buffer):
            raise _bad(f"input {name!r}: binary BYTES element of {length} bytes runs past its data")
        try:
            out.append(bytes(buffer[offset : offset + length]).decode("utf-8"))
        except UnicodeDecodeError:
            raise _bad(f"input {name!r}: this fleet's BYTES tensors hold UTF-8 text; an element is not") from None
        offset += length
    if offset != len(buffer):
        raise _bad(f"input {name!r}: {len(buffer) - offset} bytes left after {count} BYTES elements")
    return out


def _input(raw: object, binary: memoryview, offset: int) -> tuple[dict[str, Any], int]:
    """One request input -> (the fleet's tensor, bytes of the binary part it used)."""
    if not isinstance(raw, dict):
        raise _bad(f"each input must be an object, got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _bad("each input needs a name")
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise _bad(f"input {name!r}: unknown datatype {datatype!r} (one of {', '.join(DATATYPES)})")
    shape = _shape(name, raw.get("shape"))
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad(f"input {name!r}: parameters must be an object")
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise _bad(f"input {name!r}: needs data, or parameters.binary_data_size with binary data")
        array = _array_from_data(name, datatype, raw["data"], shape)
        return _tensor(name, datatype, shape, array), 0
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer")
    if offset + size > len(binary):
        raise _bad(f"input {name!r}: binary_data_size {size} runs past the {len(binary) - offset} bytes left")
    chunk = binary[offset : offset + size]
    if datatype == "BYTES":
        values = _bytes_elements(name, chunk, _count(shape))
        return {"name": name, "shape": shape, "datatype": datatype, "data": values}, size
    want = _count(shape) * DATATYPES[datatype].itemsize
    if size != want:
        raise _bad(f"input {name!r}: shape {shape} of {datatype} needs {want} bytes, binary_data_size is {size}")
    return {"name": name, "shape": shape, "datatype": datatype, "raw": base64.b64encode(chunk).decode("ascii")}, size


def _tensor(name: str, datatype: str, shape: list[int], array: np.ndarray) -> dict[str, Any]:
    if datatype == "BYTES":
        return {"name": name, "shape": shape, "datatype": datatype, "data": [str(x) for x in array.reshape(-1)]}
    little = array.astype(DATATYPES[datatype].newbyteorder("<"), copy=False)
    return {"name": name, "shape": shape, "datatype": datatype, "raw": base64.b64encode(little.tobytes()).decode()}


def _level(priority: object) -> int | None:
    if priority is None or priority == 0:
        return None
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
        raise _bad(f"parameters.priority {priority!r} must be a non-negative integer (1 highest, 0 = default)")
    return min(priority - 1, LOWEST_LEVEL)


def _deadline_s(params: Mapping[str, Any]) -> float | None:
    found = []
    for key, scale in (("timeout", 1e-6), ("deadline_ms", 1e-3)):
        value = params.get(key)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise _bad(f"parameters.{key} {value!r} must be a positive number")
        found.append(value * scale)
    return min(found) if found else None


def _outputs(raw: object) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _bad("outputs must be a list")
    out = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _bad("each requested output needs a name")
        params = item.get("parameters") or {}
        binary = params.get("binary_data") if isinstance(params, dict) else None
        out.append(RequestedOutput(item["name"], None if binary is None else bool(binary)))
    return out


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """An OIP request body (JSON, or JSON then binary tensors) -> InferRequest; InvalidInput names the fault."""
    doc, binary = _json_part(body, header_length)
    if not isinstance(doc, dict):
        raise _bad("the request must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("the request needs a non-empty list of inputs")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("id must be a string")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad("parameters must be an object")
    tensors, offset = [], 0
    for raw in inputs:
        tensor, used = _input(raw, binary, offset)
        tensors.append(tensor)
        offset += used
    if offset != len(binary):
        raise _bad(f"{len(binary) - offset} bytes of binary data follow the inputs that no input claims")
    request_class = params.get("class", "interactive")
    if request_class not in ("interactive", "batch"):
        raise _bad(f"parameters.class {request_class!r} must be interactive or batch")
    return InferRequest(
        id=request_id,
        inputs=tensors,
        outputs=_outputs(doc.get("outputs")),
        binary_outputs=bool(params.get("binary_data_output", False)),
        level=_level(params.get("priority")),
        deadline_s=_deadline_s(params),
        request_class=request_class,
        parameters=params,
    )


def check_outputs(requested: list[RequestedOutput] | None, outputs: Sequence[TensorSpec]) -> None:
    if requested is None:
        return
    known = {s.name for s in outputs}
    unknown = [r.name for r in requested if r.name not in known]
    if outputs and unknown:
        raise _bad(f"unknown output(s) {unknown}; the model has {sorted(known)}")


def _bytes_payload(values: Sequence[str]) -> bytes:
    parts = []
    for value in values:
        encoded = value.encode("utf-8")
        parts.append(struct.pack("<I", len(encoded)))
        parts.append(encoded)
    return b"".join(parts)


def build_response(request: InferRequest, answer: Mapping[str, Any]) -> tuple[bytes, int | None]:
    """The worker's answer -> (body, JSON header length when binary outputs follow it, else None)."""
    wanted = {r.name: r for r in request.outputs} if request.outputs is not None else None
    outputs, binary_parts = [], []
    for tensor in answer["outputs"]:
        name = tensor["name"]
        if wanted is not None and name not in wanted:
            continue
        binary = request.binary_outputs
        if wanted is not None and wanted[name].binary is not None:
            binary = bool(wanted[name].binary)
        out: dict[str, Any] = {"name": name, "datatype": tensor["datatype"], "shape": tensor["shape"]}
        if binary:
            if tensor["datatype"] == "BYTES":
                payload = _bytes_payload(tensor["data"])
            elif "raw" in tensor:
                payload = base64.b64decode(tensor["raw"])
            else:
                payload = decode_tensor(tensor).astype(DATATYPES[tensor["datatype"]].newbyteorder("<")).tobytes()
            out["parameters"] = {"binary_data_size": len(payload)}
            binary_parts.append(payload)
        else:
            out["data"] = tensor["data"] if "data" in tensor else decode_tensor(tensor).reshape(-1)
        outputs.append(out)
    doc: dict[str, Any] = {
        "model_name": answer["model_name"],
        "model_version": str(answer["model_version"]),
        "outputs": outputs,
        "parameters": answer.get("parameters", {}),
    }
    if request.id is not None:
        doc["id"] = request.id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary_parts:
        return head, None
    return head + b"".join(binary_parts), len(head)


#: Platform names as Triton reports them for its backends; ours where Triton has none (information only).
PLATFORMS = {
    "onnx": "onnxruntime_onnx",
    "torchscript": "pytorch_libtorch",
    "skops": "sklearn_skops",
    "entrypoint": "python_entrypoint",
    "sentence_transformers": "sentence_transformers_tar",
}


def model_metadata(name: str, versions: Sequence[int], runtime: str, inputs: Any, outputs: Any) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORMS.get(runtime, runtime),
        "inputs": [{"name": t["name"], "datatype": t["datatype"], "shape": list(t["shape"])} for t in inputs],
        "outputs": [{"name": t["name"], "datatype": t["datatype"], "shape": list(t["shape"])} for t in outputs],
    }
