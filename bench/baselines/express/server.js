// The hand-written handler webhookbus is measured against: the UIP docs' "Webhook Handler
// Template" (Express, express.json(), HMAC-SHA256 hex in X-UIP-Signature) with a kafkajs
// producer bolted on.  Two changes make it a fair, correct opponent:
//  - the HMAC covers the raw body (what UIP's troubleshooting section asks for), kept by
//    express.json's verify hook, and is compared in constant time;
//  - the 200 is sent after Kafka acknowledged the record (acks=-1), not before, so a 2xx is
//    never lost, as with webhookbus.  The record is the raw body keyed by uip_id (less work
//    than webhookbus's CloudEvent envelope).
// The local test broker (tansu) rejects the InitProducerId version kafkajs sends for an
// idempotent producer, so this producer is acks=-1 without idempotence.
//
// Environment: PORT, KAFKA_BROKERS (comma-separated), TOPIC, UIP_WEBHOOK_SECRET.
'use strict';

const crypto = require('crypto');
const express = require('express');
const { Kafka, logLevel } = require('kafkajs');

const secret = process.env.UIP_WEBHOOK_SECRET;
const topic = process.env.TOPIC;
const port = Number(process.env.PORT || 3000);
if (!secret || !topic) {
  console.error('UIP_WEBHOOK_SECRET and TOPIC must be set');
  process.exit(2);
}

const kafka = new Kafka({
  clientId: 'express-baseline',
  brokers: (process.env.KAFKA_BROKERS || '127.0.0.1:9092').split(','),
  logLevel: logLevel.ERROR,
});
const producer = kafka.producer({ idempotent: false, allowAutoTopicCreation: true });

const app = express();
app.use(express.json({ limit: '1mb', verify: (req, _res, buf) => { req.rawBody = buf; } }));

app.post('/webhook', async (req, res) => {
  const signature = req.headers['x-uip-signature'];
  const expected = crypto.createHmac('sha256', secret).update(req.rawBody || '').digest('hex');
  if (typeof signature !== 'string' || signature.length !== expected.length ||
      !crypto.timingSafeEqual(Buffer.from(signature), Buffer.from(expected))) {
    return res.status(401).send('Invalid signature');
  }
  const { event, data } = req.body;
  if (typeof event !== 'string') {
    return res.status(400).send('No event');
  }
  try {
    await producer.send({ topic, acks: -1, messages: [{ key: data && data.uip_id, value: req.rawBody }] });
  } catch (error) {
    console.error('Kafka publish failed:', error.message);
    return res.status(503).send('Kafka unavailable');
  }
  res.status(200).send('OK');
});

async function main() {
  await producer.connect();
  const server = app.listen(port, '127.0.0.1', () => console.log(`listening on ${port}`));
  server.keepAliveTimeout = 5000;
  const stop = () => server.close(async () => { await producer.disconnect(); process.exit(0); });
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((error) => { console.error(error); process.exit(1); });
