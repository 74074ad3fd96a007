"""Structured logging: one JSON object per line, fields passed as ``extra=``.

Operators grep and ship these lines, so every field is a plain value and nothing here
ever formats a traceback: an unexpected error is logged as its type and the file:line
where it was raised, which is enough to find the bug and cannot leak request data.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info and record.exc_info[1] is not None:
            line["error"] = where(record.exc_info[1])
        return json.dumps(line, default=str, ensure_ascii=False)


def where(exc: BaseException) -> str:
    """``TypeError at plugin.py:42``: what and where, never the message or a traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} at {last.filename.rsplit('/', 1)[-1]}:{last.lineno}"


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs connection churn at INFO/WARNING with broker addresses only; keep ours readable.
    logging.getLogger("kafka").setLevel(logging.ERROR)
