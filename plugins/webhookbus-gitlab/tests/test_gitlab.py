"""The GitLab plugin: the webhookbus contract suite for a static-token scheme (it authenticates
the header, not the body), token rotation, and GitLab's documented push payload.  The end-to-end
run through a listener is webhookbus's tests/test_third_party_plugin.py."""

from __future__ import annotations

import json

import pytest

from webhookbus.plugin import MalformedPayload, VerificationFailed
from webhookbus.signing import matched_secret_index
from webhookbus.testing.contract import ContractCase, VerifierContract
from webhookbus.testing.samples import SignedRequest, signers_for
from webhookbus_gitlab import GitLabOptions, GitLabVerifier
from webhookbus_gitlab.sample import sign

TOKEN, OLD_TOKEN = b"gitlab-token-for-plugin-tests", b"gitlab-old-token"
PATH = "/webhooks/gitlab"

# The start of the push event in GitLab's "Webhook events" documentation, as GitLab sends it.
DOCS_PUSH = (b'{"object_kind":"push","event_name":"push","before":"95790bf891e76fee5e1747ab589903a6a1f80f22",'
             b'"after":"da1560886d4f094c3e6c9ef40349f7d38b5d27d7","ref":"refs/heads/master","user_id":4,'
             b'"user_name":"John Smith","project_id":15,"total_commits_count":4}')


class TestGitLabContract(VerifierContract):
    @pytest.fixture
    def contract_case(self) -> ContractCase:
        options = GitLabOptions()
        return ContractCase(
            verifier=GitLabVerifier(options, [TOKEN]),
            sign=lambda: sign(options, TOKEN, PATH),
            forge=lambda: sign(options, b"not-the-token", PATH),
            sign_payload=lambda data: sign(options, TOKEN, PATH, data),
            secrets=[TOKEN],
            authenticates=("headers",),  # a static token: the body is not signed
            required_headers=["X-Gitlab-Token"],
            provider="gitlab",
        )


def delivery(token: bytes, body: bytes = DOCS_PUSH, **headers: str) -> SignedRequest:
    return SignedRequest("POST", PATH, {"X-Gitlab-Token": token.decode(), "X-Gitlab-Event-UUID": "uuid-1", **headers},
                         body)


def test_the_documented_push_event():
    (event,) = GitLabVerifier(GitLabOptions(), [TOKEN]).verify(delivery(TOKEN).inbound("gitlab")).events
    assert (event.name, event.id, event.subject) == ("push", "uuid-1", "4")
    assert event.data_json == DOCS_PUSH and json.loads(DOCS_PUSH) == event.data


def test_either_token_of_a_rotation_and_the_index_is_reported():
    verifier = GitLabVerifier(GitLabOptions(), [TOKEN, OLD_TOKEN])
    verifier.verify(delivery(OLD_TOKEN).inbound("gitlab"))
    assert matched_secret_index.get() == 1
    verifier.verify(delivery(TOKEN).inbound("gitlab"))
    assert matched_secret_index.get() == 0
    with pytest.raises(VerificationFailed):
        verifier.verify(delivery(TOKEN[:-1]).inbound("gitlab"))


@pytest.mark.parametrize("body", [b'{"object_kind": true}', b'{"object_kind": ""}', b"[]", b'"push"'])
def test_a_body_without_an_object_kind_is_malformed(body):
    with pytest.raises(MalformedPayload):
        GitLabVerifier(GitLabOptions(), [TOKEN]).verify(delivery(TOKEN, body).inbound("gitlab"))


def test_allowed_events_and_subjects_that_are_no_user_id():
    verifier = GitLabVerifier(GitLabOptions(allowed_events=["merge_request"]), [TOKEN])
    with pytest.raises(MalformedPayload, match="not accepted"):
        verifier.verify(delivery(TOKEN).inbound("gitlab"))
    body = b'{"object_kind":"merge_request","user":{"id":true}}'
    assert verifier.verify(delivery(TOKEN, body).inbound("gitlab")).events[0].subject is None


def test_the_signer_is_registered_for_webhookbus_sign():
    assert signers_for("gitlab") == {"default": sign}
