"""Structured logging: one JSON object per line, fields passed as ``extra=``.

Operators grep and ship these lines, so every field is a plain value and nothing here
ever formats a traceback: an unexpected error is logged as its type and the file:line
where it was raised, which is enough to find the bug and cannot leak request data.

Every request writes a line, so a line must be cheap: in bench/ the logging machinery
was a sixth of a request's CPU.  Lines are formatted without a throwaway encoder, and
INFO lines are written in batches, at most :data:`FLUSH_INTERVAL` seconds late, instead
of one ``write`` each; warnings and errors are written at once, and every pending line
at exit.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from typing import Any, TextIO

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
FLUSH_INTERVAL = 0.2


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        # ASCII: a request path may carry U+2028, U+2029 or U+0085, which many readers take
        # for line breaks, so a line of ours could be cut into a forged-looking second one.
        self._encode = json.JSONEncoder(default=str).encode
        self._second, self._stamp = -1, ""

    def format(self, record: logging.LogRecord) -> str:
        fields = {key: value for key, value in record.__dict__.items() if key not in _STANDARD}
        if record.exc_info and record.exc_info[1] is not None:
            fields["error"] = where(record.exc_info[1])
        return self.line(record.created, record.levelname, record.name, record.getMessage(), fields)

    def line(self, created: float, level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
        """The one place a line is laid out: for a record, and for :func:`log_fields` without one."""
        second = int(created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._encode({"ts": f"{self._stamp}.{int((created - second) * 1000):03d}Z", "level": level.lower(),
                             "logger": logger, "msg": message, **fields})


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes INFO and below in batches (see the module docstring)."""

    def __init__(self, stream: TextIO, interval: float = FLUSH_INTERVAL) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._interval = interval
        self._flusher: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        try:
            self._add(self.format(record), record.levelno)
        except Exception:
            self.handleError(record)

    def _add(self, line: str, level: int) -> None:
        self._pending.append(line + "\n")
        if level >= logging.WARNING or len(self._pending) >= 512:
            self._write()
        elif len(self._pending) == 1 and (self._flusher is None or not self._flusher.is_alive()):  # also after a fork
            self._flusher = threading.Thread(target=self._flush_now_and_then, name="webhookbus-log", daemon=True)
            self._flusher.start()

    def add_info(self, logger: str, message: str, fields: dict[str, Any]) -> None:
        """An INFO line laid out as :meth:`emit` would, without a LogRecord."""
        line = self.formatter.line(time.time(), "INFO", logger, message, fields)  # type: ignore[union-attr]
        with self.lock:  # type: ignore[union-attr]
            self._add(line, logging.INFO)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def _write(self) -> None:
        if self._pending:
            lines, self._pending = "".join(self._pending), []
            self.stream.write(lines)
            self.stream.flush()

    def _flush_now_and_then(self) -> None:
        while True:
            time.sleep(self._interval)
            self.flush()


def log_fields(logger: logging.Logger, level: int, message: str, fields: dict[str, Any]) -> None:
    """``logger.log(level, message, extra=fields)``, for the line every request writes.

    A LogRecord and the handler chain cost more than the line itself (bench/README.md): when
    :func:`configure`'s handler is the only one that would see an INFO line, the line goes to
    it directly.  Any other handler or filter on the way (an operator's, pytest's caplog)
    gets the record as usual.
    """
    if not logger.isEnabledFor(level):
        return
    handler = _direct_handler(logger) if level == logging.INFO else None
    if handler is None:
        logger.log(level, message, extra=fields)
    else:
        handler.add_info(logger.name, message, fields)


def _direct_handler(logger: logging.Logger) -> BatchingHandler | None:
    """The root's :class:`BatchingHandler` when nothing else on the way to it handles or filters."""
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return None
        if node.handlers:
            if node.parent is not None or len(node.handlers) != 1:
                return None
            handler = node.handlers[0]
            if type(handler) is not BatchingHandler or handler.filters or type(handler.formatter) is not JsonFormatter \
                    or logging.INFO < handler.level:
                return None
            return handler
        if not node.propagate:
            return None
        node = node.parent
    return None


def where(exc: BaseException) -> str:
    """``TypeError at plugin.py:42``: what and where, never the message or a traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} at {last.filename.rsplit('/', 1)[-1]}:{last.lineno}"


def reason(exc: BaseException) -> str:
    """Why a system call failed (``No space left on device``), else :func:`where`."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return where(exc)


class Outage:
    """A failure that lasts (a full disk): one line when it begins and one when it ends,
    not one per attempt, which under load would be thousands a second."""

    def __init__(self, logger: logging.Logger, message: str, **fields: object) -> None:
        self._logger, self._message, self._fields = logger, message, fields
        self._lock = threading.Lock()
        self.active = False

    def failed(self, exc: BaseException, **fields: object) -> None:
        with self._lock:
            if self.active:
                return
            self.active = True
        self._logger.error(self._message, extra={**self._fields, **fields, "reason": reason(exc)})

    def cleared(self) -> None:
        if not self.active:  # the common case, without the lock
            return
        with self._lock:
            if not self.active:
                return
            self.active = False
        self._logger.warning(f"{self._message}: over", extra=dict(self._fields))


def _batching_handlers() -> list[BatchingHandler]:
    return [handler for handler in logging.getLogger().handlers if isinstance(handler, BatchingHandler)]


def _write_pending_lines() -> None:
    for handler in _batching_handlers():
        handler.flush()


def _drop_inherited_lines() -> None:
    for handler in _batching_handlers():
        handler._pending = []  # noqa: SLF001


# Before a fork the parent writes what is pending (a forked worker that ends with os._exit,
# as multiprocessing's do, must flush its own: server._worker does); the child starts empty.
os.register_at_fork(before=_write_pending_lines, after_in_child=_drop_inherited_lines)


def configure(level: str = "INFO") -> None:
    # What a record would gather and no line shows (the Logging HOWTO, "Optimization").
    logging._srcfile = None  # type: ignore[attr-defined]  # noqa: SLF001 - caller file/line
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = BatchingHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs connection churn at INFO/WARNING with broker addresses only; keep ours readable.
    logging.getLogger("kafka").setLevel(logging.ERROR)
