"""webhookbus: verify identity providers webhooks, normalise them to CloudEvents, publish to Kafka."""
