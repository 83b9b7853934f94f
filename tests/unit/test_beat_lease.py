"""Beat's leader lease as arithmetic (beat.lease): who leads when, and how soon another beat takes over."""

import math

from beat.lease import Lease, renew_period_s, takeover_bound_s

LEASE_S = 3.0


def test_a_won_claim_leads_for_the_lease_counted_from_when_it_was_sent():
    lease = Lease(LEASE_S)
    assert lease.claim_due(0.0) and not lease.leads(0.0)
    lease.claimed(sent_at_s=10.0, won=True)
    assert lease.leads(10.0) and lease.leads(12.99) and not lease.leads(13.0)
    assert not lease.claim_due(10.9) and lease.claim_due(11.0)  # renewed every third of the lease


def test_a_renewal_that_lost_the_lease_stops_leading_at_once():
    lease = Lease(LEASE_S)
    lease.claimed(10.0, won=True)
    lease.claimed(11.0, won=False)
    assert not lease.leads(11.0)


def test_an_unanswered_claim_leads_only_until_the_lease_runs_out():
    lease = Lease(LEASE_S)
    lease.claimed(10.0, won=True)
    lease.unanswered(11.0)
    lease.unanswered(12.0)
    assert lease.leads(12.5) and not lease.leads(13.0)  # two renewals lost: the lease ran out, another may hold it
    assert lease.claim_due(13.0)


def test_a_follower_takes_over_within_the_bound_after_the_leader_dies():
    # The leader renews at t = 0 and dies just before its next renewal: its key lives until 0 + LEASE_S.
    expires_s = LEASE_S
    follower = Lease(LEASE_S)
    t = 0.0
    follower.claimed(t, won=False)
    while True:  # the follower claims whenever its claim is due; the key is free from expires_s on
        t = follower.next_claim_s
        follower.claimed(t, won=t >= expires_s)
        if follower.leads(t):
            break
    assert t <= takeover_bound_s(LEASE_S) == LEASE_S + renew_period_s(LEASE_S)
    assert math.isclose(renew_period_s(LEASE_S), 1.0)
