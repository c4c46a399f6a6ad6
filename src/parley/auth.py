"""JWT verification and minting (SPEC §2).

Tokens are HS256 with the server secret by default; RS256/ES256 with a public key when
configured. ``sub`` is the user id, ``exp`` is required, ``aud``/``iss`` are checked when
configured. ``alg: none`` and every algorithm not configured are refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

MAX_USER_ID_LENGTH = 128


class AuthError(Exception):
    """The token is missing, malformed, badly signed, expired or has wrong claims."""


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    expires_at: float  # unix seconds
    admin: bool = False


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    key: str  # HS secret, or PEM public key for RS/ES algorithms
    algorithms: tuple[str, ...] = ("HS256",)
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 0.0

    def verify(self, token: str | None) -> Identity:
        """Return the identity of a valid token or raise ``AuthError``."""
        if not token:
            raise AuthError("missing token")
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self.audience is not None,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {type(exc).__name__}") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_USER_ID_LENGTH:
            raise AuthError("invalid token: bad sub")
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            raise AuthError("invalid token: bad exp")
        return Identity(user_id=sub, expires_at=float(exp), admin=claims.get("admin") is True)


def mint_token(
    secret: str,
    user_id: str,
    *,
    ttl: float = 3600.0,
    now: float | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    admin: bool = False,
    algorithm: str = "HS256",
) -> str:
    """A signed token for ``user_id`` valid for ``ttl`` seconds."""
    issued = time.time() if now is None else now
    claims: dict[str, object] = {"sub": user_id, "iat": int(issued), "exp": int(issued + ttl)}
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    if admin:
        claims["admin"] = True
    return jwt.encode(claims, secret, algorithm=algorithm)
