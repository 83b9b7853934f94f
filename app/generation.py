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

from app import policies
from app.errors import InvalidInput
from app.policies import Policy, PolicyParams

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


# --- scheduling by tokens inside the engine ---------------------------------------------------------------------------
#: Policies under which a waiting sequence may take a running sequence's place at a token step. FIFO and SJF only
#: order admission (as the fleet's queue does): a running sequence keeps its slot until it finishes.
PREEMPTIVE = frozenset({Policy.SRTF, Policy.AGING})


def remaining_tokens(
    prompt_tokens: int, max_tokens: int, generated_tokens: int, prefilled: bool, prefill_weight: float = 1.0
) -> float:
    """A sequence's remaining work in decode-token equivalents: the tokens it may still generate, plus, while it
    holds no KV cache, the tokens a prefill must compute first (its prompt; and the tokens it made, for one whose
    cache was dropped when it was preempted). ``prefill_weight`` is a prefilled token's cost against a generated
    one's, which the engine measures: prefill computes every prompt token in one forward pass, so on the trace's
    long prompts a weight of 1 would rank requests by their prompts rather than by the steps they need."""
    to_prefill = 0 if prefilled else prompt_tokens + generated_tokens
    return max(0, max_tokens - generated_tokens) + prefill_weight * to_prefill


@dataclass(frozen=True)
class SequenceFacts:
    """What the engine knows about one sequence when it orders them (see :func:`sequence_rank`)."""

    remaining_tokens: float
    waited_s: float  # since its submission, as aging counts a request's wait
    submitted_at: float  # arrival order among aged sequences
    request_class: str = policies.RequestClass.INTERACTIVE
    backlog_s: float = 0.0  # the wait FIFO would have given it at admission (stretches the aging clock)


def sequence_rank(
    policy: Policy, facts: SequenceFacts, seconds_per_token: float, params: PolicyParams
) -> tuple[int, float]:
    """Order of sequences inside one engine, smallest first: (policy level, tie-break).

    The level is the one the fleet's policy gives a request whose remaining work is ``remaining_tokens`` at the
    engine's measured ``seconds_per_token``, so SRTF and aging here use the same bands and the same aging clock
    (threshold, step, backlog stretch) as admission. Within a level the fewest remaining tokens go first, except
    at the aged level, which is served in arrival order: that is what bounds an aged request's wait (see
    :mod:`app.policies`), and it stops two aged sequences from taking each other's place back and forth.
    FIFO and SJF rank by remaining tokens alone: they only order admission, as before.
    """
    if policy not in PREEMPTIVE:
        return (0, float(facts.remaining_tokens))
    remaining_s = facts.remaining_tokens * seconds_per_token
    request = policies.RequestFacts(facts.request_class, remaining_s, remaining_s, facts.waited_s, facts.backlog_s)
    level = policies.priority_for(policy, request, params)
    if level == policies.AGED_LEVEL:
        return (level, facts.submitted_at)
    return (level, float(facts.remaining_tokens))


def kv_reserve_bytes(bytes_per_token: int, max_sequences: int, context_tokens: int, max_kv_bytes: int) -> int:
    """The KV cache a generative replica may grow to: every sequence it runs at once holding a full context,
    unless the configured KV-byte budget, which the engine never exceeds, is less. Part of its footprint."""
    return min(max_kv_bytes, bytes_per_token * max_sequences * context_tokens)
