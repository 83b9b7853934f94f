"""Small ONNX graphs built with onnx.helper, for benchmarks, tests and the demo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def add_one(path: Path, width: int = 4) -> Path:
    """y = x + 1 on FP32[-1, width]: trivial, so a benchmark measures dispatch and not compute."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "add_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
        initializer=[one],
    )
    return _save(graph, path)


def reshape_to_2x2(path: Path) -> Path:
    """Reshapes FP32[-1] to [2, 2]: valid by signature for any length, raises at run time unless 4 values."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], np.array([2, 2], dtype=np.int64))
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        initializer=[shape],
    )
    return _save(graph, path)


def mlp(path: Path, width: int = 512, layers: int = 8, seed: int = 0) -> Path:
    """A square ReLU MLP on FP32[-1, width]: its run time grows with rows, like a real model's."""
    return wide_mlp(path, in_width=width, hidden=width, layers=layers, out_width=width, seed=seed)


def wide_mlp(
    path: Path, in_width: int = 16, hidden: int = 2048, layers: int = 5, out_width: int = 8, seed: int = 0
) -> Path:
    """Narrow input and output around wide hidden layers: about 0.5 ms a row on one core here, small messages.

    Its run time grows with the rows of the request, so it stands in for a model whose cost follows its input.
    """
    rng = np.random.default_rng(seed)
    widths = [in_width] + [hidden] * (layers - 1) + [out_width]
    nodes, inits, prev = [], [], "x"
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:], strict=False)):
        weight = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, [fan_in, fan_out], weight.ravel()))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "wide_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, in_width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, out_width])],
        initializer=inits,
    )
    return _save(graph, path)
