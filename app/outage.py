"""Outages of Redis and the database, as the people who meet them see them: typed errors after a bounded retry.

Everything a user calls (the client, so the CLI and the gateway too) goes through :func:`retrying` for the calls
that touch Redis or the database: a driver's connection error is retried with exponential backoff (first wait
``FIRST_WAIT_S``, doubling, at most ``Settings.retry_attempts`` attempts and ``Settings.retry_max_s`` seconds in
all), then raised as BROKER_UNAVAILABLE or DATABASE_UNAVAILABLE with the driver's error chained. A retried call
must be safe to repeat: the admission script is (it writes nothing for a task id it already holds).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import kombu.exceptions
import redis
import sqlalchemy.exc

from app.errors import BrokerUnavailable, DatabaseUnavailable, MaasError

log = logging.getLogger("maas.outage")
T = TypeVar("T")

#: The first wait between attempts; each next one doubles it.
FIRST_WAIT_S = 0.1

#: The driver errors that mean "the broker did not answer" (kombu's OperationalError: Celery's send_task gave up).
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    kombu.exceptions.OperationalError,
)
#: The driver errors that mean "the database did not answer" (OperationalError: refused, reset, timed out).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


def typed(exc: BaseException, what: str) -> MaasError | None:
    """The typed error for a driver's outage error (None for anything else); ``what`` says what was being done."""
    if isinstance(exc, BROKER_ERRORS):
        return BrokerUnavailable(f"Redis did not answer while {what}: {type(exc).__name__}: {_short(exc)}")
    if isinstance(exc, DATABASE_ERRORS):
        return DatabaseUnavailable(f"the database did not answer while {what}: {type(exc).__name__}: {_short(exc)}")
    return None


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return (text[0] if text else "")[:200]


#: the longest wait between two tries of :func:`retrying`
MAX_BACKOFF_S = 2.0


def backoff(attempt: int, first_s: float = FIRST_WAIT_S, cap_s: float = MAX_BACKOFF_S) -> float:
    """The wait before attempt ``attempt + 1`` (attempt counts from 0): doubling from ``first_s``, at most ``cap_s``."""
    return min(cap_s, first_s * (2**attempt))


def attempts_within(max_s: float) -> int:
    """Enough attempts that ``max_s``, not the count, ends a :func:`retrying` (its first waits are short: six
    attempts spend only about 3 s)."""
    return int(max_s / MAX_BACKOFF_S) + 8


def retrying(fn: Callable[[], T], what: str, *, attempts: int, max_s: float, from_first_error: bool = False) -> T:
    """``fn()``, retried on Redis or database connection errors; a typed error once attempts or time run out.

    ``max_s`` counts from the call, or with ``from_first_error`` from the first outage error (for a long ``fn``,
    such as a request served, whose own run time must not eat the time it has to wait an outage out).
    Errors that are not outages (a MaasError, a bug) pass through at once.
    """
    deadline = math.inf if from_first_error else time.monotonic() + max_s
    attempt = 0
    while True:
        try:
            return fn()
        except (*BROKER_ERRORS, *DATABASE_ERRORS) as exc:
            if attempt == 0 and from_first_error:
                deadline = time.monotonic() + max_s
            attempt += 1
            wait_s = backoff(attempt - 1)
            if attempt >= attempts or time.monotonic() + wait_s > deadline:
                error = typed(exc, what)
                assert error is not None
                raise error from exc
            log.info("retrying after an outage error", extra={"what": what, "attempt": attempt, "error": repr(exc)})
            time.sleep(wait_s)


async def retrying_async(fn: Callable[[], Awaitable[T]], what: str, *, attempts: int, max_s: float) -> T:
    """:func:`retrying` for asyncio code (the gateway): the waits do not hold the event loop."""
    deadline = time.monotonic() + max_s
    attempt = 0
    while True:
        try:
            return await fn()
        except BROKER_ERRORS as exc:
            attempt += 1
            wait_s = backoff(attempt - 1)
            if attempt >= attempts or time.monotonic() + wait_s > deadline:
                raise BrokerUnavailable(
                    f"Redis did not answer while {what}: {type(exc).__name__}: {_short(exc)}"
                ) from exc
            await asyncio.sleep(wait_s)


@contextmanager
def typed_errors(what: str) -> Iterator[None]:
    """Raise a driver's outage error met inside as its typed error, without retrying (for calls that are not
    safe to repeat, such as a load that may already have been sent)."""
    try:
        yield
    except (*BROKER_ERRORS, *DATABASE_ERRORS) as exc:
        error = typed(exc, what)
        assert error is not None
        raise error from exc
