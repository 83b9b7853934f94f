"""Alembic environment: runs migrations on the connection or URL handed over by ``app.db.migrate``."""

from alembic import context
from sqlalchemy import Connection, create_engine

from app.db.schema import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("alembic config has no sqlalchemy.url; run migrations through app.db.migrate")
    engine = create_engine(url)
    with engine.connect() as conn:
        _migrate(conn)


def _migrate(connection: Connection) -> None:
    # render_as_batch lets ALTER-style migrations work on SQLite, which cannot alter columns in place.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run()
