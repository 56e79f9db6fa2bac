"""Structured logs: one line per event, key=value (text) or JSON, with secrets never passed in."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from redis_backup.progress import clear_line

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


Describe = Callable[[BaseException], str]
_describe: Describe = str  # how an error given as a field is written: with the settings to check


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: _describe(v) if isinstance(v, BaseException) else v for k, v in vars(record).items() if k not in _STD}


def _stamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={_quote(v)}" for k, v in _fields(record).items())
        line = f"{_stamp(record)} {record.levelname.lower():7} {record.getMessage()}"
        line = f"{line} {extra}" if extra else line
        if record.exc_info:  # LOG_LEVEL=debug on an internal error: the traceback, after its line
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": _stamp(record), "level": record.levelname.lower(), "msg": record.getMessage()}
        doc.update(_fields(record))
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def _quote(v: Any) -> str:
    s = str(v)
    return json.dumps(s) if (" " in s or "=" in s or '"' in s or not s) else s


class _Handler(logging.StreamHandler[TextIO]):
    """Lines on stderr, each on a line of its own: a progress line shown there is erased first."""

    def emit(self, record: logging.LogRecord) -> None:
        clear_line()
        super().emit(record)


def setup(level: str = "info", fmt: str = "text", describe: Describe = str) -> None:
    global _describe
    _describe = describe
    handler = _Handler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("redis_backup")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
