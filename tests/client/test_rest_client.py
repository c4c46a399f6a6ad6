"""``parley.client.rest.RestClient`` against a real server: send, repeat, send as a
member with an admin token, search, and the server's refusals as ``RestError``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from parley.client.rest import RestClient, RestError
from tests.server.test_ws import connect, conversation
from tests.support.server import ParleyServer


async def test_send_repeat_and_search(server: ParleyServer, uid: Any) -> None:
    a, b = uid("ann"), uid("bob")
    conv = (await conversation(server, a, b))["id"]
    api = RestClient(server.ws_url(), token=server.token(a))
    async with await connect(server, b) as bob:
        message, created = await api.send_message(conv, "invoice 5521 paid", local_id="inv-1")
        assert created and message["content"] == "invoice 5521 paid"
        assert message["local_id"] == "inv-1" and message["conversation_id"] == conv
        seen = await bob.expect("chat_message")
        assert seen["message"]["id"] == message["id"]
    again, created = await api.send_message(conv, "other words", local_id="inv-1")
    assert not created and again["id"] == message["id"]
    page = await RestClient(server.http_url, token=server.token(b)).search('"invoice 5521"')
    assert [m["id"] for m in page["messages"]] == [message["id"]]
    assert page["has_more"] is False and page["next_offset"] is None
    page = await api.search("invoice", conversation_id=conv, limit=1, offset=0)
    assert len(page["messages"]) == 1


async def test_admin_sends_as_a_member(server: ParleyServer, uid: Any) -> None:
    a, bot = uid("ann"), uid("bot")
    conv = (await conversation(server, a, bot, title="orders"))["id"]
    admin = RestClient(server.http_url, token=server.token(uid("ops"), admin=True))
    message, created = await admin.send_message(conv, "shipped", local_id="ship-1", sender_id=bot)
    assert created and message["sender_id"] == bot


async def test_refusals_raise_rest_error(server: ParleyServer, uid: Any) -> None:
    a, b = uid("ann"), uid("bob")
    conv = (await conversation(server, a, b))["id"]
    eve = RestClient(server.http_url, token=server.token(uid("eve")))
    with pytest.raises(RestError) as info:
        await eve.send_message(conv, "hi", local_id="e-1")
    assert info.value.status == 403 and info.value.code == "FORBIDDEN"
    with pytest.raises(RestError) as info:
        await eve.search("-only")
    assert info.value.status == 400 and info.value.code == "INVALID_MESSAGE"
    with pytest.raises(RestError) as info:
        await RestClient(server.http_url, token="not-a-jwt").search("x")
    assert info.value.status == 401


async def test_rate_limit_says_when_to_retry(tmp_path: Path, uid: Any) -> None:
    with ParleyServer(
        tmp_path, extra_args=["--rest-rate-limit", "0.5", "--rest-rate-burst", "1"]
    ) as srv:
        api = RestClient(srv.http_url, token=srv.token(uid("ann")))
        await api.search("anything")
        with pytest.raises(RestError) as info:
            await api.search("anything")
        assert info.value.status == 429 and info.value.code == "RATE_LIMITED"
        assert info.value.retry_after is not None and info.value.retry_after >= 1
