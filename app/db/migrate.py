"""Schema migrations through Alembic, driven from code so ``maas db upgrade`` needs no alembic.ini."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from app.db.session import get_engine

_SCRIPTS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (idempotent)."""
    # On SQLite, Alembic's batch mode rebuilds a table (copy, drop, rename) to alter it; with foreign keys
    # enforced, dropping a referenced table fails. The pragma cannot change inside a transaction, so migrations
    # get their own engine without the session engine's pragmas (SQLite leaves foreign keys off by default).
    engine = create_engine(url) if url.startswith("sqlite") else get_engine(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        if engine is not get_engine(url):
            engine.dispose()


def current_revision(url: str) -> str | None:
    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head() or ""


def ensure_current(url: str) -> None:
    """Upgrade when behind. Used by every entry point so the embedded SQLite default needs no separate step."""
    if current_revision(url) != head_revision():
        upgrade(url)
