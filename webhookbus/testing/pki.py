"""Certificates for TLS and mutual-TLS tests, made with ``cryptography``: a root CA, an
intermediate under it, a server certificate for 127.0.0.1 and localhost, and client
certificates issued by the intermediate (trusted) or by a stranger root nobody configured.

    pki = TestPki(tmp_path)
    settings["server"]["tls"] = pki.server_tls("required")
    context = pki.client_context(pki.client("CN=webhooks.example,O=Example"))
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

_Issued = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _issue(subject: str, issuer: _Issued | None, *, ca: bool, usage: x509.ObjectIdentifier | None = None,
           names: list[x509.GeneralName] | None = None) -> _Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string(subject)
    signer_cert, signer_key = issuer if issuer is not None else (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(signer_cert.subject if signer_cert is not None else name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if signer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer_key, hashes.SHA256()), key


class TestPki:
    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.root = _issue("CN=webhookbus test root CA,O=webhookbus tests", None, ca=True)
        self.intermediate = _issue("CN=webhookbus test intermediate CA,O=webhookbus tests", self.root, ca=True)
        self.stranger = _issue("CN=webhookbus test root CA,O=webhookbus tests", None, ca=True)  # same name, other key
        self.ca_certs = self._write("ca.pem", self.root[0])
        server = _issue("CN=localhost", self.intermediate, ca=False, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                        names=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        self.certfile = self._write("server.pem", server[0], self.intermediate[0])
        self.keyfile = self._write_key("server.key", server[1])
        self._clients = 0

    def server_tls(self, client_auth: str = "none") -> dict[str, str]:
        """``server.tls`` for a listener: this server certificate; clients checked against the root."""
        tls = {"certfile": str(self.certfile), "keyfile": str(self.keyfile), "client_auth": client_auth}
        return {**tls, "ca_certs": str(self.ca_certs)} if client_auth != "none" else tls

    def client(self, subject: str, trusted: bool = True) -> tuple[Path, Path]:
        """(certificate chain file, key file) of a new client certificate with ``subject``
        (RFC 4514), issued by the intermediate, or by the stranger root when not ``trusted``."""
        self._clients += 1
        issuer = self.intermediate if trusted else self.stranger
        cert, key = _issue(subject, issuer, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        chain = [cert, self.intermediate[0]] if trusted else [cert]
        return (self._write(f"client-{self._clients}.pem", *chain),
                self._write_key(f"client-{self._clients}.key", key))

    def client_context(self, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """A client context that trusts this root only and presents ``client`` when given."""
        context = ssl.create_default_context(cafile=str(self.ca_certs))
        if client is not None:
            context.load_cert_chain(*client)
        return context

    def _write(self, name: str, *certs: x509.Certificate) -> Path:
        path = self.directory / name
        path.write_bytes(b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs))
        return path

    def _write_key(self, name: str, key: ec.EllipticCurvePrivateKey) -> Path:
        path = self.directory / name
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path
