"""The plugin contract's second round: declared methods, replies without events, the public URL,
the signing helpers beyond HMAC-SHA256 and the form helper.  Plain ASGI calls: nothing here is
published (a :class:`Reply` never reaches the delivery, which these apps never start)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import subprocess
import sys

import pytest

from webhookbus.config import ConfigError, parse_config
from webhookbus.http.app import WebhookBus
from webhookbus.metrics import samples
from webhookbus.plugin import InboundRequest, Reply, Response, VerificationFailed, VerifierOptions, parse_form
from webhookbus.signing import decode_digest, matched_secret_index, require_match, require_token

CONFIG = """
providers:
  demo: {verifier: hmac, path: /hooks/demo, secrets: ["literal:s3cr3t-for-sdk-tests"]}
"""


def call(app: WebhookBus, method: str = "POST", target: str = "/hooks/demo", body: bytes = b"{}",
         headers: list[tuple[bytes, bytes]] | None = None, client: str = "127.0.0.1",
         scheme: str = "http") -> tuple[int, dict[str, str], bytes]:
    sent: list[dict] = []
    path, _, query = target.partition("?")

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "scheme": scheme,
             "query_string": query.encode(), "headers": headers if headers is not None else [(b"host", b"listener:8080")],
             "client": (client, 1234), "server": ("10.0.0.5", 8080)}
    asyncio.run(app(scope, receive, send))
    response_headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], response_headers, sent[1]["body"]


def app_with(verifier: object, extra: str = "") -> WebhookBus:
    config = parse_config(CONFIG + extra)
    demo = dataclasses.replace(config.providers["demo"], verifier=verifier)
    return WebhookBus(dataclasses.replace(config, providers={"demo": demo}))


class Challenge:
    """Answers GET ?challenge=X with X (Dropbox's endpoint check); POSTs echo the URL it saw."""

    methods = {"GET", "POST"}

    def __init__(self) -> None:
        self.seen: list[InboundRequest] = []

    async def verify(self, request: InboundRequest) -> Reply:
        self.seen.append(request)
        if request.method == "GET":
            return Reply(Response.text(request.query.removeprefix("challenge=")), what="challenge")
        return Reply(Response.json({"url": request.url}))


# -- 1. methods --------------------------------------------------------------------------------

def test_the_methods_a_plugin_declares_reach_it_and_the_rest_get_405_with_allow():
    app = app_with(Challenge())
    status, headers, body = call(app, "GET", "/hooks/demo?challenge=abc123")
    assert (status, body, headers["content-type"]) == (200, b"abc123", "text/plain; charset=utf-8")
    status, headers, body = call(app, "PUT")
    assert (status, headers["allow"], json.loads(body)["error"]) == (405, "GET, POST", "method_not_allowed")


def test_a_plugin_that_declares_nothing_gets_posts_only():
    status, headers, _ = call(app_with(parse_config(CONFIG).providers["demo"].verifier), "GET")
    assert (status, headers["allow"]) == (405, "POST")


class StringMethods:
    """``methods = "POST"``: a plain mistake, which iterated as the letters P, O, S, T."""

    Options = VerifierOptions
    methods = "POST"

    def __init__(self, options: VerifierOptions, secrets: tuple[bytes, ...]) -> None:
        pass

    def verify(self, request: InboundRequest) -> Reply:
        return Reply(Response.text("reached"))


class NotMethods(StringMethods):
    methods = {"POST", "post /hooks"}


@pytest.mark.parametrize("plugin", [StringMethods, NotMethods])
def test_a_plugin_whose_methods_are_not_http_method_names_is_refused_when_the_config_loads(monkeypatch, plugin):
    """Before, the config loaded and every POST was answered 405 ("this path accepts O, P, S, T")."""
    from importlib.metadata import EntryPoint

    import webhookbus.config

    entry = EntryPoint("odd-methods", f"{__name__}:{plugin.__name__}", "webhookbus.verifiers")
    monkeypatch.setattr(webhookbus.config, "installed_verifiers", lambda: {"odd-methods": entry})
    with pytest.raises(ConfigError, match=r"providers\.demo\.verifier: plugin 'odd-methods': methods must be") as error:
        parse_config("providers:\n  demo: {verifier: odd-methods, path: /hooks/demo, secrets: ['literal:x']}\n")
    assert "a bug in the plugin" in str(error.value)


# -- 2. replies ----------------------------------------------------------------------------------

def test_a_reply_is_sent_at_once_published_nowhere_logged_and_counted(caplog):
    app = app_with(Challenge(), "admin: {port: 0}\n")

    def handshakes() -> dict[str, float]:
        return {labels["provider"]: value for labels, value in samples(app.metrics.registry, "webhookbus_handshakes_total")}

    with caplog.at_level(logging.INFO, logger="webhookbus.http"):
        status, _, body = call(app, "GET", "/hooks/demo?challenge=x")
    assert (status, body) == (200, b"x")  # the delivery was never started: nothing could be published
    [line] = [r for r in caplog.records if r.name == "webhookbus.http"]
    assert (line.handshake, line.status, line.provider) == ("challenge", 200, "demo")
    assert not hasattr(line, "events")
    assert handshakes() == {"demo": 1}
    call(app, "GET", "/hooks/demo?challenge=y")
    assert handshakes() == {"demo": 2}


# -- 3. the public URL -------------------------------------------------------------------------

def url_seen(extra: str = "", **request: object) -> str:
    app = app_with(Challenge(), extra)
    status, _, body = call(app, "POST", **request)
    assert status == 200, body
    return json.loads(body)["url"]


PROXIED = [(b"host", b"10.0.0.5:8080"), (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"hooks.example.com")]


def test_url_without_a_proxy_is_the_listeners_scheme_and_the_host_asked_for():
    assert url_seen(target="/hooks/demo/sub?a=1&b=%20") == "http://listener:8080/hooks/demo/sub?a=1&b=%20"
    assert url_seen(scheme="https") == "https://listener:8080/hooks/demo"
    assert url_seen(headers=[]) == "http://10.0.0.5:8080/hooks/demo", "no Host: the listener's own address"


def test_forwarded_headers_count_only_from_a_trusted_proxy():
    assert url_seen(headers=PROXIED) == "http://10.0.0.5:8080/hooks/demo", "not trusted: ignored"
    trusting = "server: {trusted_proxies: ['127.0.0.0/8']}\n"
    assert url_seen(trusting, headers=PROXIED) == "https://hooks.example.com/hooks/demo"
    assert url_seen(trusting, headers=PROXIED, client="192.0.2.1") == "http://10.0.0.5:8080/hooks/demo"
    only_proto = [(b"host", b"hooks.example.com"), (b"x-forwarded-proto", b"https")]
    assert url_seen(trusting, headers=only_proto) == "https://hooks.example.com/hooks/demo"
    # A chain of proxies each appending: the last entry is the one the trusted peer wrote.
    chained = [(b"host", b"h"), (b"x-forwarded-proto", b"http, https"), (b"x-forwarded-host", b"evil.test"),
               (b"x-forwarded-host", b"hooks.example.com")]
    assert url_seen(trusting, headers=chained) == "https://hooks.example.com/hooks/demo"


@pytest.mark.parametrize("header", [(b"x-forwarded-proto", b"gopher"), (b"x-forwarded-host", b"a/b@c")])
def test_a_trusted_proxys_forwarded_header_no_url_can_be_built_from_is_a_400(header):
    app = app_with(Challenge(), "server: {trusted_proxies: [127.0.0.1]}\n")
    status, _, body = call(app, headers=[(b"host", b"h"), header])
    assert (status, json.loads(body)["error"]) == (400, "bad_forwarded_header")


def test_a_configured_public_url_wins_over_everything():
    server = "server: {public_url: 'https://example.com/api/', trusted_proxies: [127.0.0.1]}\n"
    assert url_seen(server, headers=PROXIED, target="/hooks/demo?x=1") == "https://example.com/api/hooks/demo?x=1"
    provider = """
providers:
  demo: {verifier: hmac, path: /hooks/demo, public_url: "https://sq.example.com/in/square", secrets: [literal:abc]}
"""
    app = WebhookBus(parse_config(provider + server))
    config = dataclasses.replace(app.config, providers={"demo": dataclasses.replace(app.config.providers["demo"],
                                                                                   verifier=Challenge())})
    status, _, body = call(WebhookBus(config), target="/hooks/demo/v2?x=1", headers=PROXIED)
    assert json.loads(body)["url"] == "https://sq.example.com/in/square/v2?x=1"


@pytest.mark.parametrize("bad", ["ftp://x", "/relative", "https://x/?q=1", "https://x/#f", "https://"])
def test_a_public_url_that_is_not_an_absolute_http_url_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="public_url"):
        parse_config(f"server: {{public_url: '{bad}'}}\n")


def test_a_trusted_proxy_that_is_not_an_address_is_a_config_error():
    with pytest.raises(ConfigError, match="trusted_proxies"):
        parse_config("server: {trusted_proxies: [proxy.internal]}\n")


# -- 5. signing helpers --------------------------------------------------------------------------

@pytest.mark.parametrize("digest", ["sha1", "sha512"])
def test_require_match_with_other_digests_loops_over_the_rotation(digest):
    # The expected digests come from the standard library, not from webhookbus.signing.
    old, new, message = b"old-secret", b"new-secret", b'{"hello":"world"}'
    signature = hmac.new(old, message, getattr(hashlib, digest)).hexdigest()
    assert require_match([new, old], message, decode_digest(signature, ["hex"]), digest) == 1
    assert matched_secret_index.get() == 1
    with pytest.raises(VerificationFailed):
        require_match([new, old], message, decode_digest(signature, ["hex"]))  # the sha256 default: no match
    with pytest.raises(VerificationFailed):
        require_match([new], message, decode_digest(signature, ["hex"]), digest)


def test_sha1_against_githubs_documented_legacy_header():
    # GitHub's docs: secret "It's a Secret to Everybody", payload "Hello, World!" ->
    # X-Hub-Signature-256 sha256=757107ea...; the SHA-1 twin computed with openssl dgst -sha1 -hmac.
    secret, payload = b"It's a Secret to Everybody", b"Hello, World!"
    sha256 = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert require_match([secret], payload, decode_digest(sha256, ["hex"])) == 0
    sha1 = hmac.new(secret, payload, hashlib.sha1).hexdigest()
    assert require_match([b"x", secret], payload, decode_digest(sha1, ["hex"]), "sha1") == 1


def test_require_token_compares_static_tokens_with_the_rotation():
    matched_secret_index.set(None)
    assert require_token([b"new-token", b"old-token"], "old-token") == 1
    assert matched_secret_index.get() == 1
    assert require_token([b"new-token"], b"new-token") == 0
    for wrong in ("new-toke", "new-token ", "", None):
        with pytest.raises(VerificationFailed) as refused:
            require_token([b"new-token"], wrong, "X-Gitlab-Token")
        assert "new-token" not in refused.value.detail and "X-Gitlab-Token" in refused.value.detail
    with pytest.raises(VerificationFailed):
        require_token([b""], "")  # an empty secret never matches
    assert require_token([base64.b64encode(b"\xe9t\xe9")], base64.b64encode(b"\xe9t\xe9").decode()) == 0


# -- 8. the form helper ----------------------------------------------------------------------------

def test_parse_form_reads_pairs_and_refuses_ambiguity():
    assert parse_form(b"token=a%2Bb&text=hello+world&empty=") == {"token": "a+b", "text": "hello world", "empty": ""}
    assert parse_form(b"") == {}
    for bad in (b"a=1&a=2", b"no-equals", b"\xff=1", b"a=%ff"):
        with pytest.raises(ValueError):
            parse_form(bad)


@pytest.mark.parametrize("command", [["plugins"], ["plugins", "--schema", "hmac"]])
def test_cli_output_into_a_closed_pipe_ends_quietly(command):
    """``webhookbus plugins | head -1``: head exits early; no BrokenPipeError traceback follows."""
    process = subprocess.Popen([sys.executable, "-m", "webhookbus.cli", *command], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before anything is written
    stderr = process.stderr.read().decode()
    process.wait(60)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


# -- 8. fixtures with parameters -------------------------------------------------------------------

INNER_TEST = '''
import hashlib, hmac, json

def test_inner(kafka_broker, webhookbus_listener, read_events, topic_name):
    assert kafka_broker.bootstrap == "{bootstrap}"
    topic = topic_name("fixture")
    listener = webhookbus_listener({{
        "providers": {{"demo": {{"verifier": "hmac", "path": "/h", "secrets": ["literal:fixture-secret"]}}}},
        "routes": [{{"provider": "demo", "topic": topic}}]}}, port={port})
    assert listener.port == {port}
    body = json.dumps({{"n": 1}}).encode()
    signature = hmac.new(b"fixture-secret", body, hashlib.sha256).hexdigest()
    assert listener.post("/h", body, {{"x-signature": signature}}).status == 200
    assert len(read_events(topic, 1)) == 1
'''


def run_inner(tmp_path, bootstrap: str, *options: str) -> subprocess.CompletedProcess[str]:
    from webhookbus.testing import free_port

    test = tmp_path / "test_inner.py"
    test.write_text(INNER_TEST.format(bootstrap=bootstrap, port=free_port()))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           str(test), *options], capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_the_session_broker_on_a_chosen_port_and_a_listener_on_a_chosen_port(tmp_path):
    from webhookbus.testing import free_port

    port = free_port()
    inner = run_inner(tmp_path, f"127.0.0.1:{port}", "--webhookbus-broker-port", str(port))
    assert inner.returncode == 0, inner.stdout + inner.stderr


def test_an_already_running_kafka_instead_of_a_new_broker(tmp_path, kafka_broker):
    inner = run_inner(tmp_path, kafka_broker.bootstrap, "--webhookbus-bootstrap", kafka_broker.bootstrap)
    assert inner.returncode == 0, inner.stdout + inner.stderr
