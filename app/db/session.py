"""The one place that creates SQLAlchemy engines and sessions.

Engines are cached per URL and per process: a forked child must not reuse its parent's connections, so the cache
is keyed by pid. SQLite gets WAL and a busy timeout, because the demo's workers and client write to one file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

#: Seconds a PostgreSQL connect waits for the server before it fails.
CONNECT_TIMEOUT_S = 5
_ENGINES: dict[tuple[int, str], Engine] = {}


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=15000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def get_engine(url: str) -> Engine:
    key = (os.getpid(), url)
    engine = _ENGINES.get(key)
    if engine is None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 15})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            # A connect gives up after CONNECT_TIMEOUT_S (a database that does not answer fails fast and typed, see
            # app.outage); keepalives notice a peer that vanished without closing the connection.
            engine = create_engine(
                url,
                pool_pre_ping=True,
                pool_size=5,
                max_overflow=5,
                connect_args=(
                    {"connect_timeout": CONNECT_TIMEOUT_S, "keepalives": 1, "keepalives_idle": 10}
                    if url.startswith("postgresql")
                    else {}
                ),
            )
        _ENGINES[key] = engine
    return engine


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A transaction: commit on success, roll back on error."""
    maker = sessionmaker(get_engine(url), expire_on_commit=False)
    with maker() as session, session.begin():
        yield session
