"""Fixtures of the multi-host tests: one bridge with a ``services`` namespace (Redis, PostgreSQL) per module, and
per test a fresh database, an empty Redis and the hosts the test adds (deleted after it, pass or fail).

They override ``env``, so the shared fixtures (``settings``, ``client``, ``register``...) talk to the services
namespace. Skipped, saying why, where network namespaces cannot be made (not root, no ``ip netns``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from harness.netns import MultiHostFleet, Network, Services, start_services, unavailable
from harness.servers import create_database

pytestmark = [pytest.mark.integration, pytest.mark.multihost]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Network, Services]]:
    why = unavailable()
    if why:
        pytest.skip(why)
    net = Network(tmp_path_factory.mktemp("multihost-logs"))
    try:
        services = start_services(net)
        try:
            yield net, services
        finally:
            services.stop()
    finally:
        net.close()


@pytest.fixture
def env(request: pytest.FixtureRequest, network: tuple[Network, Services], tmp_path: Path) -> dict[str, str]:
    _net, services = network
    redis.Redis.from_url(services.redis_url).flushall()
    db_name = "mh_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:8]
    db_url = create_database(services.postgres_url, db_name)
    from app.db.migrate import upgrade

    upgrade(db_url)
    return {
        "REDIS_URL": services.redis_url,
        "DATABASE_URL": db_url,
        "MAAS_HOME": str(tmp_path / "home"),  # one filesystem: the artifact store is shared as on an NFS mount
        "MAAS_VIRTUAL_DEVICES": "2x2GiB",
        "MAAS_HEARTBEAT_S": "0.5",
        "MAAS_HEARTBEAT_TIMEOUT_S": "3",
        "MAAS_REAP_PERIOD_S": "1",
        "MAAS_VISIBILITY_TIMEOUT_S": "60",
        "MAAS_LOAD_TIMEOUT_S": "30",
        "MAAS_LOG_FORMAT": "json",
        "MAAS_ALLOCATION": "false",
    }


@pytest.fixture
def hosts(network: tuple[Network, Services], env: dict[str, str], request: pytest.FixtureRequest):
    net, _services = network
    fleet = MultiHostFleet(net, env)
    yield fleet
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(fleet.logs())
    fleet.close()
