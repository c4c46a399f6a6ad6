"""The wire shapes of changes to messages (docs/protocol.md, "Edits, deletions and
reactions"), without sockets."""

from __future__ import annotations

import json

import pytest

from parley import protocol as p
from parley.codes import ErrorCode


def test_change_actions_parse() -> None:
    cmd = p.parse_frame(
        '{"action": "edit_message", "conversation_id": "7", "message_id": "9",'
        ' "content": "x", "request_id": "r"}'
    )
    assert isinstance(cmd, p.EditMessage) and cmd.content == "x" and cmd.request_id == "r"
    assert isinstance(
        p.parse_frame('{"action": "delete_message", "conversation_id": "7", "message_id": "9"}'),
        p.DeleteMessage,
    )
    for action in ("add_reaction", "remove_reaction"):
        cmd = p.parse_frame(
            json.dumps({"action": action, "conversation_id": "7", "message_id": "9", "emoji": "👍"})
        )
        assert isinstance(cmd, p.AddReaction | p.RemoveReaction) and cmd.emoji == "👍"
        assert cmd.__struct_config__.tag == action
    send = p.parse_frame(
        '{"action": "send_message", "conversation_id": "7", "content": "hi", "local_id": "l",'
        ' "mentions": ["1", "2"]}'
    )
    assert isinstance(send, p.SendMessage) and send.mentions == ["1", "2"]
    assert {"edit_message", "delete_message", "add_reaction", "remove_reaction"} <= p.ACTIONS


@pytest.mark.parametrize(
    "frame",
    [
        {"action": "edit_message", "conversation_id": "7", "message_id": "9"},
        {"action": "edit_message", "conversation_id": "7", "content": "x"},
        {"action": "delete_message", "message_id": "9"},
        {"action": "add_reaction", "conversation_id": "7", "message_id": "9"},
        {"action": "add_reaction", "conversation_id": "7", "message_id": "9", "emoji": 5},
        {
            "action": "remove_reaction",
            "conversation_id": "7",
            "message_id": "9",
            "emoji": "x" * 200,
        },
        {
            "action": "send_message",
            "conversation_id": "7",
            "content": "x",
            "local_id": "l",
            "mentions": "1",
        },
    ],
)
def test_bad_change_frames_are_invalid_with_their_request_id(frame: dict[str, object]) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.parse_frame(json.dumps({**frame, "request_id": "rq"}))
    assert err.value.code == ErrorCode.INVALID_MESSAGE and err.value.request_id == "rq"


def test_messages_always_carry_the_change_fields() -> None:
    msg = p.WireMessage("1", "7", 1, "u", "hi", "2023-12-01T12:00:00.000Z", "sent", None, [])
    encoded = json.loads(p.encode_chat_message(msg))["message"]
    assert encoded["edited_at"] is None and encoded["deleted"] is False
    assert encoded["reactions"] == {} and encoded["mentions"] == []
    assert "local_id" not in encoded


def test_change_events_and_the_requesters_copy() -> None:
    data = p.ReactionData(conversation_id="7", seq=5, message_id="9", user_id="u", emoji="👍")
    plain = json.loads(p.encode_change(p.ReactionAddedEvent(data=data)))
    assert plain == {
        "type": "reaction.added",
        "data": {
            "conversation_id": "7",
            "seq": 5,
            "message_id": "9",
            "user_id": "u",
            "emoji": "👍",
        },
    }
    mine = p.ReactionRemovedEvent(
        data=p.ReactionData(
            conversation_id="7", seq=5, message_id="9", user_id="u", emoji="👍", request_id="r1"
        )
    )
    decoded = p.parse_event(p.encode_change(mine))
    assert decoded == mine
    gone = p.MessageDeletedEvent(
        data=p.MessageDeletedData(conversation_id="7", seq=6, message_id="9", deleted_at=p.iso(0.5))
    )
    assert json.loads(p.encode_change(gone))["data"] == {
        "conversation_id": "7",
        "seq": 6,
        "message_id": "9",
        "deleted_at": "1970-01-01T00:00:00.500Z",
    }
    msg = p.WireMessage("1", "7", 1, "u", "hi", "2023-12-01T12:00:00.000Z", "sent", None, [])
    updated = p.MessageUpdatedEvent(
        data=p.MessageUpdatedData(conversation_id="7", seq=7, message=msg, request_id="e")
    )
    back = p.parse_event(p.encode_change(updated))
    assert isinstance(back, p.MessageUpdatedEvent) and back.data.message.reactions == {}
    assert back.data.request_id == "e"
