import pytest

from app import errors
from app.broker.layout import PRIORITY_SEP, control_queue, model_queue, priority_lists
from app.celery_app import create_app
from app.flower import flower_command
from app.registry import Ref, parse_ref
from app.settings import Settings


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("iris", Ref("iris")),
        ("iris:3", Ref("iris", 3)),
        ("iris@prod", Ref("iris", alias="prod")),
        ("a.b-c_1", Ref("a.b-c_1")),
    ],
)
def test_parse_ref(text, ref):
    assert parse_ref(text) == ref


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("Iris", errors.InvalidModelName),
        ("a:b", errors.UnknownVersion),
        ("a:1@prod", errors.RegistryError),
        ("has:colon:", errors.UnknownVersion),
        ("", errors.InvalidModelName),
    ],
)
def test_bad_refs(text, error):
    with pytest.raises(error):
        parse_ref(text)


def test_queue_names_never_contain_the_priority_separator():
    assert model_queue("iris") == "m.iris" and control_queue("gpu0@host") == "ctl.gpu0@host"
    assert PRIORITY_SEP not in model_queue("a.b-c_1")
    assert priority_lists("m.x")[:3] == ["m.x", "m.x:1", "m.x:2"] and len(priority_lists("m.x")) == 10


def test_celery_accepts_json_only_and_keeps_priorities_honest(tmp_path):
    conf = create_app(Settings.from_env({"MAAS_HOME": str(tmp_path)})).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.result_accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["priority_steps"] == list(range(10))
    assert conf.task_default_priority == 5 and conf.worker_send_task_events


def test_errors_round_trip_by_code():
    err = errors.from_code("INVALID_INPUT", "bad")
    assert isinstance(err, errors.InvalidInput) and str(err) == "INVALID_INPUT: bad"
    assert type(errors.from_code("NO_SUCH_CODE", "x")) is errors.MaasError
    assert len(errors.BY_CODE) == len({c.code for c in errors.BY_CODE.values()})


def test_flower_needs_credentials_unless_local(tmp_path):
    plain = Settings.from_env({"MAAS_HOME": str(tmp_path)})
    with pytest.raises(errors.ConfigError, match="MAAS_FLOWER_BASIC_AUTH is not set"):
        flower_command(plain, local=False, port=None, address="0.0.0.0")
    argv, env = flower_command(plain, local=True, port=None, address="0.0.0.0")
    assert "--address=127.0.0.1" in argv and "FLOWER_BASIC_AUTH" not in env
    secured = Settings.from_env({"MAAS_HOME": str(tmp_path), "MAAS_FLOWER_BASIC_AUTH": "a:b"})
    argv, env = flower_command(secured, local=False, port=8080, address="0.0.0.0")
    assert env["FLOWER_BASIC_AUTH"] == "a:b" and "--port=8080" in argv and not any("a:b" in a for a in argv)
