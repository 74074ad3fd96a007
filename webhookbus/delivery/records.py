"""A Kafka record, a batch of them on its way to the broker, and a record's bytes.

Shared by the event loop's side (:mod:`webhookbus.delivery.publish`), the spool and the producer
process (:mod:`webhookbus.delivery.producer`), which imports nothing heavier than this.  A record
has one byte form, a frame: the spool's segment files are made of them, and batches
travel to the producer process as them, so neither re-encodes what the other wrote.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

QUEUED, SENDING, DONE, ABANDONED = range(4)

FRAME = struct.Struct("<II")  # payload length, CRC-32 of the payload
HEAD = struct.Struct("<QdHiIH")  # seq, accepted_at, topic length, key length (-1: none), value length, header count
HEADER = struct.Struct("<HI")  # header name length, value length
MAX_FRAME = 256 << 20  # a length field above this is damage, not a record


@dataclass(frozen=True, slots=True)
class KafkaMessage:
    """One record to produce; ``route`` names the route that asked for it, for logs."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    route: str


def size_bound(message: KafkaMessage) -> int:
    """At least what kafka-python counts against ``max_request_size`` for ``message`` alone.

    A v2 record batch of one: the batch header (61 bytes), the record's varints (at most 5
    bytes each, 10 for the timestamp delta) and its bytes.  Not kafka-python's own estimate,
    which would import kafka-python into the listener (6 MB and 80 ms) for one sum.
    """
    headers = sum(10 + len(name.encode()) + len(value) for name, value in message.headers)
    return 61 + 36 + (len(message.key) if message.key else 0) + len(message.value) + headers


class Batch:
    """Messages published together, and who hears once the broker answered for each.

    ``failed`` holds the indexes of the messages the broker did not take (``error`` says
    why), so a sender keeping copies re-sends only those.  ``callbacks`` must be quick and
    never block: they run on whichever thread learnt the outcome.
    """

    __slots__ = ("messages", "future", "callbacks", "pending", "failed", "error", "state", "id", "timer")

    def __init__(self, messages: Sequence[KafkaMessage], future: asyncio.Future[None] | None = None,
                 callbacks: list[Callable[[Batch], object]] | None = None) -> None:
        self.messages = messages
        self.future = future
        self.callbacks = callbacks or []
        self.pending = len(messages)
        self.failed: list[int] = []
        self.error: str | None = None
        self.state = QUEUED
        self.id = 0
        self.timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    seq: int
    accepted_at: float
    message: KafkaMessage


def encode(seq: int, accepted_at: float, message: KafkaMessage) -> bytes:
    """One frame: header, CRC and the record's bytes as routing produced them."""
    topic = message.topic.encode()
    key = message.key
    parts = [
        HEAD.pack(seq, accepted_at, len(topic), -1 if key is None else len(key), len(message.value), len(message.headers)),
        topic, key or b"", message.value,
    ]
    for name, value in message.headers:
        raw_name = name.encode()
        parts += [HEADER.pack(len(raw_name), len(value)), raw_name, value]
    payload = b"".join(parts)
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode(payload: bytes) -> SpooledRecord:
    seq, accepted_at, topic_len, key_len, value_len, header_count = HEAD.unpack_from(payload)
    at = HEAD.size
    topic = payload[at:at + topic_len].decode()
    at += topic_len
    key = None if key_len < 0 else payload[at:at + key_len]
    at += max(key_len, 0)
    value = payload[at:at + value_len]
    at += value_len
    headers: list[tuple[str, bytes]] = []
    for _ in range(header_count):
        name_len, header_len = HEADER.unpack_from(payload, at)
        at += HEADER.size
        headers.append((payload[at:at + name_len].decode(), payload[at + name_len:at + name_len + header_len]))
        at += name_len + header_len
    return SpooledRecord(seq, accepted_at, KafkaMessage(topic, key, value, headers, "spool"))


# -- the pipe to the producer process (webhookbus.delivery.producer describes the conversation) ----

PIPE = struct.Struct("<IcQ")  # body length, kind, batch id; the body follows
SETTINGS, SEND, ABANDON, CLOSE, ANSWER, STATUS = b"C", b"S", b"A", b"Q", b"D", b"R"
CLOSE_BUDGET = struct.Struct("<d")  # CLOSE's body: seconds the producer may spend flushing
_COUNT = struct.Struct("<I")
_ERROR = struct.Struct("<H")


def pipe_frame(kind: bytes, batch_id: int, body: bytes = b"") -> bytes:
    return PIPE.pack(len(body), kind, batch_id) + body


def send_body(messages: Sequence[KafkaMessage]) -> bytes:
    return b"".join(encode(index, 0.0, message) for index, message in enumerate(messages))


def answer_body(failed: list[int], error: str | None) -> bytes:
    raw = (error or "").encode()[:1000]
    return _COUNT.pack(len(failed)) + struct.pack(f"<{len(failed)}I", *failed) + _ERROR.pack(len(raw)) + raw


def parse_answer(body: bytes) -> tuple[list[int], str | None]:
    (count,) = _COUNT.unpack_from(body)
    failed = list(struct.unpack_from(f"<{count}I", body, _COUNT.size))
    at = _COUNT.size + 4 * count
    (length,) = _ERROR.unpack_from(body, at)
    return failed, body[at + _ERROR.size:at + _ERROR.size + length].decode() or None


def read_messages(body: bytes) -> list[KafkaMessage]:
    """A SEND frame's records; ValueError if one is damaged (its CRC is checked, as the spool's are)."""
    messages, at = [], 0
    while at < len(body):
        length, crc = FRAME.unpack_from(body, at)
        at += FRAME.size
        payload = body[at:at + length]
        if len(payload) != length or zlib.crc32(payload) != crc:
            raise ValueError("damaged record frame")
        messages.append(decode(payload).message)
        at += length
    return messages
