"""The states of a chunked batch job and of its chunks, as the database holds them. Pure."""

from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    """Where a job stands; it is finished in any state but RUNNING."""

    RUNNING = "RUNNING"  # chunks are queued or waiting their turn
    SUCCEEDED = "SUCCEEDED"  # every chunk is DONE
    FAILED = "FAILED"  # every chunk ended, at least one FAILED after its last attempt
    CANCELLED = "CANCELLED"  # no further chunk is sent; a chunk already in flight still finishes


class ChunkState(enum.StrEnum):
    """Where one chunk of a job stands."""

    PENDING = "PENDING"  # not sent yet: only `parallelism` chunks of a job wait in the queue at a time
    QUEUED = "QUEUED"  # sent to the model's queue (or being retried)
    DONE = "DONE"  # answered; its outputs are stored
    FAILED = "FAILED"  # failed on its last attempt; the error is stored
