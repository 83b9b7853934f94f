import pytest

from app.errors import ConfigError
from app.settings import FIELDS, Settings, parse_size_bytes, parse_virtual_devices


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
