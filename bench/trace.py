"""Load an LLM request trace and turn it into a benchmark workload at a chosen offered load.

The trace (``TIMESTAMP, ContextTokens, GeneratedTokens``; Azure LLM inference trace 2023) gives arrival times
and sizes. Service time is a function of the token counts (total tokens by default, a fair proxy per the
trace's README), scaled so the mean service is ``mean_service_ms``; arrivals are then compressed in time so the
offered load ``arrival rate x mean service / servers`` hits the target. Compressing keeps the trace's burst structure,
which is what separates the policies; resampling arrivals would smooth it away.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

#: Columns a trace file must have.
TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
#: The trace the benchmarks replay unless given --trace: MAAS_TRACE_PATH, else the team's shared folder that sits
#: beside a checkout (``../shared/traces/``), found from this file rather than from a path of one machine.
DEFAULT_TRACE_PATH = Path(
    os.environ.get(
        "MAAS_TRACE_PATH",
        Path(__file__).resolve().parents[2] / "shared" / "traces" / "azure_llm_code_2023.csv",
    )
)


class SizeClass(StrEnum):
    """Size classes of a workload, by quantile of the service time."""

    SHORTEST = "shortest"  # at or below the low quantile
    MIDDLE = "middle"
    LONGEST = "longest"  # at or above the high quantile


@dataclass(frozen=True)
class TraceRow:
    """One request of the raw trace; ``arrival_s`` is relative to the first request."""

    arrival_s: float
    context_tokens: int
    generated_tokens: int


@dataclass(frozen=True)
class Request:
    """One request of a workload; ``size_tokens`` is what is known at arrival (the context)."""

    arrival_s: float
    size_tokens: int
    service_s: float
    size_class: SizeClass


def total_tokens(context_tokens: int, generated_tokens: int) -> float:
    """Default service-time proxy: every token, prompt or generated, costs the same."""
    return float(context_tokens + generated_tokens)


def load_trace(path: str | Path = DEFAULT_TRACE_PATH) -> list[TraceRow]:
    """Rows of a trace CSV sorted by arrival; ``ValueError`` names the file and the bad line or column."""
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in TRACE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"trace {path} lacks column(s) {', '.join(missing)}")
        parsed = []
        for line_no, row in enumerate(reader, start=2):
            try:
                stamp = datetime.fromisoformat(row["TIMESTAMP"]).timestamp()
                parsed.append((stamp, int(row["ContextTokens"]), int(row["GeneratedTokens"])))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"trace {path} line {line_no}: {exc}") from None
    if not parsed:
        raise ValueError(f"trace {path} has no requests")
    parsed.sort(key=lambda r: r[0])
    start = parsed[0][0]
    return [TraceRow(stamp - start, ctx, gen) for stamp, ctx, gen in parsed]


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of ``values`` (``q`` in [0, 1]); no interpolation, so it is an observed value."""
    if not values:
        raise ValueError("quantile of an empty sequence")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def time_scale_for_load(span_s: float, count: int, mean_service_s: float, servers: int, load: float) -> float:
    """Factor on arrival times so ``count`` requests over ``span_s`` offer ``load`` to ``servers``."""
    if not (load > 0.0 and servers >= 1 and span_s > 0.0 and count > 1 and mean_service_s > 0.0):
        raise ValueError(
            f"need load > 0, servers >= 1, a trace spanning > 0 s with > 1 request; got load={load}, "
            f"servers={servers}, span_s={span_s}, count={count}"
        )
    # Offered load = (count / (span_s * scale)) * mean_service_s / servers; solve for scale.
    return count * mean_service_s / (servers * load * span_s)


def build_workload(
    rows: Sequence[TraceRow],
    *,
    servers: int = 1,
    load: float = 0.85,
    mean_service_ms: float = 100.0,
    service_of: Callable[[int, int], float] = total_tokens,
    class_quantile: float = 0.1,
) -> list[Request]:
    """Requests with service times scaled to ``mean_service_ms`` and arrivals compressed to ``load``.

    The shortest and longest classes are the requests at or below the ``class_quantile`` and at or above the
    ``1 - class_quantile`` quantile of the service time.
    """
    if not 0.0 < class_quantile < 0.5:
        raise ValueError(f"class_quantile must be in (0, 0.5), got {class_quantile}")
    raw = [service_of(r.context_tokens, r.generated_tokens) for r in rows]
    raw_mean = sum(raw) / len(raw) if raw else 0.0
    if not raw_mean > 0.0:
        raise ValueError("service_of gives no positive work on this trace")
    mean_service_s = mean_service_ms / 1000.0
    services_s = [w * mean_service_s / raw_mean for w in raw]
    span_s = rows[-1].arrival_s - rows[0].arrival_s
    scale = time_scale_for_load(span_s, len(rows), mean_service_s, servers, load)
    short_max_s = quantile(services_s, class_quantile)
    long_min_s = quantile(services_s, 1.0 - class_quantile)

    def classify(service_s: float) -> SizeClass:
        if service_s <= short_max_s:
            return SizeClass.SHORTEST
        return SizeClass.LONGEST if service_s >= long_min_s else SizeClass.MIDDLE

    return [
        Request((r.arrival_s - rows[0].arrival_s) * scale, r.context_tokens, s, classify(s))
        for r, s in zip(rows, services_s, strict=True)
    ]


def offered_load(requests: Sequence[Request], servers: int) -> float:
    """Offered load of a workload: total work over (span x servers)."""
    span_s = requests[-1].arrival_s - requests[0].arrival_s
    return sum(r.service_s for r in requests) / (span_s * servers)
