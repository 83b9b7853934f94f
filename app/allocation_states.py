"""The states of an allocation run and of its moves, as beat records them and the CLI shows them. Pure.

A run is the outcome of one re-solve (``allocation_run.status``); each of its moves (``allocation_run.moves``, a JSON
list) has its own state. The kinds of move are ``beat.planner.MoveKind``. The values are what the database holds.
"""

from __future__ import annotations

import enum


class RunStatus(enum.StrEnum):
    """Where an allocation run stands."""

    PLANNED = "planned"  # solved and its moves planned; turned into dry_run, executing or kept before it is recorded
    DRY_RUN = "dry_run"  # solved and planned on request, nothing carried out
    EXECUTING = "executing"  # its moves are being carried out, over as many beat periods as they take
    KEPT = "kept"  # the plan moves nothing: the current placement stays
    DONE = "done"  # every move is done
    DONE_WITH_FAILURES = "done_with_failures"  # every move ended, some of them failed
    FAILED = "failed"  # infeasible or unplannable, or its moves outlived the time allowed; the next run re-solves


class MoveState(enum.StrEnum):
    """Where one move of a run stands."""

    PENDING = "pending"  # waits for the moves it comes after
    SENT = "sent"  # the load or stop was sent to the worker; its replica's state settles it
    DONE = "done"  # loaded and READY, or unloaded (or already gone)
    FAILED = "failed"  # could not be sent, its replica failed, or a move it waits for failed
