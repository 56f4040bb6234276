"""Head office's answers to an online authorization, checked before the terminal acts on them: a 200 that is not
the expected shape is no answer (head office may have approved, so a reversal is owed), never an approval."""

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from offline_queue.hqclient import HeadOfficeClient, HeadOfficeUnreachable

REQUEST = {"idempotency_key": "k-1", "type": "sale", "amount_minor": 1250, "currency": "EUR"}


def client_answering(body: bytes) -> HeadOfficeClient:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    return HeadOfficeClient("http://hq.test", "T-1", Ed25519PrivateKey.generate(), transport=transport)


def test_a_well_formed_answer_is_taken_as_it_is():
    answer = {"approved": False, "code": "05", "reason": "do_not_honour", "auth_id": "a-1"}
    with client_answering(orjson.dumps(answer)) as client:
        result = client.authorize(**REQUEST)
    assert (result.approved, result.code, result.reason, result.auth_id) == (False, "05", "do_not_honour", "a-1")


@pytest.mark.parametrize("answer", [
    {"approved": "false", "auth_id": "a-1"},  # a string: bool() of it would have approved
    {"approved": 1, "auth_id": "a-1"},
    {"auth_id": "a-1"},
    {"approved": True},
    {"approved": True, "auth_id": 7},
    {"approved": True, "auth_id": ""},
    {"approved": True, "auth_id": "a-1", "code": 0},
    {"approved": True, "auth_id": "a-1", "reason": ["x"]},
    [],
    "approved",
    None,
])  # fmt: skip
def test_an_answer_of_another_shape_is_no_answer_and_never_an_approval(answer):
    with client_answering(orjson.dumps(answer)) as client, pytest.raises(HeadOfficeUnreachable) as exc:
        client.authorize(**REQUEST)
    assert exc.value.code == "bad_response" and exc.value.maybe_delivered
