#!/usr/bin/env node
// Independent UNLOQ signature vectors, written from UNLOQ's documented algorithm
// ("Verifying a webhook POST signature", Node.js implementation), not from webhookbus:
//   1. a string with the URL path (leading slash and query string, no host);
//   2. sort the POST payload by key;
//   3. append each key and value to the string;
//   4. HMAC-SHA256 with the application's API secret;
//   5. base64.
// The POST payload is what a Node receiver sees: querystring.parse() for a form body,
// JSON.parse() for a JSON one.  Values join the string with `+`, so JavaScript's own
// String() conversion applies (1.0 -> "1", null -> "null", {} -> "[object Object]").
//
// Usage: node unloq_sign.js > unloq.json      (Node >= 18, no dependencies)
'use strict';
const crypto = require('crypto');
const querystring = require('querystring');

const SECRET = 'unloq-api-secret-Ω-1';

function sign(secret, target, payload) {
  let signed = target;
  const keys = Object.keys(payload).sort();
  for (const key of keys) {
    let value = payload[key];
    if (typeof value === 'undefined') value = '';
    signed = signed + key + value;
  }
  return {
    signature: crypto.createHmac('sha256', secret).update(signed).digest('base64'),
    id: crypto.createHash('sha256').update(signed).digest('hex'),
  };
}

const FORM = 'application/x-www-form-urlencoded';
const JSON_TYPE = 'application/json';

// [name, raw path, query, content type, body, expect]
const cases = [
  ['logout form', '/webhooks/unloq/logout', '', FORM, 'unloq_id=123456&sid=s%3Aabc.DEF%2Fghi', 'ok'],
  ['account form', '/webhooks/unloq/account', '', FORM,
    'unloq_id=987&email=jane.doe%40example.com&ip=203.0.113.7', 'ok'],
  ['query string is signed', '/webhooks/unloq/logout', 'key=app-key&x=1', FORM, 'sid=s1&unloq_id=5', 'ok'],
  ['blank and valueless fields', '/webhooks/unloq/account', '', FORM, 'unloq_id=7&email=a%40b.c&ip=&extra', 'ok'],
  ['plus and utf-8 escapes', '/webhooks/unloq/account', '', FORM,
    'unloq_id=8&name=Jos%C3%A9+Garc%C3%ADa&email=jos%C3%A9%40example.com&ip=', 'ok'],
  ['percent-encoded path', '/webhooks/unloq/caf%C3%A9/logout', '', FORM, 'unloq_id=9&sid=s9', 'ok'],
  ['json scalars the JavaScript way', '/webhooks/unloq/logout', '', JSON_TYPE,
    '{"unloq_id": 42, "sid": null, "on": true, "off": false, "one": 1.0, "half": 1.5, ' +
    '"big": 1e21, "tiny": 1e-7, "small": 0.000001, "e20": 1e20, "sum": 0.30000000000000004, ' +
    '"huge_int": 123456789012345678901, "unsafe_int": 9007199254740993, "neg_zero": -0.0, ' +
    '"denormal": 5e-324, "max": 1.7976931348623157e308, "neg": -2.5e-9, "exp": 12e3}', 'ok'],
  ['json charset parameter', '/webhooks/unloq/account', '', 'application/json; charset=utf-8',
    '{"unloq_id":"u-1","email":"ü@example.com","ip":"2001:db8::1"}', 'ok'],
  ['keys in UTF-16 order', '/webhooks/unloq/account', '', JSON_TYPE,
    '{"unloq_id":"u-2","\\ufb01x":"ligature","\\ud83d\\ude00":"emoji","Zeta":"upper","alpha":"lower","":"empty"}',
    'ok'],
  ['lone surrogate', '/webhooks/unloq/logout', '', JSON_TYPE, '{"unloq_id":"u-3","sid":"a\\ud800b"}', 'ok'],
  ['nested object is not signed content', '/webhooks/unloq/logout', '', JSON_TYPE,
    '{"unloq_id":"u-4","sid":{"real":"s"}}', 'malformed'],
  ['array is not signed content', '/webhooks/unloq/logout', '', JSON_TYPE,
    '{"unloq_id":"u-5","sid":["a","b"]}', 'malformed'],
];

const out = cases.map(([name, rawPath, query, contentType, body, expect]) => {
  const payload = contentType === FORM ? { ...querystring.parse(body) } : JSON.parse(body);
  const target = rawPath + (query ? '?' + query : '');
  const path = decodeURIComponent(rawPath);
  const { signature, id } = sign(SECRET, target, payload);
  const vector = {
    name, secret: SECRET, method: 'POST', path, raw_path: rawPath, query,
    content_type: contentType, body, event: path.split('/').pop(), signature, id, expect,
  };
  if (contentType === FORM) vector.fields = payload;
  return vector;
});

process.stdout.write(JSON.stringify(out, null, 2) + '\n');
