"""Token verification: pure."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from parley.auth import AuthError, TokenVerifier, mint_token

SECRET = "a-test-secret-that-is-long-enough-for-every-hmac-algorithm-0123456789"


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_valid_token() -> None:
    identity = TokenVerifier(SECRET).verify(mint_token(SECRET, "123", ttl=60))
    assert identity.user_id == "123" and not identity.admin


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "garbage",
        "a.b.c",
        _b64({"alg": "none", "typ": "JWT"}) + "." + _b64({"sub": "1", "exp": 10**10}) + ".",
        mint_token("wrong-secret-wrong-secret-wrong-secret", "1"),
        mint_token(SECRET, "1", ttl=-5),
        jwt.encode({"sub": "1"}, SECRET, algorithm="HS256"),  # no exp
        jwt.encode({"exp": 10**10}, SECRET, algorithm="HS256"),  # no sub
        jwt.encode({"sub": 5, "exp": 10**10}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "1", "exp": 10**10}, SECRET, algorithm="HS512"),  # not configured
    ],
)
def test_refused(token: str | None) -> None:
    with pytest.raises(AuthError):
        TokenVerifier(SECRET).verify(token)


def test_audience_and_issuer() -> None:
    v = TokenVerifier(SECRET, audience="chat", issuer="acme")
    assert v.verify(mint_token(SECRET, "1", audience="chat", issuer="acme")).user_id == "1"
    for token in (
        mint_token(SECRET, "1", audience="other", issuer="acme"),
        mint_token(SECRET, "1", issuer="acme"),
        mint_token(SECRET, "1", audience="chat", issuer="evil"),
    ):
        with pytest.raises(AuthError):
            v.verify(token)


def test_admin_claim() -> None:
    assert TokenVerifier(SECRET).verify(mint_token(SECRET, "root", admin=True)).admin
