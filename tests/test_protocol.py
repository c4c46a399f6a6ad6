"""The pure protocol core: no sockets."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley import protocol as p
from parley.codes import ErrorCode

SEED_SEND = {
    "action": "send_message",
    "conversation_id": "789",
    "content": "Hello!",
    "local_id": "temp_123",
    "reply_to": "456",
    "attachments": [{"type": "image", "file": "base64_content", "filename": "photo.jpg"}],
}


def test_seed_send_message_parses() -> None:
    cmd = p.parse_frame(json.dumps(SEED_SEND))
    assert isinstance(cmd, p.SendMessage)
    assert (cmd.conversation_id, cmd.content, cmd.local_id, cmd.reply_to) == (
        "789",
        "Hello!",
        "temp_123",
        "456",
    )
    assert cmd.attachments is not None and cmd.attachments[0].filename == "photo.jpg"


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        ({"action": "typing", "conversation_id": "789", "is_typing": True}, p.Typing),
        (
            {"action": "mark_read", "conversation_id": "789", "message_ids": ["901", "902"]},
            p.MarkRead,
        ),
        (
            {"action": "mark_delivered", "conversation_id": "789", "message_ids": ["901"]},
            p.MarkDelivered,
        ),
        ({"action": "heartbeat"}, p.Heartbeat),
        ({"action": "sync", "cursors": {"789": 42}}, p.Sync),
        ({"action": "sync"}, p.Sync),
    ],
)
def test_seed_and_spec_actions_parse(frame: dict[str, object], kind: type) -> None:
    assert isinstance(p.parse_frame(json.dumps(frame)), kind)


def test_double_encoded_frame_is_unwrapped_once() -> None:
    once = json.dumps(SEED_SEND)
    assert isinstance(p.parse_frame(json.dumps(once)), p.SendMessage)
    with pytest.raises(p.ProtocolError):
        p.parse_frame(json.dumps(json.dumps(once)))


def test_unknown_fields_are_ignored() -> None:
    cmd = p.parse_frame(json.dumps({"action": "heartbeat", "extra": {"deep": [1, 2, 3]}}))
    assert isinstance(cmd, p.Heartbeat)


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        ("{", "invalid JSON"),
        ("[]", "JSON object"),
        ('{"action": 5}', "unknown action"),
        ('{"action": "dance"}', "unknown action"),
        ("{}", "missing field `action`"),
        ('{"action": "send_message", "conversation_id": "1", "local_id": "x"}', "content"),
        ('{"action": "typing", "conversation_id": "1"}', "is_typing"),
    ],
)
def test_errors_explain_themselves(frame: str, needle: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_frame(frame)
    assert info.value.code is ErrorCode.INVALID_MESSAGE
    assert needle in info.value.message


def test_error_echoes_request_and_local_id() -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_frame(json.dumps({"action": "send_message", "local_id": "L", "request_id": "R"}))
    assert (info.value.local_id, info.value.request_id) == ("L", "R")


def test_local_id_limit() -> None:
    ok = {**SEED_SEND, "local_id": "x" * 64}
    assert isinstance(p.parse_frame(json.dumps(ok)), p.SendMessage)
    with pytest.raises(p.ProtocolError):
        p.parse_frame(json.dumps({**SEED_SEND, "local_id": "x" * 65}))


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    frame = '{"action": "heartbeat", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(p.ProtocolError):
        p.parse_frame(frame)


def test_encoders() -> None:
    assert p.iso(0) == "1970-01-01T00:00:00.000Z"
    err = json.loads(
        p.encode_error(ErrorCode.MESSAGE_FAILED, "Failed to send message", local_id="temp_123")
    )
    assert err == {
        "type": "error",
        "error": {
            "code": "MESSAGE_FAILED",
            "message": "Failed to send message",
            "local_id": "temp_123",
        },
    }
    msg = p.WireMessage(
        "901", "789", 1, "123", "Hello!", "2023-12-01T12:00:00.000Z", "sent", None, []
    )
    plain = json.loads(p.encode_chat_message(msg))
    assert plain["type"] == "chat_message" and "local_id" not in plain["message"]
    msg.local_id = "temp_123"
    assert json.loads(p.encode_chat_message(msg))["message"]["local_id"] == "temp_123"
    est = p.established_data("user_123_1", "123", {"789": 4, "101": 0}, 0)
    assert est["active_conversations"] == ["789", "101"]
    assert est["conversations"]["789"] == {"last_seq": 4}


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False)
            | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=5)
                | st.dictionaries(st.text(max_size=10), children, max_size=5)
            ),
            max_leaves=30,
        ).map(lambda v: msgspec.json.encode(v)),
        st.fixed_dictionaries(
            {"action": st.sampled_from([*sorted(p.ACTIONS), "x"])},
            optional={
                "conversation_id": st.one_of(st.text(max_size=70), st.integers()),
                "content": st.one_of(st.text(), st.none()),
                "local_id": st.text(max_size=80),
                "message_ids": st.lists(st.text(max_size=5)),
                "is_typing": st.booleans(),
                "cursors": st.dictionaries(st.text(max_size=5), st.integers()),
            },
        ).map(lambda v: msgspec.json.encode(v)),
    )
)
def test_any_input_is_a_command_or_a_protocol_error(data: bytes | str) -> None:
    try:
        cmd = p.parse_frame(data)
    except p.ProtocolError as exc:
        assert exc.code is ErrorCode.INVALID_MESSAGE and exc.message
    else:
        assert type(cmd).__name__ in {
            "SendMessage",
            "Typing",
            "MarkRead",
            "MarkDelivered",
            "Heartbeat",
            "Sync",
        }


# --------------------------------------------------------------------------- one definition
def test_generated_js_protocol_is_fresh() -> None:
    """static/sdk/protocol.gen.js is what ``python -m parley.protocol --js`` writes now."""
    assert p.JS_PATH.read_text(encoding="utf-8") == p.render_js(), (
        "stale: run .venv/bin/python -m parley.protocol --js"
    )
    assert p.main(["--js", "--check"]) == 0


def test_check_reports_a_stale_file(tmp_path: Path) -> None:
    path = tmp_path / "protocol.gen.js"
    path.write_text(p.render_js().replace("RATE_LIMITED", "RATE_LIMITD"), encoding="utf-8")
    assert p.main(["--js", "--check", str(path)]) == 1
    assert p.main(["--js", str(path)]) == 0
    assert p.main(["--js", "--check", str(path)]) == 0


def test_every_name_has_exactly_one_struct() -> None:
    assert {str(msgspec.inspect.type_info(t).tag) for t in p.Command.__args__} == p.ACTIONS  # type: ignore[attr-defined]
    assert {str(msgspec.inspect.type_info(t).tag) for t in p.Event.__args__} == p.EVENTS  # type: ignore[attr-defined]


def test_encode_event_refuses_an_undefined_name() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        p.encode_event("chat_mesage", {})
    assert (
        json.loads(p.encode_event("heartbeat_ack", {"timestamp": "x"}))["type"] == "heartbeat_ack"
    )


@pytest.mark.parametrize(
    "command",
    [
        p.SendMessage(conversation_id="1", content="hi", local_id="l1", reply_to="9"),
        p.Typing(conversation_id="1", is_typing=True, request_id="r"),
        p.MarkRead(conversation_id="1", message_ids=["1", "2"]),
        p.MarkDelivered(conversation_id="1", message_ids=["3"]),
        p.Heartbeat(),
        p.Sync(cursors={"1": 4}),
    ],
)
def test_encode_command_round_trips_through_the_server_parser(command: p.Command) -> None:
    frame = p.encode_command(command)
    assert json.loads(frame)["action"] == msgspec.inspect.type_info(type(command)).tag  # type: ignore[attr-defined]
    assert b"null" not in frame  # unset optional fields are left out
    assert p.parse_frame(frame) == command


def test_parse_event_reads_what_the_server_encodes() -> None:
    now = 1_700_000_000.5
    est = p.parse_event(
        p.encode_event("connection.established", p.established_data("c", "u", {"9": 4}, now))
    )
    assert isinstance(est, p.ConnectionEstablishedEvent)
    assert est.data.conversations["9"].last_seq == 4 and est.data.active_conversations == ["9"]
    typing = p.parse_event(p.encode_event("typing_indicator", p.typing_data("u", "9", True, now)))
    assert isinstance(typing, p.TypingIndicatorEvent) and typing.data.is_typing
    read = p.parse_event(p.encode_event("messages_read", p.receipt_data("u", "9", ["1"], now)))
    assert isinstance(read, p.MessagesReadEvent) and read.data.message_ids == ["1"]
    msg = p.WireMessage("5", "9", 3, "u", "hi", p.iso(now), "sent", None, [], local_id="l")
    chat = p.parse_event(p.encode_chat_message(msg))
    assert isinstance(chat, p.ChatMessageEvent) and chat.message == msg
    err = p.parse_event(
        p.encode_error(ErrorCode.RATE_LIMITED, "slow", local_id="l", retry_after_ms=20)
    )
    assert isinstance(err, p.ErrorEvent)
    assert (err.error.code, err.error.local_id, err.error.retry_after_ms) == (
        "RATE_LIMITED",
        "l",
        20,
    )
    done = p.parse_event(
        b'{"type":"sync.complete","data":{"conversations":{"9":{"last_seq":3,"has_more":true}}}}'
    )
    assert isinstance(done, p.SyncCompleteEvent) and done.data.conversations["9"].has_more


def test_parse_event_ignores_unknown_types_and_refuses_garbage() -> None:
    unknown = p.parse_event(b'{"type":"shiny.new","data":{"x":1}}')
    assert isinstance(unknown, p.UnknownEvent) and unknown.type == "shiny.new"
    for bad in (b"not json", b"[1]", b'{"data":{}}', b'{"type":"chat_message","message":{"id":1}}'):
        with pytest.raises(p.FrameError):
            p.parse_event(bad)
