"""What tests and plugin authors reuse: a real broker, a running listener, a topic reader."""

from webhookbus.testing.broker import Broker, free_port, read_topic, to_cloudevent
from webhookbus.testing.listener import Listener, Reply, post

__all__ = ["Broker", "Listener", "Reply", "free_port", "post", "read_topic", "to_cloudevent"]
