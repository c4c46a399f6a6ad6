"""Validation and sync rules of the chat domain, in-process with fake peers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from parley import protocol as p
from parley.codes import ErrorCode
from parley.service import ChatService, ServiceError, rules
from parley.service.limits import Limits

from .conftest import FakePeer, send

Peer = Callable[[str], Awaitable[FakePeer]]


@pytest.mark.parametrize(
    "content", ["nul \x00 here", "lone \ud800 surrogate", "non-character \uffff"]
)
async def test_unstorable_content_is_invalid(
    service: ChatService, peer: Peer, content: str
) -> None:
    conv, _ = await service.create_conversation("ann", ["bob"], None)
    ann = await peer("ann")
    service.handle(ann, send(conv.id, content, "bad"))
    service.handle(ann, send(conv.id, "fine", "good"))
    (error,) = await ann.expect("error")
    assert error["error"]["code"] == "INVALID_MESSAGE" and error["error"]["local_id"] == "bad"
    (ok,) = await ann.expect("chat_message")
    assert ok["message"]["local_id"] == "good" and ok["message"]["seq"] == 1


async def test_unstorable_local_id_title_and_member_ids(service: ChatService, peer: Peer) -> None:
    conv, _ = await service.create_conversation("ann", ["bob"], None)
    ann = await peer("ann")
    service.handle(ann, send(conv.id, "x", "l\x00"))
    (error,) = await ann.expect("error")
    assert error["error"]["code"] == "INVALID_MESSAGE"
    for members, title in ((["b\x00b"], "t"), (["bob"], "t\x00"), ([""], None), ([], None)):
        with pytest.raises(ServiceError) as err:
            await service.create_conversation("ann", members, title)
        assert err.value.code == ErrorCode.INVALID_MESSAGE


async def test_uploads_are_checked_like_inline_attachments(service: ChatService) -> None:
    with pytest.raises(ServiceError) as err:
        await service.upload("ann", "image", "x.png", b"not a png")
    assert err.value.code == ErrorCode.INVALID_MESSAGE
    with pytest.raises(ServiceError) as err:
        await service.upload("ann", "file", "x", b"")
    assert err.value.code == ErrorCode.INVALID_MESSAGE
    wire = await service.upload("ann", "file", "../../etc/passwd", b"data")
    assert wire.filename == "passwd" and wire.size == 4


async def test_an_upload_is_sent_once(service: ChatService, peer: Peer) -> None:
    conv, _ = await service.create_conversation("ann", ["bob"], None)
    ann = await peer("ann")
    wire = await service.upload("ann", "file", "a.txt", b"data")
    ref = [p.AttachmentIn(type="file", id=wire.id)]
    service.handle(ann, send(conv.id, "one", "l1", attachments=ref))
    service.handle(ann, send(conv.id, "two", "l2", attachments=ref))
    (error,) = await ann.expect("error")
    (ok,) = await ann.expect("chat_message")
    assert ok["message"]["local_id"] == "l1"
    assert error["error"]["code"] == "FORBIDDEN" and error["error"]["local_id"] == "l2"


async def test_sync_answers_foreign_ids_with_one_error(service: ChatService, peer: Peer) -> None:
    mine, _ = await service.create_conversation("ann", ["bob"], None)
    theirs, _ = await service.create_conversation("eve", ["mallory"], None)
    ann = await peer("ann")
    cursors = {theirs.id: 0, "999999": 0, "nope": 3, mine.id: 0}
    service.handle(ann, p.Sync(cursors=cursors, request_id="r1"))
    await ann.expect("sync.complete")
    (error,) = ann.of("error")
    assert error["error"]["code"] == "FORBIDDEN" and error["error"]["request_id"] == "r1"
    for cid in (theirs.id, "999999", "nope"):
        assert cid in error["error"]["message"]
    (done,) = ann.of("sync.complete")
    assert set(done["data"]["conversations"]) == {mine.id}


async def test_one_sync_at_a_time_per_connection(service: ChatService, peer: Peer) -> None:
    ann = await peer("ann")
    convs = []
    for i in range(3):
        conv, _ = await service.create_conversation("ann", [f"b{i}"], None)
        convs.append(conv.id)
        for j in range(3):
            service.handle(ann, send(conv.id, f"m{j}", f"c{i}-{j}"))
    await ann.expect("chat_message", 9)
    ann.events.clear()
    service.handle(ann, p.Sync(cursors={}))
    service.handle(ann, p.Sync(cursors={}))
    await ann.expect("sync.complete", 2)
    kinds = [e["type"] for e in ann.events]
    assert kinds == ["chat_message"] * 9 + ["sync.complete"] + ["chat_message"] * 9 + [
        "sync.complete"
    ]


async def test_history_limit_checked(service: ChatService) -> None:
    conv, _ = await service.create_conversation("ann", ["bob"], None)
    for limit in (0, 201):
        with pytest.raises(ServiceError) as err:
            await service.history("ann", conv.id, before_seq=None, after_seq=None, limit=limit)
        assert err.value.code == ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize(
    "raw", ["1e99", "99999999999999999999", "0", "-1", "+1", "1_0", "١٠", "1.0", " 1", "0x10"]
)
def test_strict_int_refuses(raw: str) -> None:
    with pytest.raises(ServiceError) as err:
        rules.strict_int(raw, "limit", low=1, high=200)
    assert err.value.code == ErrorCode.INVALID_MESSAGE


def test_strict_int_accepts() -> None:
    assert rules.strict_int("1", "limit", low=1, high=200) == 1
    assert rules.strict_int("200", "limit", low=1, high=200) == 200
    assert rules.strict_int(None, "limit", low=1, high=200) is None
    assert rules.strict_int("", "limit", low=1, high=200) is None


def test_new_conversation_kind() -> None:
    limits = Limits()
    assert rules.new_conversation("a", ["b"], None, limits) == (["a", "b"], "direct")
    assert rules.new_conversation("a", ["b"], "t", limits) == (["a", "b"], "group")
    assert rules.new_conversation("a", ["b", "c"], None, limits) == (["a", "b", "c"], "group")
    assert rules.new_conversation("a", ["a", "b"], None, limits) == (["a", "b"], "direct")
