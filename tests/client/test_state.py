"""The pure reducer: the seed's store shape, ordering, dedup, acks, receipts."""

from __future__ import annotations

import copy
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as hs

from parley.client import state as st
from parley.client.state import ChatState, QueuedMessage, entry_key
from parley.codes import MessageStatus

ME = "alice"


def established(*convs: tuple[str, int], user: str = ME) -> st.Action:
    return st.connection_established(
        {
            "client_id": f"user_{user}_1",
            "user_id": user,
            "active_conversations": [c for c, _ in convs],
            "timestamp": "2024-01-01T00:00:00Z",
            "conversations": {c: {"last_seq": n} for c, n in convs},
        }
    )


def msg(seq: int, cid: str = "1", sender: str = "bob", **kw: Any) -> dict[str, Any]:
    return {
        "id": str(100 * int(cid) + seq),
        "conversation_id": cid,
        "seq": seq,
        "sender_id": sender,
        "content": f"m{seq}",
        "sent_at": "2024-01-01T00:00:00Z",
        "status": "sent",
        "reply_to": None,
        "attachments": [],
        **kw,
    }


def queued(local_id: str, cid: str = "1", content: str = "hi") -> QueuedMessage:
    return {
        "action": "send_message",
        "conversation_id": cid,
        "content": content,
        "local_id": local_id,
    }


def run(*actions: st.Action, state: ChatState | None = None) -> ChatState:
    s = state or st.initial_state()
    for a in actions:
        s = st.reduce(s, a)
    return s


def seqs(s: ChatState, cid: str = "1") -> list[int | None]:
    return [m["seq"] for m in st.conversation_messages(s, cid)]


def test_initial_state_has_the_seed_shape() -> None:
    s = st.initial_state()
    assert s["connection"]["status"] == "disconnected"
    assert s["connection"]["lastConnected"] is None and s["connection"]["error"] is None
    assert s["conversations"] == {"byId": {}, "allIds": ()}
    assert s["messages"]["byId"] == {} and s["messages"]["byConversation"] == {}
    assert s["typing"] == {"byConversation": {}}
    assert s["messageQueue"] == ()


def test_seed_action_creators() -> None:
    assert st.connect() == {"type": "chat/connect"}
    assert st.connection_established({"a": 1}) == {
        "type": "chat/connectionEstablished",
        "payload": {"a": 1},
    }
    assert st.send_message(queued("l1"))["type"] == "chat/sendMessage"
    assert st.message_received(msg(1))["type"] == "chat/messageReceived"
    assert st.update_message_status("9", "read") == {
        "type": "chat/updateMessageStatus",
        "payload": {"messageId": "9", "status": "read"},
    }


def test_unknown_action_returns_the_same_state() -> None:
    s = st.initial_state()
    assert st.reduce(s, {"type": "other/thing"}) is s


def test_connect_and_establish() -> None:
    s = run(st.connect())
    assert s["connection"]["status"] == "connecting"
    s = run(established(("1", 3), ("2", 0)), state=s)
    conn = s["connection"]
    assert conn["status"] == "connected" and conn["userId"] == ME
    assert conn["clientId"] == "user_alice_1"
    assert conn["lastConnected"] == "2024-01-01T00:00:00Z"
    assert s["conversations"]["allIds"] == ("1", "2")
    assert s["conversations"]["byId"]["1"]["last_seq"] == 3
    assert st.gaps(s) == {"1": 0}
    assert st.sync_cursors(s) == {"1": 0, "2": 0}


def test_a_conversation_left_becomes_inactive() -> None:
    s = run(established(("1", 0), ("2", 0)), established(("2", 0)))
    assert s["conversations"]["byId"]["1"]["active"] is False
    assert st.sync_cursors(s) == {"2": 0}


def test_disconnect_clears_typing_and_records_the_reason() -> None:
    s = run(
        established(("1", 0)),
        st.typing_received({"user_id": "bob", "conversation_id": "1", "is_typing": True}),
        st.disconnected(4003, "token expired"),
    )
    assert s["connection"]["status"] == "disconnected"
    assert s["connection"]["error"] == "4003: token expired"
    assert s["typing"]["byConversation"] == {}


def test_messages_are_ordered_by_seq_and_synced_seq_is_contiguous() -> None:
    s = run(established(("1", 5)), *(st.message_received(msg(n)) for n in (3, 1, 5)))
    assert seqs(s) == [1, 3, 5]
    conv = s["conversations"]["byId"]["1"]
    assert conv["synced_seq"] == 1 and conv["last_seq"] == 5
    s = run(st.message_received(msg(2)), state=s)
    assert s["conversations"]["byId"]["1"]["synced_seq"] == 3
    s = run(st.message_received(msg(4)), state=s)
    assert seqs(s) == [1, 2, 3, 4, 5]
    assert s["conversations"]["byId"]["1"]["synced_seq"] == 5
    assert st.gaps(s) == {}


def test_duplicates_are_dropped_by_id() -> None:
    s = run(established(("1", 0)), st.message_received(msg(1)))
    again = st.reduce(s, st.message_received(msg(1)))
    assert again is s
    assert seqs(again) == [1]


def test_a_duplicate_can_only_move_status_forward() -> None:
    s = run(established(("1", 0)), st.message_received(msg(1, sender=ME, status="read")))
    s = run(st.message_received(msg(1, sender=ME, status="sent")), state=s)
    assert s["messages"]["byId"]["101"]["status"] == MessageStatus.READ


def test_the_reducer_does_not_mutate_its_input() -> None:
    s = run(established(("1", 2)), st.send_message(queued("l1")), st.message_received(msg(2)))
    snapshot = copy.deepcopy(s)
    for action in (
        st.message_received(msg(1)),
        st.message_received(msg(3, sender=ME, local_id="l1")),
        st.receipt_received(
            "read", {"user_id": "bob", "conversation_id": "1", "message_ids": ["103"]}
        ),
        st.typing_received({"user_id": "bob", "conversation_id": "1", "is_typing": True}),
        st.message_failed("l1", {"code": "MESSAGE_FAILED"}),
        st.conversation_updated({"id": "1", "member_ids": [ME, "bob"], "last_seq": 9}),
    ):
        st.reduce(s, action)
    assert s == snapshot


def test_send_then_ack_rekeys_the_record_and_empties_the_queue() -> None:
    s = run(established(("1", 1)), st.message_received(msg(1)), st.send_message(queued("l1")))
    rec = st.find_message(s, "l1")
    assert rec is not None and rec["status"] == MessageStatus.SENDING and rec["id"] is None
    assert rec["sender_id"] == ME
    assert [entry_key(e) for e in s["messageQueue"]] == ["l1"]
    assert s["messages"]["byConversation"]["1"] == ("101", "l1")

    s, changed = st.reduce_with_changes(s, st.message_received(msg(2, sender=ME, local_id="l1")))
    assert changed == ("102",)
    rec = st.find_message(s, "l1")
    assert rec is not None and rec["id"] == "102" and rec["status"] == MessageStatus.SENT
    assert "l1" not in s["messages"]["byId"]
    assert s["messages"]["byLocalId"]["l1"] == "102"
    assert s["messages"]["byConversation"]["1"] == ("101", "102")
    assert s["messageQueue"] == ()
    assert s["conversations"]["byId"]["1"]["synced_seq"] == 2


def test_pending_messages_stay_after_the_seq_ordered_ones() -> None:
    s = run(
        established(("1", 0)),
        st.send_message(queued("a")),
        st.send_message(queued("b")),
        st.message_received(msg(1)),
        st.message_received(msg(2, sender=ME, local_id="b")),
    )
    keys = s["messages"]["byConversation"]["1"]
    assert keys == ("101", "102", "a")


def test_ack_through_history_with_aggregate_status() -> None:
    s = run(established(("1", 0)), st.send_message(queued("l1")))
    s = run(st.message_received(msg(1, sender=ME, local_id="l1", status="read")), state=s)
    rec = st.find_message(s, "l1")
    assert rec is not None and rec["status"] == MessageStatus.READ


def test_queue_loaded_before_the_first_connection_gets_the_sender_later() -> None:
    s = run(st.queue_loaded([queued("a"), queued("b", cid="2")]))
    assert [entry_key(e) for e in s["messageQueue"]] == ["a", "b"]
    a = st.find_message(s, "a")
    assert a is not None and a["sender_id"] is None
    s = run(st.queue_loaded([queued("a")]), established(("1", 0), ("2", 0)), state=s)
    assert len(s["messageQueue"]) == 2
    a = st.find_message(s, "a")
    assert a is not None and a["sender_id"] == ME


def test_failed_then_retried_then_acked() -> None:
    s = run(established(("1", 0)), st.send_message(queued("l1")))
    err = {"code": "MESSAGE_FAILED", "message": "boom", "local_id": "l1"}
    s = run(st.message_failed("l1", err), state=s)
    rec = st.find_message(s, "l1")
    assert rec is not None and rec["status"] == MessageStatus.FAILED and rec["error"] == err
    assert s["messageQueue"] == ()
    s = run(st.retry_message("l1"), state=s)
    rec = st.find_message(s, "l1")
    assert rec is not None and rec["status"] == MessageStatus.SENDING and rec["error"] is None
    assert [entry_key(e) for e in s["messageQueue"]] == ["l1"]
    s = run(st.message_received(msg(1, sender=ME, local_id="l1")), state=s)
    rec = st.find_message(s, "l1")
    assert rec is not None and rec["status"] == MessageStatus.SENT


def test_a_late_ack_overrides_failed() -> None:
    s = run(
        established(("1", 0)),
        st.send_message(queued("l1")),
        st.message_failed("l1", {"code": "MESSAGE_FAILED"}),
        st.message_received(msg(1, sender=ME, local_id="l1")),
    )
    rec = st.find_message(s, "l1")
    assert rec is not None and rec["status"] == MessageStatus.SENT and rec["error"] is None


def test_retry_of_a_message_not_failed_does_nothing() -> None:
    s = run(established(("1", 0)), st.send_message(queued("l1")))
    assert st.reduce(s, st.retry_message("l1")) is s
    assert st.reduce(s, st.retry_message("nope")) is s


def test_update_message_status_moves_forward_only() -> None:
    s = run(established(("1", 0)), st.message_received(msg(1, sender=ME, local_id="l1")))
    s = run(st.update_message_status("l1", "read"), state=s)
    assert s["messages"]["byId"]["101"]["status"] == MessageStatus.READ
    s = run(st.update_message_status("101", "delivered"), state=s)
    assert s["messages"]["byId"]["101"]["status"] == MessageStatus.READ
    assert st.reduce(s, st.update_message_status("404", "read")) is s


def test_status_order() -> None:
    adv = st.status_advanced
    assert adv(MessageStatus.SENDING, MessageStatus.SENT) is MessageStatus.SENT
    assert adv(MessageStatus.READ, MessageStatus.DELIVERED) is MessageStatus.READ
    assert adv(MessageStatus.SENDING, MessageStatus.FAILED) is MessageStatus.FAILED
    assert adv(MessageStatus.SENT, MessageStatus.FAILED) is MessageStatus.SENT
    assert adv(MessageStatus.FAILED, MessageStatus.SENDING) is MessageStatus.SENDING  # a retry
    assert adv(MessageStatus.FAILED, MessageStatus.DELIVERED) is MessageStatus.DELIVERED


def receipt(kind: st.ReceiptKind, user: str, *ids: str, cid: str = "1") -> st.Action:
    return st.receipt_received(
        kind, {"user_id": user, "conversation_id": cid, "message_ids": list(ids)}
    )


def test_receipts_in_a_direct_conversation() -> None:
    s = run(
        established(("1", 0)),
        st.conversation_updated({"id": "1", "kind": "direct", "member_ids": [ME, "bob"]}),
        *(st.message_received(msg(n, sender=ME, local_id=f"l{n}")) for n in (1, 2, 3)),
    )
    s, changed = st.reduce_with_changes(s, receipt("delivered", "bob", "102"))
    assert set(changed) == {"101", "102"}
    status = {k: r["status"] for k, r in s["messages"]["byId"].items()}
    assert status == {"101": "delivered", "102": "delivered", "103": "sent"}
    s = run(receipt("read", "bob", "101", "103"), state=s)
    status = {k: r["status"] for k, r in s["messages"]["byId"].items()}
    assert status == {"101": "read", "102": "read", "103": "read"}


def test_group_status_waits_for_every_other_member() -> None:
    s = run(
        established(("1", 0)),
        st.conversation_updated({"id": "1", "member_ids": [ME, "bob", "carol"]}),
        st.message_received(msg(1, sender=ME, local_id="l1")),
        receipt("read", "bob", "101"),
    )
    assert s["messages"]["byId"]["101"]["status"] == MessageStatus.SENT
    s = run(receipt("delivered", "carol", "101"), state=s)
    assert s["messages"]["byId"]["101"]["status"] == MessageStatus.DELIVERED
    s = run(receipt("read", "carol", "101"), state=s)
    assert s["messages"]["byId"]["101"]["status"] == MessageStatus.READ


def test_receipts_never_touch_others_messages_and_own_receipts_do_not_count() -> None:
    s = run(
        established(("1", 0)),
        st.conversation_updated({"id": "1", "member_ids": [ME, "bob"]}),
        st.message_received(msg(1, sender="bob")),
        st.message_received(msg(2, sender=ME, local_id="l2")),
        receipt("read", ME, "102"),
    )
    assert s["messages"]["byId"]["102"]["status"] == MessageStatus.SENT
    s = run(receipt("read", "bob", "102"), state=s)
    assert s["messages"]["byId"]["101"]["status"] == MessageStatus.SENT
    assert s["messages"]["byId"]["102"]["status"] == MessageStatus.READ


def test_receipts_wait_for_the_member_list() -> None:
    s = run(
        established(("1", 0)),
        st.message_received(msg(1, sender=ME, local_id="l1")),
        st.message_received(msg(2, sender=ME, local_id="l2")),
        receipt("read", "bob", "101"),
        receipt("delivered", "carol", "102"),
    )
    # Who must have read it is not known yet: nothing moves.
    assert s["messages"]["byId"]["101"]["status"] == MessageStatus.SENT
    s, changed = st.reduce_with_changes(
        s, st.conversation_updated({"id": "1", "member_ids": [ME, "bob", "carol"]})
    )
    assert changed == ("101",)
    assert s["messages"]["byId"]["101"]["status"] == MessageStatus.DELIVERED
    assert s["messages"]["byId"]["102"]["status"] == MessageStatus.SENT
    s = run(st.conversation_updated({"id": "1", "member_ids": [ME, "bob"]}), state=s)
    assert s["messages"]["byId"]["101"]["status"] == MessageStatus.READ


def test_an_ack_after_the_receipts_gets_the_status_at_once() -> None:
    s = run(
        established(("1", 0)),
        st.conversation_updated({"id": "1", "member_ids": [ME, "bob"]}),
        st.send_message(queued("l2")),
        st.message_received(msg(1, sender="bob")),
        st.message_received(msg(3, sender="bob")),
        receipt("read", "bob", "103"),
        st.message_received(msg(2, sender=ME, local_id="l2")),
    )
    assert s["messages"]["byId"]["102"]["status"] == MessageStatus.READ


def test_typing() -> None:
    on = {"user_id": "bob", "conversation_id": "1", "is_typing": True, "timestamp": "t"}
    s = run(established(("1", 0)), st.typing_received(on))
    assert s["typing"]["byConversation"] == {"1": {"bob": "t"}}
    s = run(st.typing_received({**on, "is_typing": False}), state=s)
    assert s["typing"]["byConversation"] == {}
    assert st.reduce(s, st.typing_received({**on, "is_typing": False})) is s
    assert st.reduce(s, st.typing_received({**on, "user_id": ME})) is s


def test_conversation_created_and_updated() -> None:
    s = run(established(("1", 0)))
    s = run(
        st.conversation_updated(
            {"id": "7", "title": "t", "kind": "group", "member_ids": [ME, "bob"], "last_seq": 4}
        ),
        state=s,
    )
    conv = s["conversations"]["byId"]["7"]
    assert conv["title"] == "t" and conv["member_ids"] == (ME, "bob") and conv["last_seq"] == 4
    assert s["conversations"]["allIds"] == ("1", "7")
    s = run(st.conversation_updated({"id": "7", "member_ids": ["bob"]}), state=s)
    assert s["conversations"]["byId"]["7"]["active"] is False


def test_sync_completed_raises_last_seq_only() -> None:
    s = run(established(("1", 5)))
    s = run(st.sync_completed({"conversations": {"1": {"last_seq": 7, "has_more": True}}}), state=s)
    assert s["conversations"]["byId"]["1"]["last_seq"] == 7
    s = run(st.sync_completed({"conversations": {"1": {"last_seq": 3}}}), state=s)
    assert s["conversations"]["byId"]["1"]["last_seq"] == 7


def test_history_skipped() -> None:
    s = run(established(("1", 10)), st.message_received(msg(12)))
    s = run(st.history_skipped("1", 10), state=s)
    conv = s["conversations"]["byId"]["1"]
    assert conv["synced_seq"] == 10 and st.gaps(s) == {"1": 10}
    s = run(st.message_received(msg(11)), state=s)
    assert s["conversations"]["byId"]["1"]["synced_seq"] == 12
    assert st.reduce(s, st.history_skipped("1", 5)) is s


def test_messages_between() -> None:
    s = run(
        established(("1", 0)),
        *(st.message_received(msg(n)) for n in (1, 2, 3, 5)),
        st.send_message(queued("p")),
    )
    assert [m["seq"] for m in st.messages_between(s, "1", 1, 3)] == [2, 3]
    assert [m["seq"] for m in st.messages_between(s, "1", 0, 100)] == [1, 2, 3, 5]
    assert st.messages_between(s, "nope", 0, 10) == []


@settings(max_examples=60, deadline=None)
@given(hs.data())
def test_any_delivery_order_with_duplicates_converges(data: hs.DataObject) -> None:
    """Whatever order and repetition messages arrive in, the result is 1..n, once each."""
    n = data.draw(hs.integers(1, 30))
    arrivals = data.draw(hs.lists(hs.integers(1, n), min_size=0, max_size=3 * n))
    arrivals += list(range(1, n + 1))
    random.Random(data.draw(hs.integers(0, 1000))).shuffle(arrivals)
    s = run(established(("1", n)))
    synced = 0
    for seq in arrivals:
        s = st.reduce(s, st.message_received(msg(seq)))
        now = s["conversations"]["byId"]["1"]["synced_seq"]
        assert now >= synced
        synced = now
        got = [q for q in seqs(s) if q is not None]
        assert got == sorted(set(got)) and len(got) == len(seqs(s))
    assert seqs(s) == list(range(1, n + 1))
    assert s["conversations"]["byId"]["1"]["synced_seq"] == n
