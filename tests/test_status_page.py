"""The status page on the admin listener: loaded in headless Chromium (one worker) and fetched
from the parent of two forked workers, its content checked against the requests sent."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from webhookbus.metrics import config_version
from webhookbus.testing import free_port, post

from test_metrics import PATH, SECRET, settings, signed, workers  # noqa: F401 - workers is a fixture

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Tables(HTMLParser):
    """Each table's rows as lists of cell texts, in page order (headers included)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:  # type: ignore[type-arg]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(html: str) -> dict[str, list[dict[str, str]]]:
    """Tables keyed by their first header, each row as {header: cell}."""
    parser = Tables()
    parser.feed(html)
    return {rows[0][0]: [dict(zip(rows[0], row)) for row in rows[1:]] for rows in parser.tables}


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("Debian's chromium is not installed: `make test` installs it when run as root with apt")
    return subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
                          capture_output=True, text=True, timeout=90, check=True)


def send(port: int, accepted: int, forged: int) -> list[str]:
    """The forged requests' signature header values, which the page must never show."""
    for index in range(accepted):
        assert post(port, PATH, *signed(f"page-{index}")).status == 200
    values = []
    for index in range(forged):
        body, headers = signed(f"page-forged-{index}", "wrong-secret")
        values.append(headers["x-signature"])
        assert post(port, PATH, body, headers).status == 401
    return values


def test_the_status_page_in_a_browser_shows_what_was_sent(webhookbus_listener, topic_name, tmp_path):
    admin = free_port()
    listener = webhookbus_listener(settings(topic_name("status"), admin))
    header_values = send(listener.port, accepted=4, forged=3)
    url = f"http://127.0.0.1:{admin}/"

    dom = chromium(tmp_path, "--dump-dom", url).stdout
    found = tables(dom)
    [demo] = found["provider"]
    assert (demo["provider"], demo["path"], demo["verifier"]) == ("demo", PATH, "hmac")
    assert demo["requests by status"] == "200: 4 · 401: 3"
    assert "UTC (" in demo["last accepted"] and "UTC (" in demo["last refused"]
    refusals = found["when"]
    assert len(refusals) == 3
    assert {(r["provider"], r["status"], r["error"]) for r in refusals} == {("demo", "401", "verification_failed")}
    assert all(r["client"].startswith("127.0.0.1:") for r in refusals)
    assert not any(value in dom for value in header_values), "a header value on the status page"
    assert [row["records to forward"] for row in found["slot"]] == ["0"]
    assert [row["producer"] for row in found["process"]] == ["connected"]
    assert [(row["served by"], row["version"]) for row in found["served by"]] == [
        ("this process", config_version(listener.config))]
    assert '<meta name="viewport"' in dom and "<script" not in dom

    for name, size in (("phone", "412,1400"), ("desktop", "1280,900")):
        screenshot = tmp_path / f"status-page-{name}.png"
        chromium(tmp_path, f"--screenshot={screenshot}", f"--window-size={size}", "--hide-scrollbars", url)
        assert screenshot.stat().st_size > 10_000
        print(f"screenshot: {screenshot}")


def test_with_two_workers_the_page_sums_both(workers):
    port, admin, _, _ = workers
    send(port, accepted=12, forged=8)  # a connection each: the kernel spreads them over both workers
    deadline = time.monotonic() + 10
    while True:  # each worker writes its refusals for the parent at most once a second
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/", timeout=10) as response:
            found = tables(response.read().decode())
        if len(found.get("when", [])) == 8 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert found["provider"][0]["requests by status"] == "200: 12 · 401: 8"
    assert len(found["when"]) == 8
    assert len(found["slot"]) == 2, "one spool slot per worker"
    producers = found["process"]
    assert len(producers) == 2 and all(row["process"].startswith("worker pid ") for row in producers)
    assert all(row["producer"] == "connected" for row in producers)
    assert {row["served by"] for row in found["served by"]} == {row["process"] for row in producers}


def test_after_a_reload_the_parent_page_shows_what_the_workers_serve(tmp_path, kafka_broker, topic_name):
    """The parent never reloads its own config: the providers and versions come from the workers."""
    from test_reload import reload, rewrite, start

    server = start(tmp_path, kafka_broker, [f"literal:{SECRET}"], topic_name("status-reload"), workers=2)
    admin = yaml.safe_load(server.config_path.read_text())["admin"]["port"]

    def page() -> dict[str, list[dict[str, str]]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/", timeout=10) as response:
            return tables(response.read().decode())

    try:
        before = page()
        assert [row["provider"] for row in before["provider"]] == ["demo"]
        [old_version] = {row["version"] for row in before["served by"]}
        rewrite(server, lambda settings: settings["providers"].update(
            {"second": {"verifier": "hmac", "path": "/webhooks/second", "secrets": [f"literal:{SECRET}"]}}))
        assert reload(server).returncode == 0
        after = page()
        assert [(row["provider"], row["path"]) for row in after["provider"]] == [
            ("demo", PATH), ("second", "/webhooks/second")]
        versions = {row["version"] for row in after["served by"]}
        assert len(after["served by"]) == 2 and len(versions) == 1 and versions != {old_version}
    finally:
        server.terminate()


def test_text_a_caller_or_a_plugin_chose_is_escaped_never_markup():
    """A refusal's error code and reason come from plugins (which may quote the request, as
    gitlab's "event '<kind>' is not accepted here" does); each reaches the page as text."""
    from prometheus_client import CollectorRegistry

    from webhookbus.activity import Snapshot
    from webhookbus.config import parse_config
    from webhookbus.http.status import render

    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&amp;"
    config = parse_config("admin: {port: 0}\n")
    snapshot = Snapshot(providers={"demo": {"path": f"/hooks/{hostile}", "verifier": hostile}},
                        refusals=[{"time": time.time(), "provider": "demo", "status": 400, "error": hostile,
                                   "reason": hostile, "client": hostile}])
    page = render(config, CollectorRegistry(), snapshot).decode()
    assert "<script" not in page and "<img" not in page
    [refusal] = tables(page)["when"]
    assert (refusal["error"], refusal["reason"], refusal["client"]) == (hostile, hostile, hostile)
    [provider] = tables(page)["provider"]
    assert (provider["path"], provider["verifier"]) == (f"/hooks/{hostile}", hostile)
