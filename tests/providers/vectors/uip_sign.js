#!/usr/bin/env node
// Independent UIP signature vectors, written from UIP's documentation, not from webhookbus.
//
// v1, two ways a receiver following the docs computes the expected X-UIP-Signature:
//   "express": the docs' Express sample, crypto.createHmac('sha256', secret)
//              .update(JSON.stringify(req.body)).digest('hex'), where req.body is
//              express.json()'s JSON.parse of the raw body;
//   "raw":     the docs' troubleshooting advice, HMAC-SHA256 of the raw body, hex.
// v2 (X-UIP-Timestamp present): hex HMAC-SHA256 of `${timestamp}.${raw body}`.
//
// `expect` is what a correct receiver does: "ok"; "malformed" (authentic but not JSON);
// or "rejected" for the documented gap where JSON.stringify's output differs from
// Python's re-serialisation (a body like that verifies only when signed raw).
// Expected event/id/subject are written by hand below, from the docs' field lists.
//
// Usage: node uip_sign.js > uip.json      (Node >= 18, no dependencies)
'use strict';
const crypto = require('crypto');

const SECRET = 'uip-webhook-secret-Ω-7';
const hmacHex = (message) => crypto.createHmac('sha256', SECRET).update(message).digest('hex');
const T = 1767225600; // 2026-01-01T00:00:00Z

const pretty = (value) => JSON.stringify(value, null, 2);
const identify = {
  event: 'identify',
  data: {
    uip_id: 'user_abc123def456', audit_id: 'audit_9z8y7x6w5v4u', session_id: 'sess_1a2b3c4d5e6f',
    name: 'John Doe', date_of_birth: '1990-05-15', country_of_origin: 'US',
  },
};
const sign = { event: 'sign', data: { uip_id: 'user_abc123def456', session_id: 'sess_1', audit_id: 'audit_sign_1' } };
const message = { event: 'message', data: { signing_uip_id: 'user_m1', message_id: 'msg_xyz789abc123', audit_id: 'audit_msg_1' } };
const test = { event: 'test', data: { pong: 'Pong' } };
const unicode = { event: 'identify', data: { uip_id: 'user_ü', audit_id: 'audit_ü', name: 'José Ünal 山田 😀', country_of_origin: 'ES' } };

// v2 without data.audit_id: the id is SHA-256 hex of `${event}\n${raw body}` (X-UIP-Delivery-Id is not
// signed, so it cannot be the id: a replay could pass any).  SIGNED marks where that is expected.
const SIGNED = Symbol('signed id');
const signedId = (event, body) => crypto.createHash('sha256').update(`${event}\n${body}`, 'utf8').digest('hex');

// [name, version, signing, body, expect, {event, id, subject, time}, extra headers]
const cases = [
  ['v1 identify, compact', 1, 'express', JSON.stringify(identify), 'ok',
    { event: 'identify', id: 'audit_9z8y7x6w5v4u', subject: 'user_abc123def456' }],
  ['v1 sign, compact, signed raw', 1, 'raw', JSON.stringify(sign), 'ok',
    { event: 'sign', id: 'audit_sign_1', subject: 'user_abc123def456' }],
  ['v1 message uses signing_uip_id', 1, 'express', JSON.stringify(message), 'ok',
    { event: 'message', id: 'audit_msg_1', subject: 'user_m1' }],
  ['v1 test has no audit id', 1, 'express', JSON.stringify(test), 'ok', { event: 'test', id: null, subject: null }],
  ['v1 pretty body signed raw', 1, 'raw', pretty(identify), 'ok',
    { event: 'identify', id: 'audit_9z8y7x6w5v4u', subject: 'user_abc123def456' }],
  ['v1 pretty body signed the Express way', 1, 'express', pretty(identify), 'ok',
    { event: 'identify', id: 'audit_9z8y7x6w5v4u', subject: 'user_abc123def456' }],
  ['v1 non-ASCII, compact', 1, 'express', JSON.stringify(unicode), 'ok',
    { event: 'identify', id: 'audit_ü', subject: 'user_ü' }],
  ['v1 escaped non-ASCII signed the Express way', 1, 'express',
    '{"event": "identify", "data": {"uip_id": "user_\\u00fc", "audit_id": "a\\u2028b", "name": "\\ud83d\\ude00 \\/ \\t"}}',
    'ok', { event: 'identify', id: 'a\u2028b', subject: 'user_ü' }],
  ['v1 lone surrogate signed the Express way', 1, 'express',
    '{"event": "test", "data": {"pong": "x\\udc00y"}}', 'ok', { event: 'test', id: null, subject: null }],
  ['v1 float 1.0 signed the Express way (known gap)', 1, 'express',
    '{"event": "test", "data": {"pong": "Pong", "score": 1.0}}', 'rejected', null],
  ['v1 integer-like keys signed the Express way (known gap)', 1, 'express',
    '{"event": "test", "data": {"b": 1, "2": 2, "a": 3, "1": 4}}', 'rejected', null],
  ['v1 float 1.0 signed raw', 1, 'raw',
    '{"event": "test", "data": {"pong": "Pong", "score": 1.0}}', 'ok', { event: 'test', id: null, subject: null }],
  ['v1 authentic but not JSON', 1, 'raw', '{"event": "identify", "data": ', 'malformed', null],
  ['v2 session.completed, subject from client_reference_id', 2, 'v2',
    pretty({ event: 'session.completed', session_id: 'sess_v2_1', client_reference_id: 'order-77',
      data: { status: 'completed' } }), 'ok',
    { event: 'session.completed', id: SIGNED, subject: 'order-77', time: T },
    { 'X-UIP-Event': 'session.completed', 'X-UIP-Delivery-Id': 'dlv_0001' }],
  ['v2 step.completed, no body event, subject from data.session_id', 2, 'v2',
    JSON.stringify({ data: { session_id: 'sess_v2_2', step: 'liveness', audit_id: 'audit_v2_2' } }), 'ok',
    { event: 'step.completed', id: 'audit_v2_2', subject: 'sess_v2_2', time: T },
    { 'X-UIP-Event': 'step.completed', 'X-UIP-Delivery-Id': 'dlv_0002' }],
  ['v2 event only in the body', 2, 'v2', JSON.stringify({ event: 'session.failed', session_id: 'sess_v2_3' }), 'ok',
    { event: 'session.failed', id: SIGNED, subject: 'sess_v2_3', time: T }, { 'X-UIP-Delivery-Id': 'dlv_0003' }],
  ['v2 authentic but not JSON', 2, 'v2', 'not json', 'malformed', null, { 'X-UIP-Event': 'session.stopped' }],
];

const out = cases.map(([name, version, signing, body, expect, expected, extra]) => {
  let signature;
  if (signing === 'express') signature = hmacHex(JSON.stringify(JSON.parse(body)));
  else if (signing === 'raw') signature = hmacHex(body);
  else signature = hmacHex(`${T}.${body}`);
  const headers = { 'Content-Type': 'application/json', 'X-UIP-Signature': signature };
  if (version === 2) headers['X-UIP-Timestamp'] = String(T);
  Object.assign(headers, extra || {});
  if (expected && expected.id === SIGNED) expected.id = signedId(expected.event, body);
  return { name, version, signing, secret: SECRET, headers, body, received_at: T + 10, expect, expected };
});

process.stdout.write(JSON.stringify(out, null, 2) + '\n');
