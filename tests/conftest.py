"""Fixtures: real redis-server and PostgreSQL for the session, a fresh database and Redis per test.

Set TEST_REDIS_URL / TEST_DATABASE_URL to use servers you already run instead of throwaway ones.

Shared helpers are fixtures that return a function, bound to the test's fleet:

- ``register(name, path, **kw)``: register a model version (as ``maas model register``); returns its number.
- ``configure(name, **changes)``: change a model's serving settings (as ``maas model set``) and invalidate the
  test client's scheduler caches for it, so the next request is decided with the new settings.
- ``stop_model(ref)``: stop every replica of ``ref`` and wait until each is STOPPED.
- ``done_order(items, key=...)``: ``items`` sorted by when their requests' results were stored.
- ``serve_lm(name)``: register the tiny generative model (``lm``) as ``name``, start worker ``w0@test`` and load
  it; returns the in-process runtime that says what the fleet must answer.
"""

from __future__ import annotations

import os
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from harness import tiny_lm
from harness.fleet import Fleet
from harness.servers import Server, create_database, start_postgres, start_redis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if os.environ.get("TEST_REDIS_URL"):
        yield os.environ["TEST_REDIS_URL"]
        return
    server = start_redis()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if os.environ.get("TEST_DATABASE_URL"):
        yield os.environ["TEST_DATABASE_URL"]
        return
    server = start_postgres()
    yield server.url
    server.stop()


@pytest.fixture
def env(request: pytest.FixtureRequest, redis_url: str, postgres_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment of one test's fleet: its own database, an empty Redis, short heartbeats."""
    redis.Redis.from_url(redis_url).flushall()
    # Unique per test (parametrized ids can share a long prefix); the suffix keeps names readable in psql.
    db_name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:8]
    db_url = create_database(postgres_url, db_name)
    from app.db.migrate import upgrade

    upgrade(db_url)
    return {
        "REDIS_URL": redis_url,
        "DATABASE_URL": db_url,
        "MAAS_HOME": str(tmp_path / "home"),
        "MAAS_VIRTUAL_DEVICES": "2x2GiB",
        "MAAS_HEARTBEAT_S": "0.5",
        "MAAS_HEARTBEAT_TIMEOUT_S": "3",
        "MAAS_LOG_FORMAT": "json",
        # Off unless a test is about allocation: a queued request would otherwise ask for a replica by itself.
        "MAAS_ALLOCATION": "false",
        # Every test fleet signs its control messages and results with a key of its own.
        "MAAS_SIGNING_KEY": secrets.token_hex(32),
    }


@pytest.fixture
def settings(env: dict[str, str]):
    from app.settings import Settings

    return Settings.from_env(env)


@pytest.fixture
def client(settings):
    from app.client import Client

    return Client(settings)


@pytest.fixture
def register(settings) -> Callable[..., int]:
    from app import registry
    from app.artifacts import LocalArtifactStore
    from app.db.session import session_scope

    store = LocalArtifactStore(settings.artifact_dir, settings.max_artifact_bytes)

    def register(name: str, path: Path, **kw) -> int:
        with session_scope(settings.sqlalchemy_url) as session:
            return registry.register(session, store, name, path, **kw).version

    return register


@pytest.fixture
def configure(settings, client) -> Callable[..., None]:
    from app import registry
    from app.db.session import session_scope

    def configure(name: str, **changes) -> None:
        with session_scope(settings.sqlalchemy_url) as session:
            registry.configure(session, name, **changes)
        client.scheduler.invalidate(name)

    return configure


@pytest.fixture
def stop_model(client) -> Callable[[str], None]:
    def stop_model(ref: str) -> None:
        for handle in client.stop(ref):
            assert handle.wait()["state"] == "STOPPED"

    return stop_model


@pytest.fixture
def done_order(client) -> Callable[..., list]:
    from celery.result import AsyncResult

    def done_order(items, key: Callable = lambda item: item) -> list:
        """``items`` (handles, or tuples holding one that ``key`` picks) in the order their results were stored."""
        return sorted(items, key=lambda item: AsyncResult(key(item).id, app=client.app).date_done)

    return done_order


@pytest.fixture
def fleet(env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    fleet = Fleet(env, logdir)
    yield fleet
    fleet.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(fleet.logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="session")
def iris(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A logistic-regression classifier on scikit-learn's iris data, exported to ONNX."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    model = LogisticRegression(max_iter=1000).fit(x, y)
    onx = to_onnx(model, x[:1], options={id(model): {"zipmap": False}}, target_opset=17)
    path = tmp_path_factory.mktemp("models") / "iris.onnx"
    path.write_bytes(onx.SerializeToString())
    return {"path": path, "x": x, "y": y, "expected": model.predict(x)}


@pytest.fixture(scope="session")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    """The tiny generative model (a 1,024-token context), packed, and an in-process runtime of it."""
    with tiny_lm.loaded(tmp_path_factory.mktemp("lm"), context=1024) as found:
        yield found


@pytest.fixture
def serve_lm(lm, fleet: Fleet, register, client) -> Callable[[str], Any]:
    def serve_lm(name: str) -> Any:
        artifact, runtime = lm
        register(name, artifact, runtime="causal_lm")
        fleet.worker(0, "w0@test")
        client.load(name).wait(timeout_s=120)
        return runtime

    return serve_lm


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Server]:
    """A redis-server of the test's own (persisting to disk), for tests that stop and restart it."""
    server = start_redis(tmp_path / "redis", appendonly=True)
    yield server
    server.stop()
