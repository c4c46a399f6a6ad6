"""Log set-up for ``parley serve``: plain text, or one JSON object per line.

``--log-format json`` writes each record as one line::

    {"ts": "2026-12-01T10:00:00.123Z", "level": "INFO", "logger": "parley",
     "message": "…", "request_id": "9f2c…"}

``request_id`` is present on every line written while an HTTP request is handled (the
access-log line included); the same id is sent back in the ``X-Request-Id`` header.
Tokens never reach a log line: the access log drops query strings (where WebSocket
tokens travel), and every message is scrubbed of anything shaped like a JWT or a
``token=`` parameter before it is written, in both formats.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any, TextIO

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "parley_request_id", default=None
)

# A JWT: three base64url segments, the first starting with '{"' encoded ("eyJ").
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_TOKEN_PARAM = re.compile(r"(?i)((?:access_)?token=)[^&\s\"']+")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"']+")


def scrub(text: str) -> str:
    """``text`` with tokens replaced by ``[redacted]``."""
    text = _JWT.sub("[redacted]", text)
    text = _TOKEN_PARAM.sub(r"\1[redacted]", text)
    return _BEARER.sub(r"\1[redacted]", text)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = scrub(super().format(record))
        rid = getattr(record, "request_id", None)
        return f"{line} [request {scrub(str(rid))}]" if rid else line


_EXTRA_KEYS = (
    "method",
    "path",
    "status",
    "duration_ms",
    "remote",
    "database",
    "broker",
    "public_url",
    "demo",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "ts": f"{created}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            out["request_id"] = scrub(str(rid))
        for key in _EXTRA_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def setup(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger once for the process (replacing earlier handlers)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # The access log (no query strings) is on at DEBUG only.
    if level.upper() != "DEBUG":
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
