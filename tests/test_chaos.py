"""The chaos harness, short form: broker restart, SIGKILL, duplicates and bad requests under load.

The long form is ``make chaos`` (bench/chaos.py, whose docstring explains the counting).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

CHAOS = Path(__file__).resolve().parents[1] / "bench" / "chaos.py"
LINE = re.compile(r"^accepted=(\d+) delivered=(\d+) lost=(\d+) duplicates_published=(\d+) "
                  r"crash_redeliveries=(\d+) rejected_bad=(\d+) errors_5xx_unexpected=(\d+)$")


def test_nothing_accepted_is_lost_and_no_retry_is_published_twice_through_chaos(kafka_client):
    run = subprocess.run([sys.executable, str(CHAOS), "--events", "1500", "--clients", "6", "--cycles", "1",
                          "--kafka-client", kafka_client],
                         capture_output=True, text=True, timeout=600)
    [line] = run.stdout.splitlines()
    match = LINE.match(line)
    assert match, line
    accepted, delivered, lost, duplicates, _, rejected_bad, errors_5xx = map(int, match.groups())
    assert run.returncode == 0, run.stderr[-3000:]
    assert (lost, duplicates, errors_5xx) == (0, 0, 0)
    assert accepted == delivered == 1500
    assert rejected_bad > 100, "the bad requests were sent and refused"
    replaced = re.search(r"producer_replacements=(\d+)", run.stderr)
    assert replaced and int(replaced[1]) >= 1, "the broker restart made webhookbus replace its producer"
