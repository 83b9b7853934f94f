"""docker-compose.yml checked without a Docker engine: it parses, its commands exist, its variables are read."""

from pathlib import Path

import pytest
import yaml

from app.cli import build_parser
from app.settings import FIELDS

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
FLEET = {name: svc for name, svc in SERVICES.items() if svc.get("command", [None])[0] == "maas"}


def test_has_the_services_the_design_needs():
    assert {"redis", "postgres", "migrate", "beat", "controller", "flower"} <= set(SERVICES)
    assert [n for n in SERVICES if n.startswith("worker-gpu")], "one worker per GPU"
    assert "--appendonly" in SERVICES["redis"]["command"] and "noeviction" in SERVICES["redis"]["command"]


@pytest.mark.parametrize("name", sorted(FLEET))
def test_every_command_exists_in_the_cli(name):
    build_parser().parse_args(FLEET[name]["command"][1:])  # SystemExit on an unknown command or option


@pytest.mark.parametrize("name", sorted(FLEET))
def test_every_variable_set_is_one_the_settings_read(name):
    known = {var for var, _ in FIELDS}
    assert set(FLEET[name]["environment"]) <= known


def test_workers_reserve_their_own_gpu_and_flower_requires_auth():
    for name, svc in SERVICES.items():
        if name.startswith("worker-gpu"):
            (reservation,) = svc["deploy"]["resources"]["reservations"]["devices"]
            assert reservation["capabilities"] == ["gpu"] and len(reservation["device_ids"]) == 1
    assert "MAAS_FLOWER_BASIC_AUTH" in SERVICES["flower"]["environment"]
    assert "--local" not in SERVICES["flower"]["command"]


def test_beats_tasks_run_on_the_controller_not_on_gpu_workers():
    # Without a controller nothing would run the solves and aging passes; with workers also taking them, a solve
    # would hold a GPU worker's one slot.
    assert SERVICES["controller"]["command"] == ["maas", "controller"]
    for name, svc in SERVICES.items():
        if name.startswith("worker-gpu"):
            assert svc["environment"]["MAAS_WORKER_SYSTEM_TASKS"] == "false"
