"""The log: JSON lines, INFO written in batches, warnings at once, nothing lost at exit or doubled by a fork."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time

from webhookbus.log import BatchingHandler, JsonFormatter


def handler_on(stream: io.StringIO, interval: float = 60.0) -> logging.Logger:
    handler = BatchingHandler(stream, interval=interval)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test-log-{time.monotonic_ns()}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_info_lines_wait_for_the_flusher_warnings_take_them_along():
    stream = io.StringIO()
    log = handler_on(stream)
    log.info("request", extra={"request_id": "r1", "status": 200, "events": ["e1"]})
    log.info("request", extra={"request_id": "r2", "status": 200})
    assert stream.getvalue() == "", "INFO lines are batched, not one write each"
    log.warning("request", extra={"request_id": "r3", "status": 401})
    written = lines(stream)
    assert [line["request_id"] for line in written] == ["r1", "r2", "r3"], "in order, all of them"
    assert written[0]["level"] == "info" and written[0]["events"] == ["e1"] and written[0]["ts"].endswith("Z")


def test_the_flusher_writes_batched_lines_within_its_interval():
    stream = io.StringIO()
    log = handler_on(stream, interval=0.05)
    log.info("request", extra={"request_id": "r1"})
    deadline = time.monotonic() + 5
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [line["request_id"] for line in lines(stream)] == ["r1"]


def test_pending_lines_are_written_at_exit_and_once_across_a_fork():
    # The child ends as a multiprocessing worker does (os._exit, no logging.shutdown) after
    # flushing its own lines, as server._worker does; the parent ends normally.
    script = """
import logging, os, sys
from webhookbus import log
log.configure("INFO")
logging.getLogger("t").info("before fork")
pid = os.fork()
if pid == 0:
    logging.getLogger("t").info("child")
    logging.getLogger().handlers[0].flush()
    os._exit(0)
os.waitpid(pid, 0)
logging.getLogger("t").info("parent")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    messages = [json.loads(line)["msg"] for line in result.stderr.splitlines()]
    assert messages == ["before fork", "child", "parent"], result.stderr


def test_a_field_cannot_break_a_line_for_readers_that_split_on_unicode_line_breaks():
    stream = io.StringIO()
    logger = handler_on(stream)
    forged = '/hooks/x\u2028{"level": "info", "msg": "forged"}\u2029\x85\n'
    logger.warning("request", extra={"path": forged})
    [line] = stream.getvalue().splitlines()
    assert json.loads(line)["path"] == forged


def test_request_lines_skip_the_log_record_only_when_no_other_handler_would_see_them():
    # As `webhookbus serve` configures logging: the line log_fields writes directly is the one
    # the record would have made (ts aside), and no LogRecord is built for it; with an operator's
    # handler, a filter or a warning, the record goes through logging as usual.
    script = """
import json, logging, sys
from webhookbus import log
log.configure("INFO")
records = []
make = logging.getLogRecordFactory()
logging.setLogRecordFactory(lambda *a, **k: records.append(a[1]) or make(*a, **k))
request_log = logging.getLogger("webhookbus.http")
fields = {"request_id": "r1", "path": "/x\\u2028", "events": ["e1"], "secret_index": None, "ms": 1.25}
log.log_fields(request_log, logging.INFO, "request", dict(fields))
request_log.info("request", extra=dict(fields))
log.log_fields(request_log, logging.DEBUG, "request", dict(fields))
print("direct", len(records), flush=True)
log.log_fields(request_log, logging.WARNING, "request", dict(fields))
print("warning", len(records), flush=True)
request_log.addFilter(lambda record: True)
log.log_fields(request_log, logging.INFO, "request", dict(fields))
print("filtered", len(records), flush=True)
request_log.filters.clear()
seen = []
handler = logging.Handler()
handler.emit = seen.append
logging.getLogger("webhookbus").addHandler(handler)
log.log_fields(request_log, logging.INFO, "request", dict(fields))
print("other handler", len(records), len(seen), flush=True)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    counts = [line.split()[-1] for line in result.stdout.splitlines()]
    assert counts == ["1", "2", "3", "1"], result.stdout  # direct: only request_log.info built one
    assert result.stdout.splitlines()[-1] == "other handler 4 1"
    written = [json.loads(line) for line in result.stderr.splitlines()]
    assert len(written) == 5, "the DEBUG line is dropped, every other one written once"
    direct, via_record = written[0], written[1]
    assert direct.pop("ts")[:10] == via_record.pop("ts")[:10]
    assert direct == via_record == {"level": "info", "logger": "webhookbus.http", "msg": "request", "request_id": "r1",
                                    "path": "/x\u2028", "events": ["e1"], "secret_index": None, "ms": 1.25}
    assert "\\u2028" in result.stderr.splitlines()[0], "written as an escape, as the formatter does"
