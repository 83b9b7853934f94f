"""Signing, secret masking, TLS options and the poison checks, without servers."""

from __future__ import annotations

import json
import ssl

import pytest

from app import errors, signing
from app.celery_app import broker_ssl
from app.cli import build_parser
from app.settings import Settings, describe, mask_url
from workers import batching, poison
from workers.tasks import _infer_args

KEY = "k" * 32
JSON_TYPE = {"content-type": "application/json"}


def test_signing_key_is_validated_and_never_shown(tmp_path):
    with pytest.raises(errors.ConfigError, match="MAAS_SIGNING_KEY.*at least 32") as caught:
        Settings.from_env({"MAAS_HOME": str(tmp_path), "MAAS_SIGNING_KEY": "short-secret"})
    assert "short-secret" not in str(caught.value)  # not even a wrong key is repeated
    with pytest.raises(errors.ConfigError) as caught:
        Settings.from_env({"MAAS_HOME": str(tmp_path), "REDIS_URL": "http://:pw@h/0"})
    assert ":pw@" not in str(caught.value)
    env = {"MAAS_HOME": str(tmp_path), "MAAS_SIGNING_KEY": KEY, "REDIS_URL": "redis://:pw@h:6379/0"}
    shown = {v.name: v.current for v in describe(env)}
    assert shown["MAAS_SIGNING_KEY"] == "***" and KEY not in json.dumps(shown)
    assert shown["REDIS_URL"] == "redis://:***@h:6379/0" == mask_url("redis://:pw@h:6379/0")


def test_control_signatures_bind_task_id_and_arguments():
    sig = signing.control_signature(KEY, "maas.drain", "id-1", [7, "u"], {})
    signing.check_control(KEY, "maas.drain", "id-1", (7, "u"), None, sig)  # tuples and None read as sent
    for task, task_id, args in [
        ("maas.unload", "id-1", [7, "u"]),
        ("maas.drain", "id-2", [7, "u"]),
        ("maas.drain", "id-1", [8, "u"]),
    ]:
        with pytest.raises(errors.ForgedMessage, match="does not match"):
            signing.check_control(KEY, task, task_id, args, {}, sig)
    with pytest.raises(errors.ForgedMessage, match="no signature"):
        signing.check_control(KEY, "maas.drain", "id-1", [7, "u"], {}, None)
    signing.check_control("", "maas.drain", "id-1", [7, "u"], {}, None)  # no key: accepted (with a warning)


def test_result_signatures_cover_every_byte():
    payload = json.dumps({"status": "SUCCESS", "result": 1, "task_id": "t"})
    signed = signing.sign_result(KEY, payload)
    assert signing.verify_result(KEY, signed) == payload and json.loads(signed)["maas_sig"]
    with pytest.raises(errors.ForgedMessage):
        signing.verify_result(KEY, signed.replace('"result": 1', '"result": 2'))
    with pytest.raises(errors.ForgedMessage):
        signing.verify_result("x" * 32, signed)
    with pytest.raises(errors.ForgedMessage, match="no signature"):
        signing.verify_result(KEY, payload)


def test_rediss_urls_give_kombu_tls_options():
    assert broker_ssl("redis://h:6379/0") is None
    assert broker_ssl("rediss://:pw@h:6380/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    options = broker_ssl("rediss://h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem&ssl_certfile=/c&ssl_keyfile=/k")
    assert options == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/c",
        "ssl_keyfile": "/k",
    }
    with pytest.raises(errors.ConfigError, match="ssl_cert_reqs"):
        broker_ssl("rediss://h/0?ssl_cert_reqs=maybe")


def test_flower_binds_loopback_unless_told():
    args = build_parser().parse_args(["flower"])
    assert args.address == "127.0.0.1"


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ([1], "not a JSON object"),
        ({"properties": {}}, "delivery_tag"),
        ({"properties": {"delivery_tag": "t", "delivery_info": []}}, "delivery_info"),
        ({"properties": {"delivery_tag": "t"}, "headers": "x"}, "headers"),
        ({"properties": {"delivery_tag": "t"}, "headers": {"id": "i"}}, "no task name"),
        ({"properties": {"delivery_tag": "t"}, "headers": {"id": "i", "task": "t"}, "body": 3}, "body is not a string"),
        (
            {"properties": {"delivery_tag": "t"}, "headers": {"id": "i", "task": "t"}, "body": "{", **JSON_TYPE},
            "not JSON",
        ),
        (
            {
                "properties": {"delivery_tag": "t", "body_encoding": "base64"},
                "headers": {"id": "i", "task": "t"},
                **JSON_TYPE,
            },
            "not JSON",
        ),
        (
            {"properties": {"delivery_tag": "t"}, "headers": {"id": "i", "task": "t"}, "body": "[1]", **JSON_TYPE},
            "[args, kwargs",
        ),
    ],
)
def test_popped_items_kombu_cannot_take_are_named(item, problem):
    assert problem in (poison.kombu_shape_error(item) or "")


def test_a_celery_message_passes():
    from app.broker.layout import celery_message

    message = celery_message("maas.infer", "id-1", ["m", None, []], {}, {}, "m.m", 5)
    assert poison.kombu_shape_error(json.loads(message)) is None


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {}),
        ((1, None, []), {}),
        (("m", "1", []), {}),
        (("m", True, []), {}),
        (("m", None, "x"), {}),
        (("m", None, [1]), {}),
        (("m", None, []), {"deadline_at": "soon"}),
        (("m", None, []), {"ref": 3}),
        (("m", None, [], None, None, False, "extra"), {}),
        (("m", None, []), {"unknown": 1}),
    ],
)
def test_infer_arguments_of_the_wrong_shape_are_malformed(args, kwargs):
    with pytest.raises(errors.MalformedMessage):
        _infer_args(args, kwargs)


def test_infer_arguments_of_the_right_shape_pass():
    assert _infer_args(("m", 2, [{"name": "x"}]), {"deadline_at": 1.5}) == ("m", 2, [{"name": "x"}], 1.5, None, False)


def test_result_limit_replaces_an_oversized_answer():
    import numpy as np

    from app.signature import TensorSpec
    from workers.cache import Loaded

    class Echo:
        def infer(self, arrays):
            return {"y": np.repeat(arrays["x"], 100, axis=1)}

    spec = (TensorSpec("x", "FP32", (-1, 4)),)
    loaded = Loaded(1, "m", 1, Echo(), spec, 0)  # type: ignore[arg-type]
    x = [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]
    small, big = batching.Member(None, "m", None, x, None), batching.Member(None, "m", None, x, None)
    batching.execute([small], loaded, "w", batching.Limits(10_000, 10_000))
    assert small.result is not None
    batching.execute([big], loaded, "w", batching.Limits(10_000, 1_000))
    assert isinstance(big.error, errors.ResultTooLarge) and big.result is None
    tiny = batching.Member(None, "m", None, x, None, size=5000)
    batching.execute([tiny], loaded, "w", batching.Limits(1_000, 10_000))
    assert isinstance(tiny.error, errors.RequestTooLarge)
