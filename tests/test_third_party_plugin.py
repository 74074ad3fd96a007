"""A plugin from another distribution (plugins/webhookbus-gitlab) is found by entry point and serves end to end."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

from webhookbus.testing import read_topic, to_cloudevent

TOKEN = "gitlab-token-for-tests"


def test_the_plugin_is_installed_from_its_own_distribution():
    [entry] = [ep for ep in entry_points(group="webhookbus.verifiers") if ep.name == "gitlab"]
    assert entry.dist is not None and entry.dist.name == "webhookbus-gitlab"


def test_gitlab_plugin_end_to_end(webhookbus_listener, kafka_broker, topic_name):
    topic = topic_name("gitlab")
    listener = webhookbus_listener({
        "providers": {"gitlab": {"verifier": "gitlab", "path": "/webhooks/gitlab",
                                 "secrets": [f"literal:{TOKEN}"], "options": {"allowed_events": ["push"]}}},
        "routes": [{"provider": "gitlab", "topic": topic}],
    })
    body = json.dumps({"object_kind": "push", "user_id": 7, "ref": "refs/heads/main"}).encode()
    headers = {"x-gitlab-token": TOKEN, "x-gitlab-event-uuid": "2f1c-uuid", "content-type": "application/json"}

    assert listener.post("/webhooks/gitlab", body, {**headers, "x-gitlab-token": "wrong"}).status == 401
    not_allowed = json.dumps({"object_kind": "issue"}).encode()
    assert listener.post("/webhooks/gitlab", not_allowed, headers).status == 400
    assert listener.post("/webhooks/gitlab", b'{"object_kind": "push", "user_id": NaN}', headers).status == 400
    assert listener.post("/webhooks/gitlab", body, headers).status == 200

    [record] = read_topic(kafka_broker.bootstrap, topic, 1)
    event = to_cloudevent(record)
    assert (event.get_type(), event.get_id(), event.get_subject()) == ("gitlab.push", "2f1c-uuid", "7")
    assert event.get_extension("verifier") == "gitlab"
    assert len(read_topic(kafka_broker.bootstrap, topic, 2, timeout=1.0)) == 1, "refused requests never reach Kafka"
