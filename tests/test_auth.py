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


def test_rs256_with_public_key() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    verifier = TokenVerifier(public_pem, algorithms=("RS256",))
    assert verifier.verify(mint_token(private_pem, "7", algorithm="RS256")).user_id == "7"
    # An HS256 token "signed" with the public key (the classic key-confusion attack) fails.
    forged = jwt.encode({"sub": "7", "exp": 4102444800}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError):
        verifier.verify(forged)
