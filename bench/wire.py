"""``python -m bench.wire``: one tensor through the message encoding, as OIP ``data`` lists and as ``raw`` bytes.

Times ``encode_tensor`` + ``json.dumps`` (what a producer and a worker's answer do) and ``json.loads`` +
``decode_tensor`` (what the other side does) for a ``--rows`` x ``--cols`` FP32 tensor, median of ``--repeat``,
and the encoded size. Prints one JSON line with both forms and their ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from app.signature import decode_tensor, encode_tensor


def median_ms(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        work()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(x: np.ndarray, raw: bool, repeat: int) -> dict[str, float]:
    wire = json.dumps(encode_tensor("x", x, raw=raw))
    back = decode_tensor(json.loads(wire))
    if not np.array_equal(back, x):
        raise AssertionError("the tensor did not survive the round trip")
    return {
        "encode_ms": round(median_ms(lambda: json.dumps(encode_tensor("x", x, raw=raw)), repeat), 3),
        "decode_ms": round(median_ms(lambda: decode_tensor(json.loads(wire)), repeat), 3),
        "bytes": len(wire),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wire", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args(argv)
    x = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    lists, raw = measure(x, False, args.repeat), measure(x, True, args.repeat)
    line = {"bench": "wire", "shape": [args.rows, args.cols], "datatype": "FP32", "lists": lists, "raw": raw}
    line.update({f"{k}_ratio": round(lists[k] / raw[k], 1) for k in ("encode_ms", "decode_ms", "bytes")})
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
