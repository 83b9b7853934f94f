"""The command line answers user mistakes and outages with one line, not a traceback (``--debug`` shows it)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app import cli


@pytest.mark.parametrize(
    ("values", "datatype", "dtype"),
    [
        ([[1, 2, 3, 4]], "FP32", np.float32),  # integers given for an FP32 input: converted, nothing lost
        ([[1.5, 2.0]], "FP32", np.float32),
        ([[1, 2]], "INT8", np.int8),
        ([[1.5, 2.0]], "INT32", np.float64),  # a fraction for an integer input: left for the signature check
        ([[300]], "INT8", np.int64),  # out of range: left as it is
        ([[1, 2]], None, np.int64),  # no declared input of that name
        (["a", "b"], "BYTES", np.dtype("<U1")),
    ],
)
def test_cli_numbers_take_the_declared_datatype_only_when_lossless(values, datatype, dtype):
    assert cli._as_declared(np.asarray(values), datatype).dtype == dtype


def test_an_unreachable_redis_is_one_line_naming_the_setting(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("MAAS_HOME", str(tmp_path))
    assert cli.main(["dlq", "list"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: BROKER_UNAVAILABLE: cannot reach Redis") and "REDIS_URL" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    with pytest.raises(Exception, match="Connection refused|Error 111"):
        cli.main(["--debug", "dlq", "list"])


def test_bad_json_and_missing_files_are_named(monkeypatch, tmp_path, capsys):
    assert "not valid JSON" in cli._explain(json.JSONDecodeError("Expecting value", "x", 0))
    assert cli._explain(FileNotFoundError(2, "No such file or directory", "/nope")) == (
        "No such file or directory: /nope"
    )
    monkeypatch.setenv("MAAS_HOME", str(tmp_path))
    assert cli.main(["model", "register", "x", str(tmp_path / "missing.onnx")]) == 1
    assert "ARTIFACT_MISSING" in capsys.readouterr().err


def test_a_size_that_is_not_one_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as usage:
        cli.build_parser().parse_args(["model", "register", "x", "y.onnx", "--mem", "lots"])
    assert usage.value.code == 2
    assert "not a size: 'lots'" in capsys.readouterr().err


def test_an_unreachable_database_is_database_unavailable_after_a_bounded_retry(monkeypatch, capsys, tmp_path):
    import time

    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    monkeypatch.setenv("MAAS_HOME", str(tmp_path))
    monkeypatch.setenv("MAAS_RETRY_MAX_S", "1")
    started = time.monotonic()
    assert cli.main(["status"]) == 1
    took_s = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: DATABASE_UNAVAILABLE: the database did not answer"), err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert took_s < 10, f"took {took_s:.1f}s"  # the retry's budget (1 s) and a connect or two, not minutes
