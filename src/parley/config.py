"""Settings: every knob of ``parley serve``, from flags, ``PARLEY_*`` variables and a file.

One frozen dataclass, built once at start and passed down (never a module global).
Each field's metadata carries its flag help; README's settings table is made from the
same list (``parley serve --help``).

Precedence, highest first: a command-line flag, then the ``PARLEY_*`` environment
variable, then the TOML file named by ``--config`` (or ``PARLEY_CONFIG``), then the
default. The file's keys are the settings' names (``port = 8000``,
``allowed_origins = "https://chat.example.com"``); an unknown key is an error.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_DATA_DIR = "~/.local/share/parley"


class ConfigError(Exception):
    """A setting that cannot be used; the message is one line for the operator."""


class StartupError(ConfigError):
    """The server cannot start (port taken, database or Redis unreachable, …)."""


def _s(default: Any, help: str, *, env: bool = True) -> Any:
    return field(default=default, metadata={"help": help, "env": env})


@dataclass(frozen=True)
class Settings:
    host: str = _s("127.0.0.1", "interface to listen on")
    port: int = _s(8000, "TCP port (0 picks a free one)")
    database: str = _s(
        "sqlite:///parley.db",
        "sqlite:///PATH (a relative PATH is inside --data-dir; sqlite:////abs/path) or"
        " postgresql://…",
    )
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
    data_dir: str = _s(
        DEFAULT_DATA_DIR, "directory for the SQLite database, generated secrets and local data"
    )
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
    rate_max_delay: float = _s(
        10.0, "seconds an action may wait its turn; one that would wait longer is RATE_LIMITED"
    )
    rate_queue_bytes: int = _s(
        1024 * 1024, "bytes of actions waiting their turn per connection; past it, reading stops"
    )
    metrics_allow: str = _s(
        "127.0.0.0/8,::1", "comma-separated addresses/networks served /metrics (else admin token)"
    )
    handshake_timeout: float = _s(10.0, "seconds allowed for the HTTP upgrade")
    ping_interval: float = _s(
        30.0,
        "seconds between server pings; a connection silent for a whole interval after a"
        " ping is dropped (0: off)",
    )
    typing_timeout: float = _s(8.0, "seconds after which typing expires without refresh")
    sync_page: int = _s(100, "log entries (messages and changes) per conversation per sync reply")
    edit_window: float = _s(
        0.0, "seconds after sending during which a message may be edited (0: no limit)"
    )
    presence_grace: float = _s(
        10.0,
        "seconds a user stays online after its last connection closes; its presence"
        " changes at most once per this period",
    )
    max_members: int = _s(10_000, "members per conversation (413 above)")
    max_members_per_request: int = _s(
        1_000, "user ids per create-conversation or add-members request (413 above)"
    )
    max_conversations_per_hour: int = _s(
        100, "conversations one user may create per hour (429 above)"
    )
    rest_rate_limit: float = _s(
        20.0, "REST requests per second per user, all nodes together (429 above; 0: off)"
    )
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
    log_format: str = _s("text", "text, or json: one JSON object per line (never a token)")

    @property
    def origins(self) -> frozenset[str] | None:
        """None: same-origin only; ``{"*"}``: any; else the exact allowed Origins."""
        if not self.allowed_origins:
            return None
        return frozenset(o.strip() for o in self.allowed_origins.split(",") if o.strip())

    @property
    def data_path(self) -> Path:
        """The data directory, ``~`` expanded, absolute."""
        return Path(self.data_dir).expanduser().absolute()

    @property
    def database_url(self) -> str:
        """``database`` with a relative SQLite path placed inside the data directory, so
        the database never lands in whatever directory the server was started from."""
        path = sqlite_path(self.database)
        if path is None or path == ":memory:" or path.startswith("file:"):
            return self.database
        if Path(path).expanduser().is_absolute():
            return "sqlite:///" + str(Path(path).expanduser())
        return "sqlite:///" + str(self.data_path / path)


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:`` URL as ``open_store`` reads it (None: not SQLite).

    ``sqlite:///parley.db`` → ``parley.db`` (relative); ``sqlite:////srv/p.db`` →
    ``/srv/p.db``; ``sqlite://:memory:`` → ``:memory:``.
    """
    if not url.startswith("sqlite:"):
        return None
    path = url.removeprefix("sqlite:").removeprefix("//")
    if path.startswith("/") and not url.startswith("sqlite:////"):
        path = path[1:]
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return path or ":memory:"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def _type_of(f: Any) -> type:
    t = f.type if isinstance(f.type, str) else f.type.__name__
    if t.startswith("bool"):
        return bool
    if t.startswith("int"):
        return int
    if t.startswith("float"):
        return float
    return str


def _is_optional(f: Field[Any]) -> bool:
    t = f.type if isinstance(f.type, str) else str(f.type)
    return "None" in t


def add_arguments(parser: argparse.ArgumentParser, only: Iterable[str] | None = None) -> None:
    """A flag per setting (or per setting named in ``only``), plus ``--config``."""
    wanted = None if only is None else set(only)
    parser.add_argument(
        "--config",
        dest="config",
        default=None,
        metavar="PATH",
        help="TOML file of settings (their names as keys) [PARLEY_CONFIG]",
    )
    for f in fields(Settings):
        if wanted is not None and f.name not in wanted:
            continue
        flag = "--" + f.name.replace("_", "-")
        env = "PARLEY_" + f.name.upper()
        help_ = f"{f.metadata['help']} [{env}; default: {f.default!r}]"
        if _type_of(f) is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_
            )
        else:
            parser.add_argument(flag, dest=f.name, type=_type_of(f), default=None, help=help_)


def _coerce(f: Field[Any], value: Any, where: str) -> Any:
    kind = _type_of(f)
    if isinstance(value, str) and kind is not str:
        raw = value.strip()
        try:
            if kind is bool:
                lowered = raw.lower()
                if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                    raise ValueError(raw)
                return lowered in ("1", "true", "yes", "on")
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{where}: {raw!r} is not a valid {kind.__name__}") from None
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected a {kind.__name__}, got {value!r}")


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings of a TOML file, type-checked; unknown keys are an error."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {os.fspath(path)} not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {os.fspath(path)}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {os.fspath(path)}: {exc}") from None
    by_name = {f.name: f for f in fields(Settings)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        f = by_name.get(name)
        if f is None:
            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"config file {os.fspath(path)}: unknown setting {key!r}{hint}")
        values[name] = _coerce(f, value, f"config file {os.fspath(path)}: {key}")
    return values


def resolve(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Settings, dict[str, str]]:
    """The effective settings and, per setting, where its value came from
    (``flag``, ``env PARLEY_…``, ``file PATH`` or ``default``)."""
    environ = os.environ if environ is None else environ
    config_path = getattr(args, "config", None) or environ.get("PARLEY_CONFIG") or None
    from_file = load_file(config_path) if config_path else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in fields(Settings):
        env = "PARLEY_" + f.name.upper()
        flag_value = getattr(args, f.name, None) if args is not None else None
        if flag_value is not None:
            values[f.name], sources[f.name] = flag_value, "flag"
        elif env in environ and (environ[env] != "" or _type_of(f) is str):
            # an empty variable counts as unset, except for text settings
            values[f.name] = _coerce(f, environ[env], env)
            sources[f.name] = f"env {env}"
        elif f.name in from_file:
            values[f.name], sources[f.name] = from_file[f.name], f"file {config_path}"
        else:
            sources[f.name] = "default"
    return Settings(**values), sources


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Flags win over ``PARLEY_*`` variables, which win over the file, then defaults."""
    return resolve(args, environ)[0]


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


def problems(settings: Settings) -> list[str]:
    """What is wrong with ``settings``, one line each (empty: usable)."""
    out: list[str] = []
    if not 0 <= settings.port <= 65535:
        out.append(f"port {settings.port} is not a TCP port (0-65535)")
    url = settings.database
    if not url.startswith(("sqlite:", "postgresql:", "postgres:")):
        scheme = url.split(":", 1)[0] if ":" in url else url
        out.append(
            f"database URL scheme {scheme!r} is not supported: use sqlite:///PATH or"
            " postgresql://USER@HOST/DB"
        )
    if settings.redis and not settings.redis.startswith(("redis://", "rediss://", "unix://")):
        out.append(f"redis URL {mask_url(settings.redis)!r} must start with redis:// or rediss://")
    if settings.public_url and not settings.public_url.startswith(("http://", "https://")):
        out.append(f"public_url {settings.public_url!r} must start with http:// or https://")
    if settings.log_level.upper() not in _LOG_LEVELS:
        out.append(f"log_level {settings.log_level!r} is not one of {', '.join(_LOG_LEVELS)}")
    if settings.log_format not in ("text", "json"):
        out.append(f"log_format {settings.log_format!r} is not text or json")
    if settings.sqlite_synchronous.upper() not in _SYNCHRONOUS:
        out.append(
            f"sqlite_synchronous {settings.sqlite_synchronous!r} is not one of"
            f" {', '.join(_SYNCHRONOUS)}"
        )
    algorithms = [a.lower() for a in parse_list(settings.jwt_algorithms)]
    if "none" in algorithms:
        out.append("the 'none' JWT algorithm is never accepted")
    if settings.jwt_public_key_file and not Path(settings.jwt_public_key_file).is_file():
        out.append(f"jwt_public_key_file {settings.jwt_public_key_file} does not exist")
    webhooks = webhook_problem(settings)
    if webhooks is not None:
        out.append(webhooks)
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if _type_of(f) in (int, float) and isinstance(value, int | float) and value < 0:
            out.append(f"{f.name} must not be negative (got {value})")
    return out


def masked(settings: Settings) -> dict[str, Any]:
    """Every setting, with secrets replaced by ``***`` and passwords cut out of URLs
    (and the database as it is opened: a relative SQLite path inside the data directory)."""
    out: dict[str, Any] = {}
    for f in fields(Settings):
        value = settings.database_url if f.name == "database" else getattr(settings, f.name)
        if value and "secret" in f.name:
            value = "***"
        elif isinstance(value, str) and "://" in value:
            value = mask_url(value)
        out[f.name] = value
    return out


def to_toml(settings: Settings, sources: Mapping[str, str] | None = None) -> str:
    """The effective settings as a TOML file (secrets masked), each with its source."""
    lines = []
    for name, value in masked(settings).items():
        note = f"  # {sources[name]}" if sources and name in sources else ""
        if value is None:
            lines.append(f"# {name} = (unset){note}")
        elif isinstance(value, bool):
            lines.append(f"{name} = {'true' if value else 'false'}{note}")
        elif isinstance(value, int | float):
            lines.append(f"{name} = {value!r}{note}")
        else:
            escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{name} = "{escaped}"{note}')
    return "\n".join(lines) + "\n"


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
        raise ConfigError(
            "no secret configured: set --secret, PARLEY_SECRET or `secret` in the config file"
            " (or use --demo to generate one)"
        )
    import secrets

    path = settings.data_path / "secret"
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
