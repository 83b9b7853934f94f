import numpy as np
import pytest

from app.errors import InvalidInput
from app.signature import decode_tensor, encode_tensor, is_raw, parse_signature, validate_inputs

SIG = parse_signature(
    [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}, {"name": "t", "datatype": "BYTES", "shape": [-1]}]
)


def tensor(name="x", shape=(1, 4), datatype="FP32", data=None):
    count = int(np.prod(shape))
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": data if data is not None else [0] * count}


def test_valid_request_passes():
    validate_inputs(SIG, [tensor(), tensor("t", (2,), "BYTES", ["a", "b"])])
    validate_inputs(SIG, [tensor(shape=(3, 4)), tensor("t", (1,), "BYTES", ["a"])])


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ([tensor(), tensor("t", (1,), "BYTES", ["a"]), tensor("z")], "unexpected input tensor 'z'"),
        ([tensor()], "missing input tensor\\(s\\) \\['t'\\]"),
        ([tensor(shape=(1, 5)), tensor("t", (1,), "BYTES", ["a"])], "shape \\[1, 5\\]"),
        ([tensor(shape=(4,)), tensor("t", (1,), "BYTES", ["a"])], "shape \\[4\\]"),
        ([tensor(datatype="FP64"), tensor("t", (1,), "BYTES", ["a"])], "datatype 'FP64'"),
        ([tensor(), tensor(), tensor("t", (1,), "BYTES", ["a"])], "given twice"),
        ([tensor(data=[1, 2]), tensor("t", (1,), "BYTES", ["a"])], "needs 4 values, data has 2"),
    ],
)
def test_invalid_requests_name_what_is_wrong(tensors, message):
    with pytest.raises(InvalidInput, match=message):
        validate_inputs(SIG, tensors)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array([1, 2], dtype=np.int64),
        np.array(["a", "bc"], dtype=object),
        np.array([True, False]),
    ],
)
@pytest.mark.parametrize("raw", [True, False])
def test_encode_decode_round_trip(array, raw):
    back = decode_tensor(encode_tensor("v", array, raw=raw))
    assert back.shape == array.shape and back.dtype == array.dtype
    assert back.tolist() == array.tolist()


def test_numeric_tensors_travel_raw_and_bytes_as_lists():
    x = np.array([[1.5, -2.0]], dtype=np.float16)
    wire = encode_tensor("x", x)
    assert "data" not in wire and is_raw([wire])
    assert wire["raw"] == "AD4AwA=="  # little-endian FP16 1.5 = 0x3e00, -2.0 = 0xc000
    big_endian = x.astype(">f2")
    assert encode_tensor("x", big_endian)["raw"] == wire["raw"]  # always little-endian on the wire
    text = encode_tensor("t", np.array(["a"], dtype=object))
    assert text["data"] == ["a"] and not is_raw([text])
    validate_inputs(SIG, [encode_tensor("x", np.zeros((3, 4), np.float32)), text])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("AAAA", "needs 16 raw bytes, got 3 bytes"),
        ("AAA", "not base64 text"),
        (12, "not base64 text"),
    ],
)
def test_raw_of_the_wrong_size_is_refused_naming_it(raw, message):
    bad = {"name": "x", "shape": [1, 4], "datatype": "FP32", "raw": raw}
    with pytest.raises(InvalidInput, match=message):
        validate_inputs(SIG, [bad, tensor("t", (1,), "BYTES", ["a"])])
    with pytest.raises(InvalidInput, match=message):
        decode_tensor(bad)


def test_corrupt_raw_and_raw_text_are_refused():
    with pytest.raises(InvalidInput, match="raw is not base64"):
        decode_tensor({"name": "x", "shape": [1, 4], "datatype": "FP32", "raw": "!!!!" + "A" * 18 + "=="})
    with pytest.raises(InvalidInput, match="BYTES data travels as a list"):
        decode_tensor({"name": "t", "shape": [1], "datatype": "BYTES", "raw": "AAAA"})
    with pytest.raises(InvalidInput, match="data \\(or raw\\)"):
        decode_tensor({"name": "x", "shape": [1], "datatype": "FP32"})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "x", "datatype": "FP8", "shape": [1]}, "unknown datatype"),
        ({"name": "x", "datatype": "FP32", "shape": [0]}, "positive sizes"),
        ({"name": "x"}, "needs name, datatype"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(InvalidInput, match=message):
        parse_signature([spec])
