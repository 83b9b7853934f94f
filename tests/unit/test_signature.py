import numpy as np
import pytest

from app.errors import InvalidInput
from app.signature import decode_tensor, encode_tensor, parse_signature, validate_inputs

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
def test_encode_decode_round_trip(array):
    back = decode_tensor(encode_tensor("v", array))
    assert back.shape == array.shape
    assert back.tolist() == array.tolist()


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
