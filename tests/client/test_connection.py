"""The close-code table and the small pure helpers of ``parley.client.connection``."""

from __future__ import annotations

import pytest

from parley.auth import mint_token
from parley.client.connection import after_close, decode_frame, http_base, token_expiry
from parley.client.errors import AccessDenied, AuthenticationError, ClientClosed
from parley.codes import CloseCode

SECRET = "a-secret-that-is-long-enough-for-hs256-use"


def test_normal_closure_and_access_denied_stop() -> None:
    for established in (True, False):
        then = after_close(CloseCode.NORMAL, "bye", established=established, can_refresh=True)
        assert isinstance(then.stop, ClientClosed)
        then = after_close(CloseCode.ACCESS_DENIED, None, established=established, can_refresh=True)
        assert isinstance(then.stop, AccessDenied)


def test_unauthorized_refreshes_or_stops() -> None:
    then = after_close(CloseCode.UNAUTHORIZED, "expired", established=True, can_refresh=True)
    assert then.stop is None and then.refresh_token and then.immediate
    then = after_close(CloseCode.UNAUTHORIZED, "bad", established=False, can_refresh=True)
    assert then.stop is None and then.refresh_token and not then.immediate
    then = after_close(CloseCode.UNAUTHORIZED, "bad", established=True, can_refresh=False)
    assert isinstance(then.stop, AuthenticationError)


@pytest.mark.parametrize("code", [None, 1001, 1006, 1008, 1009, 1011, 1013, 4000])
def test_everything_else_reconnects_with_backoff(code: int | None) -> None:
    then = after_close(code, None, established=True, can_refresh=True)
    assert then.stop is None and not then.refresh_token and not then.immediate


def test_token_expiry_is_read_without_verifying() -> None:
    assert token_expiry(mint_token(SECRET, "alice", ttl=60, now=1000)) == 1060
    assert token_expiry("not-a-jwt") is None
    assert token_expiry("a.b.c") is None


def test_http_base() -> None:
    assert http_base("ws://127.0.0.1:8000/ws") == "http://127.0.0.1:8000"
    assert http_base("wss://chat.example/ws?x=1") == "https://chat.example"
    assert http_base("wss://chat.example/parley/ws/") == "https://chat.example/parley"


def test_decode_frame() -> None:
    assert decode_frame('{"type": "x"}') == {"type": "x"}
    assert decode_frame("[1]") is None
    assert decode_frame("{nope") is None
