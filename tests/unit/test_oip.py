"""gateway.oip, the Open Inference Protocol on the wire: every datatype in and out, the scheduling parameters, and
every malformed request refused with an InvalidInput that names the input and the fault."""

from __future__ import annotations

import ast
import struct
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from app.errors import InvalidInput
from app.signature import DATATYPES, TensorSpec, decode_tensor, encode_tensor
from gateway import oip

# Each datatype's values as a 2 x 2 nested list, extremes included.
_INTS = {t: np.iinfo(DATATYPES[t]) for t in DATATYPES if "INT" in t}
VALUES: dict[str, list[list[Any]]] = {
    "BOOL": [[True, False], [False, True]],
    **{t: [[int(i.min), int(i.max)], [0, 7]] for t, i in _INTS.items()},
    "FP16": [[0.5, -65504.0], [65504.0, 3]],
    "FP32": [[1.5, -3.0e38], [1e-30, 2]],
    "FP64": [[1e300, -2.5], [5e-324, 0]],
    "BYTES": [["a", "héllo"], ["", "日本語"]],
}
NUMERIC = [t for t in DATATYPES if t != "BYTES"]


def _flat(values: list[list[Any]]) -> list[Any]:
    return [v for row in values for v in row]


def _expected(datatype: str) -> np.ndarray:
    return np.array(VALUES[datatype], dtype=DATATYPES[datatype])


def _payload(datatype: str, values: list[list[Any]]) -> bytes:
    """The binary data extension's bytes for ``values``."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in _flat(values))
    return np.array(values, dtype=DATATYPES[datatype]).astype(DATATYPES[datatype].newbyteorder("<")).tobytes()


def _json(doc: Any) -> bytes:
    return orjson.dumps(doc)


def _one(datatype: str = "FP32", shape: Any = (2,), data: Any = (1.0, 2.0), **extra: Any) -> bytes:
    """A request of one input ``x``."""
    tensor: dict[str, Any] = {
        "name": "x",
        "datatype": datatype,
        "shape": list(shape) if isinstance(shape, tuple) else shape,
    }
    if data is not None:
        tensor["data"] = list(data) if isinstance(data, tuple) else data
    tensor.update(extra)
    return _json({"inputs": [tensor]})


def _binary(inputs: list[tuple[str, str, list[int], bytes]], tail: bytes = b"", **doc: Any) -> tuple[bytes, str]:
    """A binary-extension request: (body, Inference-Header-Content-Length)."""
    head = _json(
        {
            **doc,
            "inputs": [
                {"name": n, "datatype": t, "shape": s, "parameters": {"binary_data_size": len(p)}}
                for n, t, s, p in inputs
            ],
        }
    )
    return head + b"".join(p for *_, p in inputs) + tail, str(len(head))


def _decoded(request: oip.InferRequest, index: int = 0) -> np.ndarray:
    return decode_tensor(request.inputs[index])


def _refused(body: bytes, header: str | None = None) -> str:
    with pytest.raises(InvalidInput) as refused:
        oip.parse_infer(body, header)
    return refused.value.message


# --- every datatype in ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_json_data_of_every_datatype_flat_or_nested(datatype: str, nested: bool) -> None:
    data = VALUES[datatype] if nested else _flat(VALUES[datatype])
    request = oip.parse_infer(_one(datatype, [2, 2], data), None)
    tensor = request.inputs[0]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("x", datatype, [2, 2])
    if datatype == "BYTES":
        assert tensor["data"] == _flat(VALUES["BYTES"])
    else:
        assert "raw" in tensor  # numeric tensors travel as raw bytes
        np.testing.assert_array_equal(_decoded(request), _expected(datatype))


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_binary_data_of_every_datatype(datatype: str) -> None:
    body, header = _binary([("x", datatype, [2, 2], _payload(datatype, VALUES[datatype]))])
    request = oip.parse_infer(body, header)
    tensor = request.inputs[0]
    if datatype == "BYTES":
        assert tensor["data"] == _flat(VALUES["BYTES"])
    else:
        np.testing.assert_array_equal(_decoded(request), _expected(datatype))


def test_binary_and_json_inputs_mixed_in_one_request_each_take_their_own_bytes() -> None:
    a, b = _payload("INT16", [[1, -2], [3, 4]]), _payload("BYTES", [["p", "qq"]])
    head = _json(
        {
            "inputs": [
                {"name": "a", "datatype": "INT16", "shape": [4], "parameters": {"binary_data_size": len(a)}},
                {"name": "j", "datatype": "FP64", "shape": [1], "data": [0.25]},
                {"name": "b", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(b)}},
            ]
        }
    )
    request = oip.parse_infer(head + a + b, str(len(head)))
    assert _decoded(request, 0).tolist() == [1, -2, 3, 4]
    assert _decoded(request, 1).tolist() == [0.25]
    assert request.inputs[2]["data"] == ["p", "qq"]


@pytest.mark.parametrize(
    ("shape", "data"),
    [([], [3.5]), ([0], []), ([2, 0], [[], []]), ([1, 1, 1], [[[1]]])],
    ids=["scalar", "empty", "empty-rows", "deep"],
)
def test_scalar_and_empty_shapes(shape: list[int], data: list[Any]) -> None:
    request = oip.parse_infer(_one("FP32", shape, data), None)
    assert request.inputs[0]["shape"] == shape
    assert _decoded(request).size == int(np.prod(shape))


def test_a_shape_of_more_dimensions_than_numpy_has_is_parsed_not_a_crash() -> None:
    # The model's signature refuses the rank later (400); parsing must not reshape into a numpy error (500).
    assert oip.parse_infer(_one("FP32", [1] * 100, [1]), None).inputs[0]["shape"] == [1] * 100


def test_a_header_length_equal_to_the_body_means_no_binary_part() -> None:
    body = _one()
    assert _decoded(oip.parse_infer(body, str(len(body)))).tolist() == [1.0, 2.0]


# --- every datatype out -----------------------------------------------------------------------------------------------
def _answer(*tensors: dict[str, Any], version: int = 3) -> dict[str, Any]:
    return {"model_name": "m", "model_version": version, "outputs": list(tensors), "parameters": {"worker": "w"}}


def _read_response(content: bytes, header_length: int | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Our response as a client reads it: the JSON document and each output as numpy."""
    head = content if header_length is None else content[:header_length]
    doc = orjson.loads(head)
    binary = memoryview(content)[len(head) :]
    arrays, offset = {}, 0
    for out in doc["outputs"]:
        datatype = out["datatype"]
        if "data" in out:
            arrays[out["name"]] = np.array(out["data"], dtype=DATATYPES[datatype]).reshape(out["shape"])
            continue
        size = out["parameters"]["binary_data_size"]
        chunk = bytes(binary[offset : offset + size])
        offset += size
        if datatype == "BYTES":
            count = int(np.prod(out["shape"]))
            arrays[out["name"]] = np.array(oip._bytes_elements(out["name"], memoryview(chunk), count), dtype=object)
        else:
            little = np.frombuffer(chunk, dtype=DATATYPES[datatype].newbyteorder("<"))
            arrays[out["name"]] = little.astype(DATATYPES[datatype]).reshape(out["shape"])
    assert offset == len(binary)
    return doc, arrays


@pytest.mark.parametrize("raw", [True, False], ids=["answer-raw", "answer-lists"])
@pytest.mark.parametrize("binary", [False, True], ids=["json-out", "binary-out"])
@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_round_trips_through_build_response(datatype: str, binary: bool, raw: bool) -> None:
    body, header = _binary(
        [("x", datatype, [2, 2], _payload(datatype, VALUES[datatype]))],
        id="req-7",
        parameters={"binary_data_output": binary},
    )
    request = oip.parse_infer(body, header)
    echoed = decode_tensor(request.inputs[0])  # the worker's view of the input, answered as the output
    answer = _answer(encode_tensor("y", echoed, raw=raw))
    content, header_length = oip.build_response(request, answer)
    assert (header_length is not None) == binary
    doc, arrays = _read_response(content, header_length)
    assert doc["id"] == "req-7" and doc["model_name"] == "m" and doc["model_version"] == "3"
    assert doc["outputs"][0]["datatype"] == datatype and doc["outputs"][0]["shape"] == [2, 2]
    if datatype == "BYTES":
        assert arrays["y"].reshape(-1).tolist() == _flat(VALUES["BYTES"])
    else:
        np.testing.assert_array_equal(arrays["y"], _expected(datatype))


def test_requested_outputs_filter_and_choose_binary_per_output() -> None:
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}, {"name": "score"}],
    }
    request = oip.parse_infer(_json(doc), None)
    assert request.outputs == [oip.RequestedOutput("label", True), oip.RequestedOutput("score", None)]
    answer = _answer(
        encode_tensor("probabilities", np.zeros((1, 3), np.float32)),
        encode_tensor("label", np.array([2], np.int64)),
        encode_tensor("score", np.array([0.5], np.float64)),
    )
    content, header_length = oip.build_response(request, answer)
    out, arrays = _read_response(content, header_length)
    assert [o["name"] for o in out["outputs"]] == ["label", "score"]  # only those asked for
    assert "parameters" in out["outputs"][0] and out["outputs"][1]["data"] == [0.5]  # binary, then JSON
    assert arrays["label"].tolist() == [2]
    assert "id" not in out  # no id asked, none echoed


def test_binary_data_output_applies_to_outputs_not_asked_otherwise() -> None:
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
        "outputs": [{"name": "a", "parameters": {"binary_data": False}}, {"name": "b"}],
        "parameters": {"binary_data_output": True},
    }
    request = oip.parse_infer(_json(doc), None)
    answer = _answer(encode_tensor("a", np.array([1], np.int32)), encode_tensor("b", np.array([2], np.int32)))
    content, header_length = oip.build_response(request, answer)
    out, arrays = _read_response(content, header_length)
    assert out["outputs"][0]["data"] == [1] and "data" not in out["outputs"][1]
    assert arrays["b"].tolist() == [2]


def test_without_requested_outputs_every_output_is_returned_as_json() -> None:
    request = oip.parse_infer(_one(), None)
    answer = _answer(encode_tensor("a", np.array([1.5], np.float32)), encode_tensor("b", np.array(["t"])), version=12)
    content, header_length = oip.build_response(request, answer)
    assert header_length is None
    out = orjson.loads(content)
    assert out["model_version"] == "12" and out["parameters"] == {"worker": "w"}
    assert out["outputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [1], "data": [1.5]},
        {"name": "b", "datatype": "BYTES", "shape": [1], "data": ["t"]},
    ]


def test_check_outputs_refuses_an_output_the_model_does_not_have() -> None:
    specs = [TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 3))]
    oip.check_outputs(None, specs)
    oip.check_outputs([oip.RequestedOutput("label", None)], specs)
    with pytest.raises(
        InvalidInput, match=r"unknown output\(s\) \['nope'\]; the model has \['label', 'probabilities'\]"
    ):
        oip.check_outputs([oip.RequestedOutput("label", None), oip.RequestedOutput("nope", True)], specs)


def _numpy(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[s.encode() for s in row] for row in VALUES["BYTES"]], dtype=object)
    return _expected(datatype)


@pytest.mark.parametrize("binary", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_requests_as_nvidias_tritonclient_builds_them(datatype: str, binary: bool) -> None:
    http = pytest.importorskip("tritonclient.http")
    tensor = http.InferInput("x", [2, 2], datatype)
    tensor.set_data_from_numpy(_numpy(datatype), binary_data=binary)
    wanted = http.InferRequestedOutput("y", binary_data=False)
    body, json_size = http.InferenceServerClient.generate_request_body(
        [tensor], outputs=[wanted], request_id="tc-1", priority=3, timeout=250_000, parameters={"class": "batch"}
    )
    request = oip.parse_infer(body, None if json_size is None else str(json_size))
    assert (request.id, request.level, request.request_class) == ("tc-1", 2, "batch")
    assert request.deadline_s == pytest.approx(0.25)
    assert request.outputs == [oip.RequestedOutput("y", False)]
    if datatype == "BYTES":
        assert request.inputs[0]["data"] == _flat(VALUES["BYTES"])
    else:
        np.testing.assert_array_equal(_decoded(request), _expected(datatype))


@pytest.mark.parametrize("binary", [False, True], ids=["json-out", "binary-out"])
@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_responses_as_nvidias_tritonclient_reads_them(datatype: str, binary: bool) -> None:
    http = pytest.importorskip("tritonclient.http")
    request = oip.parse_infer(_one(), None)
    request.binary_outputs = binary
    array = _expected(datatype) if datatype != "BYTES" else np.array(VALUES["BYTES"], dtype=object)
    content, header_length = oip.build_response(request, _answer(encode_tensor("y", array)))
    result = http.InferenceServerClient.parse_response_body(content, header_length=header_length)
    got = result.as_numpy("y")
    if datatype == "BYTES":
        assert [v.decode() if isinstance(v, bytes) else v for v in got.reshape(-1)] == _flat(VALUES["BYTES"])
    else:
        assert got.dtype == DATATYPES[datatype]
        np.testing.assert_array_equal(got, _expected(datatype))


# --- parameters -------------------------------------------------------------------------------------------------------
def _with_params(**params: Any) -> oip.InferRequest:
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "parameters": params}
    return oip.parse_infer(_json(doc), None)


@pytest.mark.parametrize(
    ("params", "level"),
    [({}, None), ({"priority": 0}, None), ({"priority": 1}, 0), ({"priority": 2}, 1), ({"priority": 10}, 9)]
    + [({"priority": 11}, 9), ({"priority": 2**40}, 9)],
)
def test_priority_maps_onto_our_ten_levels(params: dict[str, Any], level: int | None) -> None:
    assert _with_params(**params).level == level


@pytest.mark.parametrize(
    ("params", "deadline_s"),
    [
        ({}, None),
        ({"timeout": 2_000_000}, 2.0),
        ({"timeout": 0}, None),  # Triton's "no timeout"
        ({"deadline_ms": 500}, 0.5),
        ({"deadline_ms": 0.5}, 0.0005),
        ({"timeout": 2_000_000, "deadline_ms": 500}, 0.5),
        ({"timeout": 100, "deadline_ms": 500}, 0.0001),
    ],
)
def test_timeout_and_deadline_ms_become_a_deadline_the_earlier_winning(params: dict[str, Any], deadline_s: Any) -> None:
    assert _with_params(**params).deadline_s == pytest.approx(deadline_s)


@pytest.mark.parametrize(("params", "cls"), [({}, "interactive"), ({"class": "batch"}, "batch")])
def test_request_class(params: dict[str, Any], cls: str) -> None:
    request = _with_params(**params)
    assert request.request_class == cls and request.parameters == params


@pytest.mark.parametrize(
    ("params", "fault"),
    [
        ({"priority": -1}, "parameters.priority -1 must be a non-negative integer"),
        ({"priority": "1"}, "parameters.priority '1' must be"),
        ({"priority": 1.5}, "parameters.priority 1.5 must be"),
        ({"priority": True}, "parameters.priority True must be"),
        ({"timeout": -5}, "parameters.timeout -5 must be a positive number"),
        ({"timeout": "5"}, "parameters.timeout '5' must be"),
        ({"timeout": False}, "parameters.timeout False must be"),
        ({"deadline_ms": 0}, "parameters.deadline_ms 0 must be a positive number"),
        ({"class": "bulk"}, "parameters.class 'bulk' must be interactive or batch"),
        ({"binary_data_output": "yes"}, "parameters.binary_data_output 'yes' must be true or false"),
    ],
)
def test_bad_parameters_are_refused(params: dict[str, Any], fault: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        _with_params(**params)
    assert fault in refused.value.message


# --- malformed: a value of the wrong kind for each datatype -----------------------------------------------------------
_WRONG: list[tuple[str, Any, str]] = [
    *[(t, "1.0", "the string '1.0'") for t in ("FP16", "FP32", "FP64")],
    *[(t, None, "null") for t in ("FP16", "FP32", "FP64")],
    ("FP32", True, "true"),
    ("FP32", {"v": 1}, "an object"),
    *[(t, 1.5, "the number 1.5") for t in _INTS],
    *[(t, "3", "the string '3'") for t in _INTS],
    *[(t, False, "false") for t in _INTS],
    ("INT64", 1.0, "the number 1.0"),
    ("BOOL", 1, "the number 1"),
    ("BOOL", 0, "the number 0"),
    ("BOOL", "true", "the string 'true'"),
    ("BYTES", 1, "the number 1"),
    ("BYTES", 2.5, "the number 2.5"),
    ("BYTES", True, "true"),
    ("BYTES", None, "null"),
]


@pytest.mark.parametrize(("datatype", "value", "shown"), _WRONG)
def test_a_value_of_the_wrong_kind_is_refused_never_coerced(datatype: str, value: Any, shown: str) -> None:
    good = _flat(VALUES[datatype])[0]
    message = _refused(_one(datatype, [3], [good, good, value]))
    assert message.startswith(f"input 'x': {datatype} data must be ")
    assert f"value 2 is {shown}" in message


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        *[(t, v) for t, i in _INTS.items() for v in (int(i.min) - 1, int(i.max) + 1) if t not in ("INT64", "UINT64")],
        ("UINT64", -1),
        ("INT64", 2**63),  # parsed as an unsigned 64-bit integer, still not an INT64
    ],
)
def test_an_integer_outside_its_datatype_is_refused(datatype: str, value: int) -> None:
    message = _refused(_one(datatype, [2], [0, value]))
    assert message.startswith(f"input 'x': {value} is outside the range of {datatype} [")


@pytest.mark.parametrize(("datatype", "value"), [("FP16", 70000.0), ("FP16", -1e5), ("FP32", 1e39), ("FP32", -4e38)])
def test_a_number_beyond_a_float_datatype_is_refused_rather_than_made_infinite(datatype: str, value: float) -> None:
    assert _refused(_one(datatype, [2], [0, value])) == f"input 'x': {value!r} is outside the range of {datatype}"


def test_huge_integers_for_float_datatypes_are_numbers() -> None:
    request = oip.parse_infer(_one("FP64", [2], [2**64 - 1, -(2**63)]), None)
    assert _decoded(request).tolist() == [float(2**64 - 1), float(-(2**63))]


# --- malformed: everything else ---------------------------------------------------------------------------------------
_X = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}


def _doc(**changes: Any) -> bytes:
    """The request of ``_X`` with the input's keys changed (None removes one)."""
    tensor = {k: v for k, v in {**_X, **changes}.items() if v is not None}
    return _json({"inputs": [tensor]})


_MALFORMED: list[tuple[str, bytes, str | None, str]] = [
    # (id, body, Inference-Header-Content-Length, what the message must say)
    ("count-short", _doc(shape=[3]), None, "input 'x': shape [3] needs 3 values, data has 2"),
    ("count-long", _doc(shape=[1]), None, "input 'x': shape [1] needs 1 values, data has 2"),
    ("count-nested", _doc(shape=[2, 2], data=[[1, 2]]), None, "input 'x': shape [2, 2] needs 4 values, data has 2"),
    ("bytes-count", _doc(datatype="BYTES", shape=[3], data=["a"]), None, "input 'x': shape [3] needs 3 values"),
    ("ragged", _doc(shape=[3], data=[[1, 2], [3]]), None, "input 'x': data is ragged: at depth 1 lists have lengths"),
    ("ragged-deep", _doc(shape=[3], data=[[[1], [2, 3]]]), None, "input 'x': data is ragged: at depth 2"),
    ("ragged-mixed", _doc(shape=[2], data=[1, [2]]), None, "input 'x': data is ragged: at depth 0 it mixes lists"),
    ("ragged-bytes", _doc(datatype="BYTES", shape=[3], data=[["a", "b"], ["c"]]), None, "input 'x': data is ragged"),
    ("shape-negative", _doc(shape=[-1]), None, "input 'x': shape must be a list of non-negative integers, got [-1]"),
    ("shape-float", _doc(shape=[2.0]), None, "input 'x': shape must be a list of non-negative integers, got [2.0]"),
    ("shape-string", _doc(shape=["2"]), None, "input 'x': shape must be a list of non-negative integers"),
    ("shape-bool", _doc(shape=[True, 2]), None, "input 'x': shape must be a list of non-negative integers"),
    ("shape-scalar", _doc(shape=2), None, "input 'x': shape must be a list of non-negative integers, got 2"),
    ("shape-missing", _doc(shape=None), None, "input 'x': needs a shape"),
    ("shape-huge", _doc(shape=[2**40] * 3), None, "input 'x': shape [1099511627776, 1099511627776, 1099511627776]"),
    ("name-missing", _doc(name=None), None, "input #0 needs a name (a non-empty string), got null"),
    ("name-empty", _doc(name=""), None, "input #0 needs a name"),
    ("name-number", _doc(name=5), None, "input #0 needs a name (a non-empty string), got the number 5"),
    ("datatype-missing", _doc(datatype=None), None, "input 'x': needs a datatype (one of BOOL, UINT8"),
    ("datatype-unknown", _doc(datatype="FP8"), None, "input 'x': unknown datatype 'FP8' (one of BOOL"),
    ("datatype-case", _doc(datatype="fp32"), None, "input 'x': unknown datatype 'fp32'"),
    ("datatype-list", _doc(datatype=["FP32"]), None, "input 'x': unknown datatype ['FP32']"),
    ("data-missing", _doc(data=None), None, "input 'x': needs data, or parameters.binary_data_size"),
    ("data-scalar", _doc(data=5), None, "input 'x': data must be a list, got the number 5"),
    ("data-string", _doc(data="1,2"), None, "input 'x': data must be a list, got the string '1,2'"),
    ("input-params", _doc(parameters=[1]), None, "input 'x': parameters must be an object"),
    ("twice", _json({"inputs": [_X, _X]}), None, "input 'x' is given twice"),
    ("input-not-object", _json({"inputs": [["x"]]}), None, "input #0 must be an object, got a list"),
    ("second-input", _json({"inputs": [_X, {**_X, "name": "y", "data": [1, "z"]}]}), None, "input 'y': FP32 data"),
    ("inputs-missing", _json({"id": "a"}), None, "the request needs a non-empty list of inputs"),
    ("inputs-empty", _json({"inputs": []}), None, "the request needs a non-empty list of inputs"),
    ("inputs-object", _json({"inputs": _X}), None, "the request needs a non-empty list of inputs"),
    ("json-bad", b"{not json", None, "the request body is not valid JSON: "),
    ("json-empty", b"", None, "the request body is not valid JSON: "),
    ("json-truncated", _doc()[:-3], None, "the request body is not valid JSON: "),
    ("json-not-utf8", b'{"inputs": "\xff"}', None, "the request body is not valid JSON: "),
    ("body-list", b"[1, 2]", None, "the request must be a JSON object, got a list"),
    ("body-string", b'"infer"', None, "the request must be a JSON object, got the string 'infer'"),
    ("body-null", b"null", None, "the request must be a JSON object, got null"),
    ("id-number", _json({"id": 5, "inputs": [_X]}), None, "id must be a string, got the number 5"),
    ("params-list", _json({"inputs": [_X], "parameters": [1]}), None, "parameters must be an object"),
    ("outputs-string", _json({"inputs": [_X], "outputs": "label"}), None, "outputs must be a list, got the string"),
    ("output-nameless", _json({"inputs": [_X], "outputs": [{}]}), None, "requested output #0 needs a name"),
    (
        "output-params",
        _json({"inputs": [_X], "outputs": [{"name": "a", "parameters": 1}]}),
        None,
        "requested output 'a': parameters must be an object",
    ),
    (
        "output-binary-flag",
        _json({"inputs": [_X], "outputs": [{"name": "a", "parameters": {"binary_data": 1}}]}),
        None,
        "output 'a': binary_data 1 must be true or false",
    ),
]


@pytest.mark.parametrize(("body", "header", "fault"), [m[1:] for m in _MALFORMED], ids=[m[0] for m in _MALFORMED])
def test_malformed_json_requests_are_refused_naming_the_fault(body: bytes, header: str | None, fault: str) -> None:
    assert fault in _refused(body, header)


_FP32x2 = np.array([1, 2], dtype="<f4").tobytes()


def _bin(
    datatype: str, shape: list[int], payload: bytes, size: Any = None, tail: bytes = b"", **extra: Any
) -> tuple[bytes, str]:
    """One binary input ``x`` whose declared binary_data_size may differ from its payload."""
    declared = len(payload) if size is None else size
    tensor = {"name": "x", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": declared}}
    head = _json({"inputs": [{**tensor, **extra}]})
    return head + payload + tail, str(len(head))


def _elements(*parts: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


_BINARY: list[tuple[str, tuple[bytes, str | None], str]] = [
    ("size-short", _bin("FP32", [2], _FP32x2[:4]), "input 'x': shape [2] of FP32 needs 8 bytes, binary_data_size is 4"),
    (
        "size-long",
        _bin("FP32", [2], _FP32x2 + b"\0\0\0\0"),
        "input 'x': shape [2] of FP32 needs 8 bytes, binary_data_size is 12",
    ),
    ("size-fp16", _bin("FP16", [3], b"\0" * 4), "input 'x': shape [3] of FP16 needs 6 bytes, binary_data_size is 4"),
    ("size-past-data", _bin("FP32", [2], _FP32x2[:4], size=8), "input 'x': binary_data_size 8 runs past the 4 bytes"),
    ("size-negative", _bin("FP32", [2], _FP32x2, size=-8), "input 'x': binary_data_size -8 must be a non-negative"),
    ("size-string", _bin("FP32", [2], _FP32x2, size="8"), "input 'x': binary_data_size '8' must be a non-negative"),
    ("left-over", _bin("FP32", [2], _FP32x2, tail=b"xyz"), "3 bytes of binary data follow the inputs that no input"),
    ("bool-not-0-1", _bin("BOOL", [2], b"\x01\x02"), "input 'x': binary BOOL data must be bytes of 0 or 1"),
    (
        "bytes-truncated-length",
        _bin("BYTES", [2], _elements(b"ab") + b"\x05\x00"),
        "input 'x': binary BYTES data ends inside the length of element 1",
    ),
    (
        "bytes-truncated-element",
        _bin("BYTES", [1], struct.pack("<I", 10) + b"abc"),
        "input 'x': binary BYTES element 0 of 10 bytes runs past the 3 bytes left",
    ),
    (
        "bytes-too-few",
        _bin("BYTES", [3], _elements(b"a", b"b")),
        "input 'x': binary BYTES data ends inside the length of element 2",
    ),
    (
        "bytes-too-many",
        _bin("BYTES", [1], _elements(b"a", b"b")),
        "input 'x': 5 bytes left in its binary data after 1 BYTES elements",
    ),
    (
        "bytes-not-utf8",
        _bin("BYTES", [2], _elements(b"ok", b"\xff\xfe")),
        "input 'x': BYTES element 1 is not UTF-8 text",
    ),
    (
        "size-without-header",
        (_bin("FP32", [2], b"")[0], None),
        "input 'x': has parameters.binary_data_size but the request has no Inference-Header-Content-Length",
    ),
    ("size-and-data", _bin("FP32", [2], _FP32x2, data=[1, 2]), "input 'x': has both data and binary_data_size"),
]


@pytest.mark.parametrize(("request_", "fault"), [b[1:] for b in _BINARY], ids=[b[0] for b in _BINARY])
def test_malformed_binary_data_is_refused_naming_the_fault(request_: tuple[bytes, str | None], fault: str) -> None:
    assert fault in _refused(*request_)


def _with_header_length(length: str) -> str:
    body, _ = _bin("FP32", [2], _FP32x2)
    return _refused(body, length)


@pytest.mark.parametrize(
    ("length", "fault"),
    [
        ("abc", "Inference-Header-Content-Length 'abc' must be a positive integer number of bytes"),
        ("-5", "Inference-Header-Content-Length '-5' must be a positive integer"),
        ("1.5", "Inference-Header-Content-Length '1.5' must be a positive integer"),
        ("1_0", "Inference-Header-Content-Length '1_0' must be a positive integer"),
        ("+10", "Inference-Header-Content-Length '+10' must be a positive integer"),
        ("", "Inference-Header-Content-Length '' must be a positive integer"),
        ("٣", "Inference-Header-Content-Length '٣' must be a positive integer"),  # a digit, but not ASCII
        ("9" * 5000, "Inference-Header-Content-Length '" + "9" * 30 + "...' must be a positive integer"),
        ("0", "Inference-Header-Content-Length 0 is outside the body of "),
        ("99999", "Inference-Header-Content-Length 99999 is outside the body of "),
        ("10", "the request body is not valid JSON"),  # cuts the JSON short
    ],
)
def test_a_bad_inference_header_content_length_is_refused(length: str, fault: str) -> None:
    assert fault in _with_header_length(length)


# --- purity -----------------------------------------------------------------------------------------------------------
def test_oip_is_pure() -> None:
    """No I/O: the module imports only the standard library's pure parts, numpy, orjson and the pure app core."""
    tree = ast.parse(Path(oip.__file__).read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {
        "__future__",
        "base64",
        "itertools",
        "math",
        "struct",
        "collections",
        "dataclasses",
        "typing",
    } | {
        "numpy",
        "orjson",
        "app",
    }, imported
    app_modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert {m for m in app_modules if m.startswith("app")} <= {"app.errors", "app.signature"}
