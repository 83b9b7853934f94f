"""One beat's view of its leadership, kept apart from Redis so the timing rules are plain arithmetic.

Several ``maas beat`` processes may run (one per control host, so losing a host does not stop the periodic
work); only the holder of the beat lease in Redis sends the periodic tasks. The holder renews it every third of
``lease_s``; the others try to take it as often. A leader counts its lease from the moment it *sent* the claim:
Redis started the TTL later, so while this side believes it leads, nobody else can hold the key (both clocks
tick at the same rate; a Redis failover may lose the key, and the tasks beat sends are safe to run twice).

After the leader dies, its key expires at most ``lease_s`` after its last renewal, and a follower's next claim
comes at most a renewal period later: :func:`takeover_bound_s`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: A claim is sent this many times per lease: a leader survives two lost renewals before its lease runs out.
CLAIMS_PER_LEASE = 3


def renew_period_s(lease_s: float) -> float:
    return lease_s / CLAIMS_PER_LEASE


def takeover_bound_s(lease_s: float) -> float:
    """The longest a fleet goes without a sending beat after its leader dies (another beat running)."""
    return lease_s + renew_period_s(lease_s)


@dataclass
class Lease:
    """Times are monotonic seconds passed in by the caller."""

    lease_s: float
    leader_until_s: float = -math.inf
    next_claim_s: float = -math.inf

    def claim_due(self, now_s: float) -> bool:
        return now_s >= self.next_claim_s

    def claimed(self, sent_at_s: float, won: bool) -> None:
        """The claim sent at ``sent_at_s`` was answered: ``won`` is whether this beat holds the lease now."""
        self.leader_until_s = sent_at_s + self.lease_s if won else -math.inf
        self.next_claim_s = sent_at_s + renew_period_s(self.lease_s)

    def unanswered(self, sent_at_s: float) -> None:
        """The claim got no answer (Redis unreachable): a leader keeps leading until its lease runs out by itself."""
        self.next_claim_s = sent_at_s + renew_period_s(self.lease_s)

    def leads(self, now_s: float) -> bool:
        return now_s < self.leader_until_s

    def until_next_claim_s(self, now_s: float) -> float:
        return max(0.0, self.next_claim_s - now_s)
