"""Reading the fleet: a database that fails is DatabaseUnavailable with the driver's error, never "no versions"."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from app.errors import DatabaseUnavailable
from app.settings import Settings
from beat import fleet_state


def test_a_database_error_is_database_unavailable_with_its_cause(monkeypatch, tmp_path):
    refused = OperationalError("SELECT device.id FROM device", {}, ConnectionRefusedError("connection refused"))

    def down(session):
        raise refused

    monkeypatch.setattr(fleet_state.device_rows, "all_devices", down)
    settings = Settings.from_env({"MAAS_HOME": str(tmp_path)})
    with pytest.raises(DatabaseUnavailable, match="connection refused") as info:
        fleet_state.read(None, None, settings, now=0.0)
    assert info.value.__cause__ is refused
    assert info.value.code == "DATABASE_UNAVAILABLE"
