"""Scheduling policies: map what is known about a request to one of the ten Redis priority levels.

Pure functions only (no Celery, no Redis): the producer calls :func:`priority_for` at enqueue time, the beat's
aging task calls it again for requests that have waited, and ``bench.simulate`` replays traces through it.

Level layout (kombu's Redis transport pops level 0 first, across every queue a worker consumes)::

    0          reserved for requests promoted by aging; nothing is ever *submitted* at level 0
    1 .. 7     interactive requests, one level per log-scaled band of estimated service time (SJF / SRTF)
    3 .. 9     batch requests: the same bands shifted down by ``batch_offset_levels``

Sizing is deliberately coarse (seven bands, about 2.6x apart with the defaults): estimates are noisy, and the
levels must also leave room for the class offset and for aging to climb. A short batch job may still go ahead
of a long interactive one: class is mixed with size, not a strict tier, so batch work is never starved by
a flood of long interactive requests even before aging kicks in.

Aging clock. A request waits ``aging_threshold_s`` before it gains a level, then gains one per ``aging_step_s``
(so from the lowest level 9 it reaches level 0 after ``max_climb_s``). A fixed clock cannot work for every load:
when a burst builds a backlog of hundreds of services, every request waits past any fixed threshold, they all
climb to the top, and the queue degenerates to FIFO. So the clock of each request is stretched by
``sigma = max(1, aging_backlog_factor x backlog_s / aging_threshold_s)``, where ``backlog_s`` is the wait FIFO
would have given it (queued work at submission over replicas): a request starts to climb once it has waited
``aging_backlog_factor`` times what FIFO would have made it wait, and not before.

Bound on the worst wait. A request submitted at level ``L`` reaches level 0 after at most
``sigma x max_climb_s(L)`` seconds, i.e. ``max(max_climb_s(L), aging_backlog_factor x backlog_s x
max_climb_s(L) / aging_threshold_s)``, plus one period of the beat that re-enqueues it. Level 0 holds only aged
requests, so from then on it waits only for the requests in service (non-preemptive: one per server) and for
those promoted to level 0 before it: a FIFO queue fed by a subset of the traffic, whose load is below the total.
Its wait is therefore bounded by that climb plus the FIFO wait of the aged sub-stream, whatever its size or
class.

Why ``aging_backlog_factor`` is 2. Every promotion is one more message a worker must take (and drop, for the copy
that loses), and it moves a long request ahead of short ones; both raise the mean. ``python -m bench.aging_factor``
(simulation, each dropped copy charged 10 ms) on 30 runs of the Azure trace (slices x loads 0.8-0.97 x 1 or 3
servers): factor 1.25 gives a median mean of 0.59x FIFO's, factor 2 gives 0.51x (SJF: 0.45x), worst waits 1.7x
and 2.06x FIFO's (SJF: 1.98x). On 9 streams built to starve long requests (sparse among short ones, load
0.95-0.98), factor 2 holds the worst wait to 3.9x FIFO's where SJF lets it reach 6.3x, at a mean of 0.71x FIFO's;
factor 1.25 holds it to 3.1x but its copies push the mean to 1.13x FIFO's, worse than no policy at all. Lower the
factor where a tight worst wait matters more than the mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

#: Redis priority levels configured in ``priority_steps``; 0 is popped first.
NUM_LEVELS = 10
#: Highest level, reserved for aged requests so that the aging bound above holds.
AGED_LEVEL = 0
#: Lowest (last-popped) level.
LOWEST_LEVEL = NUM_LEVELS - 1


class Policy(StrEnum):
    """Scheduling policies a deployment can run; the value is the name used in settings and on the CLI."""

    FIFO = "fifo"  # one level for everything: arrival order within the shared level
    SJF = "sjf"  # level from the estimated service time, mixed with the request class
    SRTF = "srtf"  # level from the remaining work of a chunked job, recomputed at every chunk
    AGING = "aging"  # SJF at submission, then promoted while it waits so nothing starves


class RequestClass(StrEnum):
    """Request classes; interactive work is placed ahead of batch work of the same size."""

    INTERACTIVE = "interactive"  # a caller is waiting on the answer
    BATCH = "batch"  # throughput work: offline scoring, chunked jobs


@dataclass(frozen=True)
class RequestFacts:
    """What the scheduler knows about a request when it (re-)enqueues it.

    ``remaining_s`` is the estimated work left for a chunked job (SRTF); ``None`` means the whole request is
    left, i.e. ``estimated_service_s``. ``waited_s`` is the time since submission (aging). ``backlog_s`` is the
    wait FIFO would have given it, measured at submission: estimated work queued ahead over the replicas
    consuming the queue (aging stretches its clock to it; 0 when unknown).
    """

    request_class: str
    estimated_service_s: float
    remaining_s: float | None = None
    waited_s: float = 0.0
    backlog_s: float = 0.0


@dataclass(frozen=True)
class PolicyParams:
    """Tunable bounds of the policies; defaults suit requests of tens of milliseconds to tens of seconds.

    Service times at or below ``min_service_s`` share the first band, those at or above ``max_service_s`` the
    last; in between the ``size_levels`` bands are equal in log scale. Use :meth:`around` to centre the bands
    and the aging clock on the typical service time of a fleet rather than on these absolute defaults.
    """

    min_service_s: float = 0.01
    max_service_s: float = 9.0
    size_levels: int = 7
    batch_offset_levels: int = 2
    fifo_level: int = 4
    aging_threshold_s: float = 1.5
    aging_step_s: float = 0.6
    aging_backlog_factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 < self.min_service_s < self.max_service_s or not math.isfinite(self.max_service_s):
            raise ValueError(
                f"policy params need 0 < min_service_s < max_service_s, got {self.min_service_s} and "
                f"{self.max_service_s}"
            )
        if self.size_levels < 1 or self.batch_offset_levels < 0:
            raise ValueError("policy params need size_levels >= 1 and batch_offset_levels >= 0")
        if self.size_levels + self.batch_offset_levels > NUM_LEVELS - 1:
            raise ValueError(
                f"size_levels + batch_offset_levels must fit in levels 1..{LOWEST_LEVEL} "
                f"(level 0 is kept for aging), got {self.size_levels} + {self.batch_offset_levels}"
            )
        if not AGED_LEVEL <= self.fifo_level <= LOWEST_LEVEL:
            raise ValueError(f"fifo_level must be in 0..{LOWEST_LEVEL}, got {self.fifo_level}")
        if not (self.aging_threshold_s > 0.0 and self.aging_step_s > 0.0):
            raise ValueError("aging_threshold_s and aging_step_s must be > 0")
        if not self.aging_backlog_factor >= 0.0:
            raise ValueError(f"aging_backlog_factor must be >= 0, got {self.aging_backlog_factor}")

    @classmethod
    def around(cls, typical_service_s: float, **overrides: float) -> PolicyParams:
        """Params scaled to a fleet whose typical (mean) service time is ``typical_service_s``.

        The bands span 1/30x .. 30x the typical time (one band per ~2.6x; the class defaults are this for
        0.3 s). Aging starts after 5 typical services and climbs one level per 2, stretched under a backlog
        (see the module docstring). In simulation SJF keeps most of its gain with the typical time off by 10x
        either way (0.35-0.48x FIFO's mean on the Azure trace for 0.01-1 s against a true 0.1 s).
        """
        if not typical_service_s > 0.0:
            raise ValueError(f"typical_service_s must be > 0, got {typical_service_s}")
        scaled = {
            "min_service_s": typical_service_s / 30.0,
            "max_service_s": typical_service_s * 30.0,
            "aging_threshold_s": typical_service_s * 5.0,
            "aging_step_s": typical_service_s * 2.0,
        }
        merged: dict[str, Any] = {**scaled, **overrides}
        return cls(**merged)

    def max_climb_s(self, start_level: int = LOWEST_LEVEL) -> float:
        """Longest wait before aging lifts a request submitted at ``start_level`` to the reserved level 0."""
        return self.aging_threshold_s + (start_level - 1) * self.aging_step_s


DEFAULT_PARAMS = PolicyParams()


def size_band(service_s: float, params: PolicyParams = DEFAULT_PARAMS) -> int:
    """Log-scaled band ``0 .. size_levels - 1`` of a service time (0 = shortest)."""
    # An unknown (NaN) estimate goes last rather than jumping the queue; infinity would overflow int().
    if math.isnan(service_s) or service_s >= params.max_service_s:
        return params.size_levels - 1
    if service_s <= params.min_service_s:
        return 0
    span = math.log(params.max_service_s / params.min_service_s)
    band = int(params.size_levels * math.log(service_s / params.min_service_s) / span)
    return min(band, params.size_levels - 1)


def _class_offset(request_class: str, params: PolicyParams) -> int:
    try:
        cls = RequestClass(request_class)
    except ValueError as exc:
        known = ", ".join(c.value for c in RequestClass)
        raise ValueError(f"unknown request class {request_class!r}; known classes: {known}") from exc
    return params.batch_offset_levels if cls is RequestClass.BATCH else 0


def fifo(facts: RequestFacts, params: PolicyParams = DEFAULT_PARAMS) -> int:
    """FIFO: the same level for every request, so Redis serves them in arrival order."""
    return params.fifo_level


def sjf(facts: RequestFacts, params: PolicyParams = DEFAULT_PARAMS) -> int:
    """SJF: band of the estimated service time, shifted down for batch; never level 0 (kept for aging)."""
    return 1 + _class_offset(facts.request_class, params) + size_band(facts.estimated_service_s, params)


def srtf(facts: RequestFacts, params: PolicyParams = DEFAULT_PARAMS) -> int:
    """SRTF: band of the job's remaining work, so a job nearly done overtakes a long one at the next chunk."""
    remaining_s = facts.estimated_service_s if facts.remaining_s is None else facts.remaining_s
    return 1 + _class_offset(facts.request_class, params) + size_band(remaining_s, params)


def aging_stretch(backlog_s: float, params: PolicyParams = DEFAULT_PARAMS) -> float:
    """Factor (>= 1) on the aging clock so that aging starts after ``aging_backlog_factor x backlog_s``."""
    return max(1.0, params.aging_backlog_factor * backlog_s / params.aging_threshold_s)


def aging_boost(waited_s: float, params: PolicyParams = DEFAULT_PARAMS, backlog_s: float = 0.0) -> int:
    """Levels gained after waiting ``waited_s``: none before the threshold, then one per step."""
    stretch = aging_stretch(backlog_s, params)
    threshold_s = params.aging_threshold_s * stretch
    if not waited_s >= threshold_s:
        return 0
    return 1 + int((waited_s - threshold_s) // (params.aging_step_s * stretch))


def next_promotion_wait_s(facts: RequestFacts, params: PolicyParams = DEFAULT_PARAMS) -> float:
    """Wait after which :func:`aging` next lowers the level of this request; ``inf`` once it is at level 0.

    A beat task can keep waiting requests ordered by ``submitted_at + next_promotion_wait_s`` and look only at
    those due, instead of re-scoring every waiting request at every tick.
    """
    if aging(facts, params) == AGED_LEVEL:
        return math.inf
    boost = aging_boost(facts.waited_s, params, facts.backlog_s)
    stretch = aging_stretch(facts.backlog_s, params)
    threshold_s = params.aging_threshold_s * stretch
    step_s = params.aging_step_s * stretch
    wait_s = threshold_s + boost * step_s
    # threshold + k * step can round to just below the boundary aging_boost sees; step past it by ulps so the
    # caller is never handed a promotion time that promotes nothing (a beat would spin on it).
    while aging_boost(wait_s, params, facts.backlog_s) <= boost:
        wait_s = math.nextafter(wait_s, math.inf)
    return wait_s


def aging(facts: RequestFacts, params: PolicyParams = DEFAULT_PARAMS) -> int:
    """Dynamic priority: the SRTF level (the SJF level for a whole request) raised by the wait, down to 0."""
    return max(AGED_LEVEL, srtf(facts, params) - aging_boost(facts.waited_s, params, facts.backlog_s))


_POLICIES = {Policy.FIFO: fifo, Policy.SJF: sjf, Policy.SRTF: srtf, Policy.AGING: aging}


def parse_policy(name: str | Policy) -> Policy:
    """The :class:`Policy` named ``name``; raises ``ValueError`` naming the unknown and the known policies."""
    try:
        return Policy(name)
    except ValueError as exc:
        known = ", ".join(p.value for p in Policy)
        raise ValueError(f"unknown scheduling policy {name!r}; known policies: {known}") from exc


def priority_for(policy_name: str | Policy, facts: RequestFacts, params: PolicyParams = DEFAULT_PARAMS) -> int:
    """Redis priority level (0 highest .. 9 lowest) of a request under the named policy."""
    return _POLICIES[parse_policy(policy_name)](facts, params)
