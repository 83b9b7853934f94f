import dataclasses
import json
from pathlib import Path

import pytest

from app.cli import main
from app.errors import ConfigError
from app.settings import (
    FIELDS,
    Settings,
    describe,
    format_size_bytes,
    format_virtual_devices,
    parse_size_bytes,
    parse_virtual_devices,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8GiB", 8 * 1024**3), ("512MiB", 512 * 1024**2), ("2G", 2 * 10**9), ("1048576", 1048576), ("1.5GiB", 1610612736)],
)
def test_sizes(text, expected):
    assert parse_size_bytes(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2x8GiB", (8 * 1024**3,) * 2), ("8GiB,16GiB", (8 * 1024**3, 16 * 1024**3)), ("", ()), ("1x1GiB", (1024**3,))],
)
def test_virtual_devices(text, expected):
    assert parse_virtual_devices(text) == expected


def test_defaults_are_valid_and_sqlite_is_the_embedded_default(tmp_path):
    s = Settings.from_env({"MAAS_HOME": str(tmp_path)})
    assert s.sqlalchemy_url == f"sqlite:///{tmp_path}/maas.db"
    assert s.default_priority == 5 and s.visibility_timeout_s > s.load_timeout_s


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"MAAS_HEARTBEAT_S": "soon"}, "MAAS_HEARTBEAT_S='soon'"),
        ({"MAAS_DEFAULT_PRIORITY": "12"}, "MAAS_DEFAULT_PRIORITY='12'"),
        ({"MAAS_VIRTUAL_DEVICES": "twoxbig"}, "MAAS_VIRTUAL_DEVICES"),
        ({"MAAS_DEVICE_MODE": "tpu"}, "MAAS_DEVICE_MODE='tpu'"),
        ({"MAAS_FLOWER_BASIC_AUTH": "admin"}, "MAAS_FLOWER_BASIC_AUTH"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"MAAS_VISIBILITY_TIMEOUT_S": "10", "MAAS_LOAD_TIMEOUT_S": "20"}, "MAAS_VISIBILITY_TIMEOUT_S=10"),
        ({"MAAS_HEARTBEAT_S": "5", "MAAS_HEARTBEAT_TIMEOUT_S": "2"}, "MAAS_HEARTBEAT_TIMEOUT_S=2"),
    ],
)
def test_invalid_values_fail_naming_the_variable(env, names):
    with pytest.raises(ConfigError, match=names.replace("(", r"\(")):
        Settings.from_env(env)


def test_every_field_has_a_variable_and_help():
    assert all(var and help_text for var, help_text in FIELDS)
    assert {"REDIS_URL", "DATABASE_URL", "MAAS_VIRTUAL_DEVICES"} <= {v for v, _ in FIELDS}


def test_policy_params_follow_the_typical_time_and_the_aging_factor():
    params = Settings.from_env({"MAAS_TYPICAL_SERVICE_S": "0.2", "MAAS_AGING_BACKLOG_FACTOR": "3"}).policy_params()
    assert params.aging_backlog_factor == 3.0 and params.aging_threshold_s == pytest.approx(1.0)
    assert Settings.from_env({}).policy_params().aging_backlog_factor == 2.0
    with pytest.raises(ConfigError, match="MAAS_AGING_BACKLOG_FACTOR"):
        Settings.from_env({"MAAS_AGING_BACKLOG_FACTOR": "-1"})


# --- what `maas config` shows ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n_bytes", "text"),
    [
        (4 * 1024**3, "4GiB"),
        (512 * 1024**2, "512MiB"),
        (3 * 1024, "3KiB"),
        (2 * 1024**4, "2TiB"),
        (1500, "1500"),
        (0, "0"),
    ],
)
def test_sizes_are_written_back_exactly(n_bytes, text):
    assert format_size_bytes(n_bytes) == text
    assert parse_size_bytes(text) == n_bytes


@pytest.mark.parametrize("text", ["2x8GiB", "8GiB,16GiB", "", "2x4GiB,16GiB", "1500"])
def test_virtual_devices_are_written_back_as_declared(text):
    assert format_virtual_devices(parse_virtual_devices(text)) == text


@pytest.fixture
def bare_env(monkeypatch):
    """The process environment without any variable the settings read (the CLI reads os.environ)."""
    for var, _ in FIELDS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/state")
    return monkeypatch


def by_name(variables):
    return {v.name: v for v in variables}


def test_every_default_shown_can_be_set_back_as_is():
    for field in dataclasses.fields(Settings):
        if field.default is None:
            continue
        shown = field.metadata["show"](field.default)
        assert Settings.from_env({field.metadata["env"]: shown}) == Settings.from_env({}), field.name


def test_an_empty_environment_shows_only_defaults():
    variables = describe({"XDG_STATE_HOME": "/srv/state"})
    assert [v.name for v in variables] == [var for var, _ in FIELDS]
    assert not any(v.differs or v.is_set or v.error for v in variables)
    shown = {v.name: v.current for v in variables}
    assert shown["MAAS_HOME"] == "/srv/state/maas"
    assert shown["MAAS_VIRTUAL_DEVICES"] == "2x8GiB" and shown["MAAS_MAX_ARTIFACT_BYTES"] == "4GiB"
    assert shown["MAAS_ALLOCATION"] == "true" and shown["MAAS_VISIBILITY_TIMEOUT_S"] == "1800"
    assert shown["DATABASE_URL"] == "" and shown["MAAS_ENTRYPOINT_ALLOW"] == ""


@pytest.mark.parametrize(
    ("env", "name", "current", "differs"),
    [
        ({"MAAS_POLICY": "sjf"}, "MAAS_POLICY", "sjf", True),
        ({"MAAS_HEARTBEAT_S": "5.0"}, "MAAS_HEARTBEAT_S", "5", False),  # set, written differently, same value
        ({"MAAS_ALLOCATION": "off"}, "MAAS_ALLOCATION", "false", True),
        ({"MAAS_VIRTUAL_DEVICES": "8GiB,8GiB"}, "MAAS_VIRTUAL_DEVICES", "2x8GiB", False),
        ({"MAAS_VIRTUAL_DEVICES": ""}, "MAAS_VIRTUAL_DEVICES", "", True),  # "" declares no virtual device
        ({"MAAS_POLICY": ""}, "MAAS_POLICY", "fifo", False),  # elsewhere an empty value means the default
        ({"MAAS_ENTRYPOINT_ALLOW": "mypkg, other.models"}, "MAAS_ENTRYPOINT_ALLOW", "mypkg,other.models", True),
        ({"MAAS_HOME": "/var/lib/maas"}, "MAAS_HOME", "/var/lib/maas", True),
        ({"MAAS_TYPICAL_SERVICE_S": "0.1234567"}, "MAAS_TYPICAL_SERVICE_S", "0.1234567", True),  # not rounded
    ],
)
def test_the_current_value_is_the_one_the_fleet_uses(env, name, current, differs):
    variable = by_name(describe(env))[name]
    assert (variable.current, variable.differs, variable.error) == (current, differs, "")
    assert variable.is_set == (env[name] != "" or name == "MAAS_VIRTUAL_DEVICES")


def test_an_invalid_value_is_shown_with_its_reason_not_raised():
    variable = by_name(describe({"MAAS_DEFAULT_PRIORITY": "12"}))["MAAS_DEFAULT_PRIORITY"]
    assert variable.current == "12" and variable.differs and "0 (highest) to 9 (lowest)" in variable.error


@pytest.mark.parametrize(
    ("env", "name", "current"),
    [
        ({"REDIS_URL": "redis://:s3cret@cache:6379/0"}, "REDIS_URL", "redis://:***@cache:6379/0"),
        (
            {"DATABASE_URL": "postgresql+psycopg://maas:s3cret@db:5432/maas"},
            "DATABASE_URL",
            "postgresql+psycopg://maas:***@db:5432/maas",
        ),
        ({"DATABASE_URL": "postgresql+psycopg://maas@db/maas"}, "DATABASE_URL", "postgresql+psycopg://maas@db/maas"),
        ({"MAAS_FLOWER_BASIC_AUTH": "admin:s3cret,ops:other"}, "MAAS_FLOWER_BASIC_AUTH", "admin:***,ops:***"),
    ],
)
def test_passwords_are_masked(env, name, current):
    assert by_name(describe(env))[name].current == current


def test_the_default_home_follows_xdg_state_home_and_ignores_an_empty_one():
    assert Settings.from_env({"XDG_STATE_HOME": "/srv/state"}).home == Path("/srv/state/maas")
    assert Settings.from_env({"XDG_STATE_HOME": ""}).home == Path.home() / ".local" / "state" / "maas"


def test_maas_config_prints_default_and_current_and_marks_differences(bare_env, capsys):
    bare_env.setenv("MAAS_POLICY", "aging")
    bare_env.setenv("MAAS_HOME", "/tmp/fleet-home")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in out.splitlines()[2:] if line}
    assert rows["MAAS_POLICY"].split() == ["*", "MAAS_POLICY", "fifo", "aging"]
    assert rows["MAAS_LOG_LEVEL"].split() == ["MAAS_LOG_LEVEL", "INFO", "INFO"]
    assert "Fleet scheduling policy" in out  # each meaning under its variable
    assert "artifact store  /tmp/fleet-home/artifacts" in out
    assert "database        sqlite:////tmp/fleet-home/maas.db" in out


def test_maas_config_changed_lists_only_the_differences(bare_env, capsys):
    bare_env.setenv("MAAS_MAX_QUEUE", "500")
    assert main(["config", "--changed"]) == 0
    out = capsys.readouterr().out
    assert "MAAS_MAX_QUEUE" in out and "MAAS_POLICY" not in out


def test_maas_config_reports_every_invalid_value_and_exits_2(bare_env, capsys):
    bare_env.setenv("MAAS_HEARTBEAT_S", "soon")
    bare_env.setenv("MAAS_DEVICE_MODE", "tpu")
    assert main(["config", "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    bad = {v["name"]: v for v in doc["variables"] if v["error"]}
    assert set(bad) == {"MAAS_HEARTBEAT_S", "MAAS_DEVICE_MODE"}
    assert bad["MAAS_DEVICE_MODE"]["current"] == "tpu" and bad["MAAS_DEVICE_MODE"]["default"] == "auto"
    assert "MAAS_DEVICE_MODE='tpu'" in doc["error"] and doc["where"] == {}  # the first one, as at start


def test_maas_config_reports_a_cross_variable_error(bare_env, capsys):
    bare_env.setenv("MAAS_LOAD_TIMEOUT_S", "4000")
    assert main(["config"]) == 2
    out = capsys.readouterr().out
    assert "configuration error" in out and "MAAS_VISIBILITY_TIMEOUT_S=1800 must exceed" in out


def test_sentinel_urls_and_durability_settings() -> None:
    from app.broker.clients import sentinel_parts

    url = "sentinel://:secret@198.18.0.2:26379;sentinel://198.18.0.3;sentinel://198.18.0.4:26380/2"
    settings = Settings.from_env({"REDIS_URL": url, "MAAS_REDIS_WAIT_REPLICAS": "1"})
    assert settings.uses_sentinel and settings.redis_sentinel_master == "maas" and settings.redis_wait_replicas == 1
    assert sentinel_parts(url) == ([("198.18.0.2", 26379), ("198.18.0.3", 26379), ("198.18.0.4", 26380)], 2, "secret")
    shown = {v.name: v.current for v in describe({"REDIS_URL": url})}
    assert shown["REDIS_URL"].startswith("sentinel://:***@198.18.0.2:26379;") and "secret" not in shown["REDIS_URL"]
    with pytest.raises(ConfigError, match="every ';'-separated part"):
        Settings.from_env({"REDIS_URL": "sentinel://a:26379;redis://b:6379"})
    with pytest.raises(ConfigError, match="MAAS_REDIS_WAIT_REPLICAS"):
        Settings.from_env({"MAAS_REDIS_WAIT_REPLICAS": "-1"})
