"""TLS terminated by webhookbus: the server context from ``server.tls``, and what a
connection's handshake verified, as the ASGI ``tls`` extension.

Mutual TLS is checked where it is strongest: OpenSSL refuses the handshake of a client
whose certificate does not chain to ``ca_certs`` (with ``client_auth: optional`` too, when
a certificate is presented), so a certificate that reaches the application has been
verified, and a provider's ``client_subject`` is compared with its subject only.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

if TYPE_CHECKING:
    from webhookbus.config import TlsSettings

_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}  # the ASGI extension's numbering (the protocol's own)


def server_context(tls: TlsSettings, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """TLS 1.2 or later; only ``ca_certs`` is trusted for client certificates (no system store)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.certfile, tls.keyfile)
    if tls.ca_certs is not None:
        context.load_verify_locations(cafile=tls.ca_certs)
    context.verify_mode = _VERIFY[tls.client_auth]
    context.set_alpn_protocols(list(alpn))
    return context


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
    """The ASGI ``tls`` scope extension for one connection (computed once per connection).

    ``client_cert_name`` is the RFC 4514 subject of the certificate OpenSSL verified, or None
    when the client presented none (``client_auth: none`` or ``optional``)."""
    der = ssl_object.getpeercert(binary_form=True)
    certificate = x509.load_der_x509_certificate(der) if der else None
    return {
        "server_cert": None,
        "client_cert_chain": [certificate.public_bytes(Encoding.PEM).decode()] if certificate else [],
        "client_cert_name": certificate.subject.rfc4514_string() if certificate else None,
        "client_cert_error": None,
        "tls_version": _VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }
