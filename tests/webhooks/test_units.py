"""Pure parts of webhooks: signatures, the retry schedule, event bodies."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from parley.store.base import OutboxEvent
from parley.webhooks import events
from parley.webhooks.backoff import RetryPolicy
from parley.webhooks.signing import signature_header, verify

SECRET = "s3cret"
BODY = b'{"id":"evt_1","type":"message.created"}'


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    header = signature_header(SECRET, BODY, 1_700_000_000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_verify_accepts_a_good_signature_within_tolerance() -> None:
    header = signature_header(SECRET, BODY, 1000)
    assert verify(SECRET, BODY, header, now=1000)
    assert verify(SECRET, BODY, header, now=1299, tolerance=300)
    assert verify(SECRET, BODY, f"v1=deadbeef, {header}", now=1000)  # rotation: any v1


@pytest.mark.parametrize(
    "header",
    [
        "",
        "t=1000",
        "v1=abc",
        "t=abc,v1=abc",
        "t=١٠٠٠,v1=abc",  # non-ASCII digits
        "t=99999999999999999999,v1=abc",
    ],
)
def test_verify_refuses_malformed_headers(header: str) -> None:
    assert not verify(SECRET, BODY, header, now=1000)


def test_verify_refuses_other_bodies_secrets_and_old_timestamps() -> None:
    header = signature_header(SECRET, BODY, 1000)
    assert not verify(SECRET, BODY + b" ", header, now=1000)
    assert not verify("other", BODY, header, now=1000)
    assert not verify(SECRET, BODY, header, now=1301, tolerance=300)
    assert not verify(SECRET, BODY, header, now=699, tolerance=300)


def test_retry_schedule_doubles_from_one_second_to_ten_minutes() -> None:
    policy = RetryPolicy()
    delays = [policy.delay(n) for n in range(1, 14)]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600, 600]
    assert policy.delay(10_000) == 600


def test_retries_stop_after_a_day_of_trying() -> None:
    policy = RetryPolicy()
    created = 1_000_000.0
    now, attempts, times = created, 0, []
    while True:
        attempts += 1
        nxt = policy.next_attempt(created, attempts, now)
        if nxt is None:
            break
        times.append(nxt)
        now = nxt
    assert now - created >= 86_400  # tried for the whole day …
    assert times[-1] - created < 86_400 + 600  # … and not longer than one more wait
    assert attempts == len(times) + 1
    # with ten-minute waits after the first ~17 minutes: about 24*6 attempts in all
    assert 140 <= attempts <= 160


def test_a_scaled_policy_keeps_the_shape() -> None:
    policy = RetryPolicy(base=0.05)
    assert [policy.delay(n) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]
    assert policy.delay(100) == 600


def test_body_embeds_data_as_stored() -> None:
    e = OutboxEvent("evt_x", "member.added", "7", 0.5, b'{"user_ids":["a"]}')
    assert json.loads(events.body(e)) == {
        "id": "evt_x",
        "type": "member.added",
        "created_at": "1970-01-01T00:00:00.500Z",
        "data": {"user_ids": ["a"]},
    }


def test_offline_members_leave_out_the_sender_and_the_online() -> None:
    e = events.message_created("7", {"id": "1", "sender_id": "ann"}, 1.0)
    assert not e.stamped and events.message_of(e.data) == ("1", "ann")
    data = events.stamp_offline(e.data, ["cat", "ann", "bob", "dan"], {"bob"}, "ann")
    assert json.loads(data) == {
        "conversation_id": "7",
        "message": {"id": "1", "sender_id": "ann"},
        "offline_member_ids": ["cat", "dan"],
    }


def test_event_ids_are_unique_and_prefixed() -> None:
    ids = {events.new_event_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("evt_") for i in ids)


def test_edit_and_delete_events_have_the_shapes_of_the_websocket_events() -> None:
    updated = events.message_updated("7", 12, {"id": "3", "content": "new"}, 5.0)
    assert updated.type == "message.updated" and updated.conversation_id == "7"
    assert json.loads(updated.data) == {
        "conversation_id": "7",
        "seq": 12,
        "message": {"id": "3", "content": "new"},
    }
    deleted = events.message_deleted("7", 13, "3", 6.0, 6.0)
    assert json.loads(deleted.data) == {
        "conversation_id": "7",
        "seq": 13,
        "message_id": "3",
        "deleted_at": "1970-01-01T00:00:06.000Z",
    }
