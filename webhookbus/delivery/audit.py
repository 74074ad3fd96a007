"""Rejected requests (401: signature, age, decryption) as small CloudEvents on an audit topic.

So a security team can watch for forged or replayed webhooks from Kafka.  An audit event
says who was refused and why, never what they sent: provider, reason, client address,
request id, path, body length and SHA-256, and header *names* (never a body, a header
value, a signature or a secret).  A token bucket bounds the rate, so a flood of forgeries
cannot flood the topic or the producer; what it drops is counted in the next event.
Publishing is fire-and-forget (:meth:`Publisher.submit`): a 401 never waits for Kafka.
"""

from __future__ import annotations

import hashlib
import time

from webhookbus.config import AuditSettings
from webhookbus.events import CloudEvent, encode_structured
from webhookbus.plugin import InboundRequest, WebhookError
from webhookbus.delivery.publish import Publisher
from webhookbus.delivery.records import KafkaMessage

EVENT_TYPE = "webhookbus.request.rejected"


class RejectionAudit:
    """Called on the event loop's thread for every refused request; cheap when off or throttled."""

    def __init__(self, settings: AuditSettings, publisher: Publisher) -> None:
        self.metrics = publisher.metrics
        self.topic = settings.topic
        self.rate = settings.max_per_second
        self.burst = float(settings.burst)
        self.publisher = publisher
        self._tokens = self.burst
        self._refilled = time.monotonic()
        self.suppressed = 0

    def record(self, request: InboundRequest, error: WebhookError, request_id: str) -> None:
        if self.topic is None or error.status != 401:
            return
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._tokens < 1:
            self.suppressed += 1
            self.metrics.audit_drop()
            return
        self._tokens -= 1
        data = {
            "provider": request.provider,
            "error": error.error,
            "reason": error.detail,
            "client": request.client,
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
            "body_length": len(request.body),
            "body_sha256": hashlib.sha256(request.body).hexdigest(),
            "header_names": sorted(request.headers),
            "suppressed_before": self.suppressed,
        }
        self.suppressed = 0
        event = CloudEvent(id=request_id, source="webhookbus", type=EVENT_TYPE, time=request.received_at,
                           subject=request.provider, data=data)
        value, headers = encode_structured(event)
        self.publisher.submit([KafkaMessage(self.topic, request.provider.encode(), value, headers, "audit")])
