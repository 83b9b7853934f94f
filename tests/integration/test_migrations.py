"""Alembic migrations build exactly the schema the code declares, on PostgreSQL and on SQLite."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.db.migrate import current_revision, ensure_current, head_revision, upgrade
from app.db.schema import Base
from app.db.session import get_engine
from harness.servers import create_database

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


def _fill_0001(url: str) -> None:
    from sqlalchemy import text

    with get_engine(url).begin() as conn:
        conn.execute(
            text("INSERT INTO model (id, name, description, created_at) VALUES (1, 'm', '', CURRENT_TIMESTAMP)")
        )
        conn.execute(
            text(
                "INSERT INTO model_version (id, model_id, version, artifact_uri, sha256, size_bytes, runtime, inputs,"
                " outputs, mem_bytes, service_ms, created_at) VALUES (1, 1, 1, 'file:///a', 'x', 1, 'onnx', '[]', '[]',"
                " 1, 1.0, CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                'INSERT INTO device (id, worker_name, host, "index", uuid, name, kind, mem_bytes, status, started_at,'
                " heartbeat_at) VALUES (1, 'w', 'h', 0, 'u', 'n', 'virtual', 1, 'online', CURRENT_TIMESTAMP,"
                " CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO replica (id, version_id, device_id, state, reason, created_at, updated_at)"
                " VALUES (1, 1, 1, 'READY', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_upgrading_a_populated_database_keeps_its_rows(backend, postgres_url, tmp_path):
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path}/old.db" if backend == "sqlite" else create_database(postgres_url, "t_mig_data")
    upgrade(url, "0001")
    _fill_0001(url)
    upgrade(url)
    with get_engine(url).connect() as conn:
        assert conn.execute(text("SELECT name, keep_warm, min_replicas FROM model")).one() == ("m", False, 0)
        assert conn.execute(text("SELECT state FROM replica")).scalar() == "READY"
        assert conn.execute(text("SELECT speed FROM device")).scalar() == 1.0
    assert _diff(url) == []
