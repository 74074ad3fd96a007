"""The Redis claims store on its own, on a real redis-server: the states of the local store,
claims that outlive a dead process only by ``claim_ttl``, deadlines, outages and reconnects."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from webhookbus.config import ConfigError, DedupSettings, Secret, parse_config
from webhookbus.delivery.claims import DedupUnavailable, StillInFlight
from webhookbus.delivery.dedup import dedup_key
from webhookbus.delivery.redis_claims import RedisClaims
from webhookbus.testing.redis import RedisServer


def store(server: RedisServer, deadline: float = 0.2, password: str | None = None, **settings) -> RedisClaims:  # type: ignore[no-untyped-def]
    return RedisClaims(DedupSettings(store=server.url, **settings), Secret(password.encode()) if password else None,
                       deadline=deadline)


def keys(*ids: str) -> list[bytes]:
    return [dedup_key("uip", event_id) for event_id in ids]


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_accepted_ids_are_duplicates_for_another_process_until_the_window_ends(redis_server):
    async def scenario() -> None:
        first, second = store(redis_server), store(redis_server)
        claim = await first.claim("uip", keys("a1", "a2"), window=2.0, wait=1.0)
        assert claim.held == keys("a1", "a2") and not claim.duplicates
        first.settle(claim, True)
        await asyncio.sleep(0.05)
        again = await second.claim("uip", keys("a1", "a3"), window=2.0, wait=1.0)
        assert again.duplicates == frozenset(keys("a1")) and again.held == keys("a3")
        other = await second.claim("zignsec", [dedup_key("zignsec", "a1")], window=2.0, wait=1.0)
        assert other.held, "the provider is part of the key"
        ttl = redis.Redis.from_url(redis_server.url).pttl(f"webhookbus:dedup:uip:{keys('a1')[0].hex()}")
        assert 1000 < ttl <= 2000, "remembered for the provider's window"
        await first.close()
        await second.close()

    run(scenario())


def test_a_released_id_is_a_first_attempt_and_a_held_one_makes_the_next_copy_wait(redis_server):
    async def scenario() -> None:
        first, second = store(redis_server), store(redis_server)
        claim = await first.claim("uip", keys("b1"), window=60, wait=1.0)
        with pytest.raises(StillInFlight):
            await second.claim("uip", keys("b1", "b2"), window=60, wait=0.2)
        assert (await second.claim("uip", keys("b2"), window=60, wait=0.2)).held, "nothing was claimed by the refusal"

        waiting = asyncio.ensure_future(second.claim("uip", keys("b1"), window=60, wait=5.0))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        first.settle(claim, False)  # a 503: the retry is a first attempt
        assert (await waiting).held == keys("b1")

        third = store(redis_server)
        late = asyncio.ensure_future(third.claim("uip", keys("b1"), window=60, wait=5.0))
        await asyncio.sleep(0.2)
        second.settle((await waiting), True)
        assert (await late).duplicates == frozenset(keys("b1")), "the waiting copy learns the outcome"
        for each in (first, second, third):
            await each.close()

    run(scenario())


def test_a_claim_of_a_dead_process_expires_and_a_live_one_is_renewed(redis_server):
    async def scenario() -> None:
        dead, live, other = (store(redis_server, claim_ttl=0.6) for _ in range(3))
        await dead.claim("uip", keys("c-dead"), window=60, wait=1.0)
        dead._renewer.cancel()  # the process died: nobody renews its claims
        held = await live.claim("uip", keys("c-live"), window=60, wait=1.0)
        await asyncio.sleep(1.5)  # more than twice the TTL
        assert (await other.claim("uip", keys("c-dead"), window=60, wait=0.1)).held
        with pytest.raises(StillInFlight):
            await other.claim("uip", keys("c-live"), window=60, wait=0.1)
        live.settle(held, True)
        await asyncio.sleep(0.05)
        assert (await other.claim("uip", keys("c-live"), window=60, wait=0.1)).duplicates
        for each in (live, other):
            await each.close()

    run(scenario())


def test_a_dead_redis_fails_fast_and_the_client_reconnects_without_a_restart(own_redis):
    async def scenario() -> None:
        claims = store(own_redis, deadline=0.2)
        first = await claims.claim("uip", keys("d1"), window=60, wait=1.0)
        claims.settle(first, True)
        await asyncio.sleep(0.05)
        own_redis.stop()
        started = time.monotonic()
        with pytest.raises(DedupUnavailable, match="redis at 127.0.0.1"):
            await claims.claim("uip", keys("d2"), window=60, wait=1.0)
        with pytest.raises(DedupUnavailable):  # marked down: no second connection attempt
            await claims.claim("uip", keys("d3"), window=60, wait=1.0)
        assert claims.unavailable == 2
        assert time.monotonic() - started < 1.0
        own_redis.start()  # same port, empty: what it held is lost
        await asyncio.sleep(1.1)
        assert (await claims.claim("uip", keys("d1"), window=60, wait=1.0)).held
        await claims.close()

    run(scenario())


def test_a_redis_that_hangs_costs_each_call_its_deadline_not_the_request(own_redis):
    async def scenario() -> None:
        claims = store(own_redis, deadline=0.2)
        await claims.claim("uip", keys("e0"), window=60, wait=1.0)  # connected before the hang
        own_redis.pause()
        try:
            started = time.monotonic()
            with pytest.raises(DedupUnavailable):
                await claims.claim("uip", keys("e1"), window=60, wait=5.0)
            assert time.monotonic() - started < 1.0
        finally:
            own_redis.resume()
        await asyncio.sleep(1.1)
        assert (await claims.claim("uip", keys("e2"), window=60, wait=1.0)).held
        await claims.close()

    run(scenario())


def test_password_from_an_env_reference_and_never_in_the_url(monkeypatch):
    server = RedisServer(password="redis-test-password").start()
    try:
        monkeypatch.setenv("REDIS_TEST_PASSWORD", "redis-test-password")
        config = parse_config(f"dedup:\n  store: {server.url}\n  password: env:REDIS_TEST_PASSWORD\n")
        assert bytes(config.dedup_password or b"") == b"redis-test-password"

        async def scenario() -> None:
            claims = RedisClaims(config.settings.dedup, config.dedup_password, deadline=0.5)
            assert (await claims.claim("uip", keys("f1"), window=60, wait=1.0)).held
            await claims.close()
            wrong = RedisClaims(config.settings.dedup, Secret(b"wrong"), deadline=0.5)
            with pytest.raises(DedupUnavailable) as refused:
                await wrong.claim("uip", keys("f2"), window=60, wait=1.0)
            assert "wrong" not in refused.value.reason and "redis-test-password" not in refused.value.reason
            await wrong.close()

        run(scenario())
    finally:
        server.stop()

    with pytest.raises(ConfigError, match="must not carry a password") as error:
        parse_config("dedup:\n  store: redis://:hunter2@127.0.0.1:6379/0\n")
    assert "hunter2" not in str(error.value)
    for query in ("password=hunter2", "db=0&ssl_password=hunter2"):  # redis-py takes query parameters as options
        with pytest.raises(ConfigError, match="must not carry a password") as error:
            parse_config(f"dedup:\n  store: redis://127.0.0.1:6379/0?{query}\n")
        assert "hunter2" not in str(error.value)
    with pytest.raises(ConfigError, match=r"dedup\.password: environment variable NOT_SET_ANYWHERE is not set"):
        parse_config("dedup:\n  store: redis://127.0.0.1:6379/0\n  password: env:NOT_SET_ANYWHERE\n")
    with pytest.raises(ConfigError, match="expected local, redis://"):
        parse_config("dedup:\n  store: memcached://127.0.0.1\n")


def test_many_requests_at_once_share_one_connection(redis_server):
    """redis-py's pool refuses a 101st connection: 500 claims at once must not look like an outage."""
    async def scenario() -> None:
        claims = store(redis_server, deadline=1.0)
        held = await asyncio.gather(*(claims.claim("uip", keys(f"g{n}"), window=60, wait=1.0) for n in range(500)))
        assert all(claim.held for claim in held) and claims.unavailable == 0
        for claim in held:
            claims.settle(claim, True)
        again = await asyncio.gather(*(claims.claim("uip", keys(f"g{n}"), window=60, wait=1.0) for n in range(500)))
        assert all(claim.duplicates for claim in again)
        clients = redis.Redis.from_url(redis_server.url)
        assert clients.info("clients")["connected_clients"] <= 1 + 2, "this check's connection and the store's"
        clients.close()
        await claims.close()

    run(scenario())


def test_rediss_verifies_the_server_against_ca_certs(tmp_path):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def certificate(subject: str, key, issuer=None, issuer_key=None, ca: bool = False):  # type: ignore[no-untyped-def]
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                            critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("test redis CA", ca_key, ca=True)
    server_cert = certificate("127.0.0.1", server_key, ca.subject, ca_key)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "server.pem").write_bytes(server_cert.public_bytes(pem))
    (tmp_path / "server.key").write_bytes(server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                                   serialization.NoEncryption()))
    server = RedisServer(tls=(str(tmp_path / "server.pem"), str(tmp_path / "server.key"))).start()
    try:
        assert server.url.startswith("rediss://")

        async def scenario() -> None:
            trusted = store(server, deadline=1.0, ca_certs=str(tmp_path / "ca.pem"))
            claim = await trusted.claim("uip", keys("h1"), window=60, wait=1.0)
            trusted.settle(claim, True)
            await trusted.close()
            another = store(server, deadline=1.0, ca_certs=str(tmp_path / "ca.pem"))
            assert (await another.claim("uip", keys("h1"), window=60, wait=1.0)).duplicates
            await another.close()
            untrusted = store(server, deadline=1.0)  # the system's CAs do not know this one
            with pytest.raises(DedupUnavailable):
                await untrusted.claim("uip", keys("h2"), window=60, wait=1.0)
            await untrusted.close()

        run(scenario())
    finally:
        server.stop()
