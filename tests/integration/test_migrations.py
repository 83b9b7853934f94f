"""Alembic migrations build exactly the schema the code declares, on PostgreSQL and on SQLite."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.db.migrate import current_revision, ensure_current, head_revision, upgrade
from app.db.schema import Base
from app.db.session import get_engine
from app.localservers import create_database

pytestmark = pytest.mark.integration


def _diff(url: str) -> list:
    with get_engine(url).connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def test_postgres_migrations_match_the_schema(postgres_url):
    url = create_database(postgres_url, "t_migrations_pg")
    upgrade(url)
    assert current_revision(url) == head_revision()
    assert _diff(url) == []


def test_sqlite_migrations_match_the_schema_and_are_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path}/m.db"
    ensure_current(url)
    ensure_current(url)
    assert current_revision(url) == head_revision()
    assert _diff(url) == []
