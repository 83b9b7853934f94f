"""Generation requests, shared by every front door and the worker. Pure: no torch, no I/O.

A generation request is a prompt and :class:`SamplingParams`. It travels as one Celery message ``maas.generate``
(admitted exactly like an infer request: ledger, queue limit, priority list), and its text comes back twice: as
chunks on a Redis Stream per request while it is made (:mod:`app.broker.streams`), and as the task's result when
it is done (the whole text, the token counts and why it stopped).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from app.errors import InvalidInput

#: The task every generation request runs.
GENERATE_TASK = "maas.generate"
#: Most tokens one request may ask for.
MAX_TOKENS_LIMIT = 4096
#: Most stop strings one request may give (as OpenAI's API).
MAX_STOP_STRINGS = 4
#: Finish reasons, as OpenAI names them (plus "cancelled").
FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature`` 0 is greedy; otherwise sampling with nucleus ``top_p`` and ``seed``."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_json(self) -> dict[str, Any]:
        value = asdict(self)
        value["stop"] = list(self.stop)
        return value

    def seeded(self, task_id: str) -> SamplingParams:
        """The same parameters with a seed: the caller's, else one derived from the task id.

        Every sampled request runs with a seed so that a redelivered request (its worker died) makes the very same
        tokens again, and a client that already streamed part of them sees a consistent continuation.
        """
        if self.seed is not None or self.greedy:
            return self
        return SamplingParams(self.max_tokens, self.temperature, self.top_p, zlib.crc32(task_id.encode()), self.stop)


def parse_params(raw: Mapping[str, Any] | None) -> SamplingParams:
    """Checked parameters from a JSON-like mapping; unknown keys are refused (a typo must not pass silently)."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - {"max_tokens", "temperature", "top_p", "seed", "stop"})
    if unknown:
        raise InvalidInput(f"unknown generation parameters {unknown}")
    max_tokens = raw.get("max_tokens", 16)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise InvalidInput(f"max_tokens={max_tokens!r} must be an integer from 1 to {MAX_TOKENS_LIMIT}")
    temperature = _number(raw.get("temperature", 0.0), "temperature")
    if not 0.0 <= temperature <= 10.0:
        raise InvalidInput(f"temperature={temperature!r} must be from 0 (greedy) to 10")
    top_p = _number(raw.get("top_p", 1.0), "top_p")
    if not 0.0 < top_p <= 1.0:
        raise InvalidInput(f"top_p={top_p!r} must be in (0, 1]")
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise InvalidInput(f"seed={seed!r} must be a non-negative integer")
    stop = raw.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidInput("stop must be a non-empty string or a list of them")
    if len(stop) > MAX_STOP_STRINGS:
        raise InvalidInput(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}")
    return SamplingParams(max_tokens, temperature, top_p, seed, tuple(stop))


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{name}={value!r} must be a number")
    return float(value)


def check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise InvalidInput(f"a prompt must be a string, got {type(prompt).__name__}")
    if not prompt:
        raise InvalidInput("the prompt is empty")
    return prompt
