"""NVML failures are answered with None, never silently: logged with the traceback, once loudly, then quietly."""

from __future__ import annotations

import logging
import sys
import types

from workers import nvml


class NVMLError_GpuIsLost(Exception):  # named as pynvml names it
    pass


def fake_pynvml(monkeypatch) -> None:
    module = types.ModuleType("pynvml")
    module.nvmlInit = lambda: None
    module.nvmlShutdown = lambda: None

    def lost(index):
        raise NVMLError_GpuIsLost("GPU is lost")

    module.nvmlDeviceGetHandleByIndex = lost
    monkeypatch.setitem(sys.modules, "pynvml", module)


def nvml_records(caplog):
    return [r for r in caplog.records if getattr(r, "event", None) == "nvml_failed"]


def test_no_pynvml_means_no_gpu_and_says_why(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(nvml, "_reported", set())
    with caplog.at_level(logging.DEBUG, "maas.worker"):
        assert nvml.gpus() is None
    (record,) = nvml_records(caplog)
    assert record.levelno == logging.INFO and record.exc_info is not None


def test_a_failing_call_is_logged_with_its_traceback_once_loudly(monkeypatch, caplog):
    fake_pynvml(monkeypatch)
    monkeypatch.setattr(nvml, "_reported", set())
    with caplog.at_level(logging.DEBUG, "maas.worker"):
        assert nvml.usage(0) is None
        assert nvml.usage(0) is None
        assert nvml.process_used_bytes(0) is None
    first, again, other = nvml_records(caplog)
    assert (first.levelno, again.levelno, other.levelno) == (logging.WARNING, logging.DEBUG, logging.WARNING)
    assert isinstance(first.exc_info[1], NVMLError_GpuIsLost)
    assert first.reason == "NVMLError_GpuIsLost: GPU is lost"
