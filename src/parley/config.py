"""Settings: every knob of ``parley serve``, from flags and ``PARLEY_*`` variables.

One frozen dataclass, built once at start and passed down (never a module global).
Each field's metadata carries its flag help; ``docs``/README's settings table is made
from the same list (``parley serve --help``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any


def _s(default: Any, help: str, *, env: bool = True) -> Any:
    return field(default=default, metadata={"help": help, "env": env})


@dataclass(frozen=True)
class Settings:
    host: str = _s("127.0.0.1", "interface to listen on")
    port: int = _s(8000, "TCP port (0 picks a free one)")
    database: str = _s("sqlite:///parley.db", "sqlite:///PATH or postgresql://…")
    redis: str | None = _s(None, "redis://… for multi-node fan-out (unset: single node)")
    secret: str | None = _s(None, "HS256 secret for JWTs (PARLEY_SECRET)")
    jwt_algorithms: str = _s("HS256", "comma-separated accepted JWT algorithms")
    jwt_public_key_file: str | None = _s(None, "PEM public key file for RS256/ES256")
    jwt_audience: str | None = _s(None, "required `aud` claim, if set")
    jwt_issuer: str | None = _s(None, "required `iss` claim, if set")
    allowed_origins: str | None = _s(
        None, "comma-separated browser Origins allowed; unset: same-origin only; '*': any"
    )
    demo: bool = _s(False, "serve the demo chat page at / with a pick-a-name login")
    data_dir: str = _s(".parley", "directory for generated secrets and local data")
    public_url: str | None = _s(
        None, "absolute base URL for attachment links (unset: relative /attachments/… links)"
    )
    sqlite_synchronous: str = _s("FULL", "SQLite synchronous pragma: FULL or NORMAL")
    commit_delay: float = _s(
        0.002,
        "SQLite: seconds a commit waits for more messages while several users are sending"
        " (group commit; 0: off)",
    )
    max_frame_bytes: int = _s(16 * 1024 * 1024, "largest WebSocket frame (close 1009 above)")
    max_content_length: int = _s(10_000, "largest message content, in characters")
    max_attachment_bytes: int = _s(10 * 1024 * 1024, "largest attachment, decoded bytes")
    max_buffer_bytes: int = _s(
        4 * 1024 * 1024, "per-connection outbound buffer; a slower reader is closed (1013)"
    )
    max_connections: int = _s(100_000, "connections per node; more are refused with 1013")
    max_connections_per_user: int = _s(50, "connections per user per node (1013 above)")
    rate_limit: float = _s(50.0, "actions per second per connection (0: no limit)")
    rate_burst: float = _s(100.0, "token-bucket burst size")
    rate_abuse_strikes: int = _s(50, "rate-limited actions in a row before closing with 1008")
    handshake_timeout: float = _s(10.0, "seconds allowed for the HTTP upgrade")
    ping_interval: float = _s(
        30.0, "seconds between server pings; no pong within half of it closes (0: off)"
    )
    typing_timeout: float = _s(8.0, "seconds after which typing expires without refresh")
    sync_page: int = _s(100, "messages per conversation per sync reply")
    max_members: int = _s(10_000, "members per conversation (413 above)")
    max_members_per_request: int = _s(
        1_000, "user ids per create-conversation or add-members request (413 above)"
    )
    max_conversations_per_hour: int = _s(
        100, "conversations one user may create per hour (429 above)"
    )
    rest_rate_limit: float = _s(20.0, "REST requests per second per user (429 above; 0: off)")
    rest_rate_burst: float = _s(100.0, "REST token-bucket burst size per user")
    attachment_url_ttl: int = _s(86_400, "seconds a signed attachment URL stays valid")
    shutdown_timeout: float = _s(10.0, "seconds to drain on SIGTERM")
    webhook_url: str | None = _s(
        None, "http(s) URL the events of docs/webhooks.md are POSTed to (needs --webhook-secret)"
    )
    webhook_secret: str | None = _s(
        None, "key of the Parley-Signature HMAC on webhook deliveries (needs --webhook-url)"
    )
    webhook_retry_base: float = _s(
        1.0, "seconds before a failed webhook delivery is retried, doubling up to 10 minutes"
    )
    log_level: str = _s("INFO", "DEBUG, INFO, WARNING or ERROR")

    @property
    def origins(self) -> frozenset[str] | None:
        """None: same-origin only; ``{"*"}``: any; else the exact allowed Origins."""
        if not self.allowed_origins:
            return None
        return frozenset(o.strip() for o in self.allowed_origins.split(",") if o.strip())


def _type_of(f: Any) -> type:
    t = f.type if isinstance(f.type, str) else f.type.__name__
    if t.startswith("bool"):
        return bool
    if t.startswith("int"):
        return int
    if t.startswith("float"):
        return float
    return str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        env = "PARLEY_" + f.name.upper()
        help_ = f"{f.metadata['help']} [{env}; default: {f.default!r}]"
        if _type_of(f) is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_
            )
        else:
            parser.add_argument(flag, dest=f.name, type=_type_of(f), default=None, help=help_)


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Flags win over ``PARLEY_*`` variables, which win over defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        value = getattr(args, f.name, None)
        if value is None:
            raw = environ.get("PARLEY_" + f.name.upper())
            if raw is not None:
                kind = _type_of(f)
                if kind is bool:
                    value = raw.strip().lower() in ("1", "true", "yes", "on")
                else:
                    value = kind(raw)
        if value is not None:
            values[f.name] = value
    return Settings(**values)


def settings_table() -> list[tuple[str, str, str, str]]:
    """(flag, env, default, help) for every setting, for docs."""
    rows = []
    for f in fields(Settings):
        default = "" if f.default is MISSING or f.default is None else str(f.default)
        rows.append(
            (
                "--" + f.name.replace("_", "-"),
                "PARLEY_" + f.name.upper(),
                default,
                f.metadata["help"],
            )
        )
    return rows


def ensure_secret(settings: Settings) -> Settings:
    """In demo mode with no secret, generate one and keep it in the data directory."""
    if settings.secret or settings.jwt_public_key_file:
        return settings
    if not settings.demo:
        raise SystemExit(
            "parley: no secret configured: set --secret or PARLEY_SECRET "
            "(or use --demo to generate one)"
        )
    import secrets

    path = Path(settings.data_dir) / "secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        secret = path.read_text().strip()
    else:
        secret = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret)
    return replace(settings, secret=secret)


def webhook_problem(settings: Settings) -> str | None:
    """Why the webhook settings cannot work, or None (both unset is fine)."""
    url, secret = settings.webhook_url, settings.webhook_secret
    if not url and not secret:
        return None
    if not url or not secret:
        return "--webhook-url and --webhook-secret go together: set both, or neither"
    if not url.startswith(("http://", "https://")):
        return f"--webhook-url must be an http:// or https:// URL, not {url!r}"
    if settings.webhook_retry_base <= 0:
        return "--webhook-retry-base must be more than 0 seconds"
    return None


def parse_list(value: str | None) -> Sequence[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]
