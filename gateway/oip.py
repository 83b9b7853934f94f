"""The Open Inference Protocol (KServe v2 / Triton HTTP) on the wire, converted to and from the fleet's tensors.

Pure: bytes in, bytes out, numpy in between; no I/O. The fleet's own tensors travel as ``raw`` (little-endian
bytes in base64) or ``data`` lists (:mod:`app.signature`); an OIP request carries ``data`` (flat or nested) or,
with the binary tensor data extension, bytes after the JSON header. For every numeric datatype the extension's
layout is exactly ``raw`` decoded, so binary inputs become ``raw`` with one base64 call and JSON ``data`` is
checked element by element (numbers for numbers, integers in range for integers, booleans for BOOL, strings for
BYTES; nesting regular, the count matching the shape) before it is packed, so a wrong value is a 400 here rather
than a coercion in a worker. Every refusal is an InvalidInput whose message names the input and the fault.

Scheduling knobs ride in the request's ``parameters``:

- ``priority`` (Triton's): 0 or absent = the policy decides; 1 is the highest; level = min(priority - 1, 9).
- ``timeout`` (Triton's, microseconds; 0 = none, as in Triton) and ``deadline_ms`` (ours): work not started by
  then is never executed and the request ends with DEADLINE_EXCEEDED (504). When both are given the earlier wins.
- ``class``: ``interactive`` (default) or ``batch``.
"""

from __future__ import annotations

import base64
import itertools
import math
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
#: Digits an Inference-Header-Content-Length may have (far more than any body the gateway accepts).
_MAX_LENGTH_DIGITS = 18


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


def _describe(value: object) -> str:
    """A JSON value as a person reads it in an error message (short)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 20 else value[:20] + "..."
        return f"the string {shown!r}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _json_part(body: bytes, header_length: str | None) -> tuple[Any, memoryview | None]:
    """The JSON header and the binary part after it (None without the binary data extension's header)."""
    binary: memoryview | None = None
    json_bytes = body
    if header_length is not None:
        text = header_length.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > _MAX_LENGTH_DIGITS:
            shown = header_length if len(header_length) <= 30 else header_length[:30] + "..."
            raise _bad(f"Inference-Header-Content-Length {shown!r} must be a positive integer number of bytes")
        n = int(text)
        if not 0 < n <= len(body):
            raise _bad(f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes")
        json_bytes, binary = body[:n], memoryview(body)[n:]
    try:
        return orjson.loads(json_bytes), binary
    except orjson.JSONDecodeError as exc:
        raise _bad(f"the request body is not valid JSON: {exc}") from None


def _shape(name: str, raw: object) -> list[int]:
    if raw is None:
        raise _bad(f"input {name!r}: needs a shape (a list of non-negative integers)")
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise _bad(f"input {name!r}: shape must be a list of non-negative integers, got {raw!r}")
    return raw


def _count(shape: Sequence[int]) -> int:
    return math.prod(shape)  # exact: a product of huge dimensions does not wrap around as numpy's would


def _leaves(name: str, data: list[Any]) -> tuple[list[Any], set[type]]:
    """Flat or regularly nested JSON lists -> (the values in row-major order, their Python types).

    Every list at one depth must have the same length and hold only lists or only values: ragged nesting is
    refused rather than guessed at. One pass over each depth; no recursion, so depth is bounded by the JSON
    parser's own limit and not by Python's stack."""
    level, depth = data, 0
    while True:
        types = set(map(type, level))
        if list not in types:
            return level, types
        if types != {list}:
            raise _bad(f"input {name!r}: data is ragged: at depth {depth} it mixes lists and values")
        lengths = sorted({len(item) for item in level})
        if len(lengths) > 1:
            raise _bad(f"input {name!r}: data is ragged: at depth {depth + 1} lists have lengths {lengths}")
        level = list(itertools.chain.from_iterable(level))
        depth += 1


#: What JSON ``data`` may hold for each kind of datatype, and how an error message says it.
_JSON_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "BOOL": ((bool,), "true or false"),
    "INT": ((int,), "integers"),
    "FP": ((int, float), "numbers"),
    "BYTES": ((str,), "strings"),
}


def _family(datatype: str) -> str:
    if datatype.startswith(("INT", "UINT")):
        return "INT"
    if datatype.startswith("FP"):
        return "FP"
    return datatype


def _array_from_data(name: str, datatype: str, data: object, shape: list[int]) -> np.ndarray:
    """Flat or nested JSON data -> a checked flat numpy array of the datatype (no silent coercion)."""
    if not isinstance(data, list):
        raise _bad(f"input {name!r}: data must be a list, got {_describe(data)}")
    flat, types = _leaves(name, data)
    allowed, want = _JSON_TYPES[_family(datatype)]
    if not types.issubset(allowed):
        index, value = next((i, v) for i, v in enumerate(flat) if type(v) not in allowed)
        raise _bad(f"input {name!r}: {datatype} data must be {want}; value {index} is {_describe(value)}")
    if len(flat) != _count(shape):
        raise _bad(f"input {name!r}: shape {shape} needs {_count(shape)} values, data has {len(flat)}")
    dtype = DATATYPES[datatype]
    if datatype == "BYTES":
        return np.asarray(flat, dtype=object)
    if _family(datatype) == "INT" and flat:
        info = np.iinfo(dtype)
        for value in (min(flat), max(flat)):  # Python integers: exact at any size
            if not info.min <= value <= info.max:
                raise _bad(f"input {name!r}: {value} is outside the range of {datatype} [{info.min}, {info.max}]")
    if _family(datatype) == "FP" and flat:
        wide = np.asarray(flat, dtype=np.float64)
        with np.errstate(over="ignore"):
            array = wide.astype(dtype)
        overflow = np.flatnonzero(np.isinf(array) & np.isfinite(wide))
        if overflow.size:
            value = flat[int(overflow[0])]
            raise _bad(f"input {name!r}: {value!r} is outside the range of {datatype}")
        return array
    return np.asarray(flat, dtype=dtype)


def _bytes_elements(name: str, buffer: memoryview, count: int) -> list[str]:
    """The binary extension's BYTES layout: each element a 4-byte little-endian length, then its bytes."""
    out: list[str] = []
    offset = 0
    for index in range(count):
        if offset + 4 > len(buffer):
            raise _bad(
                f"input {name!r}: binary BYTES data ends inside the length of element {index} "
                f"({count} elements expected, {len(buffer)} bytes given)"
            )
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + length > len(buffer):
            raise _bad(
                f"input {name!r}: binary BYTES element {index} of {length} bytes runs past the "
                f"{len(buffer) - offset} bytes left"
            )
        try:
            out.append(bytes(buffer[offset : offset + length]).decode("utf-8"))
        except UnicodeDecodeError:
            raise _bad(
                f"input {name!r}: BYTES element {index} is not UTF-8 text (this fleet's BYTES hold text)"
            ) from None
        offset += length
    if offset != len(buffer):
        raise _bad(f"input {name!r}: {len(buffer) - offset} bytes left in its binary data after {count} BYTES elements")
    return out


def _name(raw: object, position: int) -> str:
    if not isinstance(raw, dict):
        raise _bad(f"input #{position} must be an object, got {_describe(raw)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"input #{position} needs a name (a non-empty string), got {_describe(name)}")
    return name


def _input(raw: dict[str, Any], name: str, binary: memoryview | None, offset: int) -> tuple[dict[str, Any], int]:
    """One request input -> (the fleet's tensor, bytes of the binary part it used)."""
    datatype = raw.get("datatype")
    if datatype is None:
        raise _bad(f"input {name!r}: needs a datatype (one of {', '.join(DATATYPES)})")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
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
    if "data" in raw:
        raise _bad(f"input {name!r}: has both data and binary_data_size; send one")
    return _binary_input(name, datatype, shape, size, binary, offset)


def _binary_input(
    name: str, datatype: str, shape: list[int], size: object, binary: memoryview | None, offset: int
) -> tuple[dict[str, Any], int]:
    """An input whose values are ``size`` bytes of the binary part, from ``offset`` on."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad(f"input {name!r}: binary_data_size {size!r} must be a non-negative integer")
    if binary is None:
        raise _bad(
            f"input {name!r}: has parameters.binary_data_size but the request has no "
            "Inference-Header-Content-Length header, so no binary data"
        )
    if offset + size > len(binary):
        raise _bad(f"input {name!r}: binary_data_size {size} runs past the {len(binary) - offset} bytes left")
    chunk = binary[offset : offset + size]
    if datatype == "BYTES":
        values = _bytes_elements(name, chunk, _count(shape))
        return {"name": name, "shape": shape, "datatype": datatype, "data": values}, size
    want = _count(shape) * DATATYPES[datatype].itemsize
    if size != want:
        raise _bad(f"input {name!r}: shape {shape} of {datatype} needs {want} bytes, binary_data_size is {size}")
    if datatype == "BOOL" and size and int(np.frombuffer(chunk, dtype=np.uint8).max()) > 1:
        raise _bad(f"input {name!r}: binary BOOL data must be bytes of 0 or 1")
    return {"name": name, "shape": shape, "datatype": datatype, "raw": base64.b64encode(chunk).decode("ascii")}, size


def _tensor(name: str, datatype: str, shape: list[int], array: np.ndarray) -> dict[str, Any]:
    if datatype == "BYTES":
        return {"name": name, "shape": shape, "datatype": datatype, "data": [str(x) for x in array.reshape(-1)]}
    little = array.astype(DATATYPES[datatype].newbyteorder("<"), copy=False)
    return {"name": name, "shape": shape, "datatype": datatype, "raw": base64.b64encode(little.tobytes()).decode()}


def level_of(priority: object) -> int | None:
    if priority is None:
        return None
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
        raise _bad(f"parameters.priority {priority!r} must be a non-negative integer (1 highest, 0 = default)")
    return None if priority == 0 else min(priority - 1, LOWEST_LEVEL)


def deadline_s_of(params: Mapping[str, Any]) -> float | None:
    found = []
    for key, scale in (("timeout", 1e-6), ("deadline_ms", 1e-3)):
        value = params.get(key)
        if value is None or (key == "timeout" and value == 0 and not isinstance(value, bool)):
            continue  # Triton's timeout 0 is "no timeout"
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise _bad(f"parameters.{key} {value!r} must be a positive number")
        found.append(value * scale)
    return min(found) if found else None


def _flag(value: object, what: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise _bad(f"{what} {value!r} must be true or false")


def _outputs(raw: object) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _bad(f"outputs must be a list, got {_describe(raw)}")
    out = []
    for position, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise _bad(f"requested output #{position} needs a name (a non-empty string)")
        name = item["name"]
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise _bad(f"requested output {name!r}: parameters must be an object")
        out.append(RequestedOutput(name, _flag(params.get("binary_data"), f"output {name!r}: binary_data")))
    return out


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """An OIP request body (JSON, or JSON then binary tensors) -> InferRequest; InvalidInput names the fault."""
    doc, binary = _json_part(body, header_length)
    if not isinstance(doc, dict):
        raise _bad(f"the request must be a JSON object, got {_describe(doc)}")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("the request needs a non-empty list of inputs")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad(f"id must be a string, got {_describe(request_id)}")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad("parameters must be an object")
    tensors, offset, seen = [], 0, set()
    for position, raw in enumerate(inputs):
        name = _name(raw, position)
        if name in seen:
            raise _bad(f"input {name!r} is given twice")
        seen.add(name)
        tensor, used = _input(raw, name, binary, offset)
        tensors.append(tensor)
        offset += used
    if binary is not None and offset != len(binary):
        raise _bad(f"{len(binary) - offset} bytes of binary data follow the inputs that no input claims")
    request_class = params.get("class", "interactive")
    if request_class not in ("interactive", "batch"):
        raise _bad(f"parameters.class {request_class!r} must be interactive or batch")
    return InferRequest(
        id=request_id,
        inputs=tensors,
        outputs=_outputs(doc.get("outputs")),
        binary_outputs=bool(_flag(params.get("binary_data_output"), "parameters.binary_data_output")),
        level=level_of(params.get("priority")),
        deadline_s=deadline_s_of(params),
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
