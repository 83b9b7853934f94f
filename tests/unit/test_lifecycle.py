import itertools

import pytest

from app.errors import IllegalTransition
from app.lifecycle import TERMINAL, ReplicaState, allowed, check_transition

S = ReplicaState
LEGAL = {
    (S.PENDING, S.LOADING),
    (S.PENDING, S.STOPPED),
    (S.LOADING, S.READY),
    (S.READY, S.DRAINING),
    (S.DRAINING, S.UNLOADING),
    (S.UNLOADING, S.STOPPED),
} | {(s, S.FAILED) for s in S if s not in TERMINAL}


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(S, S)))
def test_transition_table(src, dst):
    assert allowed(src, dst) == ((src, dst) in LEGAL)


def test_illegal_transition_raises_naming_both_states():
    with pytest.raises(IllegalTransition, match="replica 7: READY -> LOADING"):
        check_transition(S.READY, S.LOADING, replica="7")
    with pytest.raises(IllegalTransition):
        check_transition(S.FAILED, S.FAILED)
