"""Structured logs: one JSON object per line, so a log pipeline can parse them without regexes."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _RESERVED)
        line = f"{self.formatTime(record)} {record.levelname:7} {record.name}: {record.getMessage()} {extra}".rstrip()
        return f"{line}\n{self.formatException(record.exc_info)}" if record.exc_info else line


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Route the root logger (and so Celery's) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def quiet(level: str, *loggers: str) -> None:
    """Raise ``loggers`` to WARNING unless the process logs at DEBUG: for Celery's per-task INFO lines in processes
    that run a task every second or so while the fleet is idle (beat's "Sending due task", the controller's
    "Task received" and "succeeded"). Failures are WARNING or ERROR and still show."""
    if level != "DEBUG":
        for name in loggers:
            logging.getLogger(name).setLevel(logging.WARNING)


def event(
    logger: logging.Logger,
    name: str,
    level: int = logging.INFO,
    *,
    exc_info: BaseException | None = None,
    **fields: Any,
) -> None:
    """Log one event with its fields as top-level keys (model, version, worker, replica, reason...).

    ``exc_info``: an exception whose traceback goes with the event (the ``exc`` key in JSON logs).
    """
    logger.log(level, name, exc_info=exc_info, extra={"event": name, **fields})
