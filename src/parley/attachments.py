"""Attachment rules: base64 decoding, filename sanitising, content sniffing, signed URLs.

Pure functions. The content type is never taken from the client: it is sniffed from the
bytes and must agree with the declared ``type`` (image | video | audio | file).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import unicodedata
from urllib.parse import quote

ATTACHMENT_TYPES = frozenset({"image", "video", "audio", "file"})
MAX_FILENAME = 128
# Types a browser may render inline from our origin; everything else is served as a
# download (``Content-Disposition: attachment``) so it cannot run script on our origin.
INLINE_SAFE = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "video/mp4",
        "video/webm",
        "audio/mpeg",
        "audio/ogg",
        "audio/wav",
        "audio/mp4",
        "application/pdf",
    }
)


class AttachmentError(Exception):
    """Bad attachment: ``too_large`` distinguishes PAYLOAD_TOO_LARGE from INVALID_MESSAGE."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def new_attachment_id() -> str:
    return "att_" + secrets.token_hex(12)


def decode_base64(data: str, max_bytes: int) -> bytes:
    """Decode standard or URL-safe base64 (a ``data:`` URL prefix is allowed)."""
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    # 4 base64 chars carry 3 bytes: refuse before decoding anything huge.
    if (len(data) * 3) // 4 > max_bytes + 3:
        raise AttachmentError(f"attachment larger than {max_bytes} bytes", too_large=True)
    compact = "".join(data.split())
    try:
        if "-" in compact or "_" in compact:
            raw = base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        else:
            raw = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise AttachmentError("attachment `file` is not valid base64") from None
    if len(raw) > max_bytes:
        raise AttachmentError(f"attachment larger than {max_bytes} bytes", too_large=True)
    if not raw:
        raise AttachmentError("attachment is empty")
    return raw


_UNSAFE = re.compile(r"[^\w.\- ()+,@&=]+", re.UNICODE)


def sanitize_filename(name: str | None, default: str = "file") -> str:
    """A filename safe to show and to put in a URL path and a header.

    Keeps the last path component only (no ``../``, no drive letters, no NULs), drops
    control characters and leading dots, and caps the length (keeping the extension).
    """
    if not name:
        return default
    name = unicodedata.normalize("NFC", name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = _UNSAFE.sub("_", name).strip(" .")
    if not name:
        return default
    if len(name) > MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: MAX_FILENAME - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_FILENAME]
    return name


def sniff(data: bytes) -> str:
    """The content type the bytes really are (``application/octet-stream`` if unknown)."""
    head = data[:64]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"M4A ", b"M4B "):
            return "audio/mp4"
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    return "application/octet-stream"


def check_type(declared: str, data: bytes) -> str:
    """Sniff ``data`` and check it against the declared type; returns the content type."""
    if declared not in ATTACHMENT_TYPES:
        raise AttachmentError(f"attachment type must be one of {sorted(ATTACHMENT_TYPES)}")
    content_type = sniff(data)
    if declared != "file" and not content_type.startswith(declared + "/"):
        raise AttachmentError(
            f"attachment bytes are {content_type}, not a supported {declared} format"
        )
    return content_type


def _signature(secret: bytes, attachment_id: str, expires: int) -> str:
    mac = hmac.new(secret, f"{attachment_id}:{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:18]).decode()


def signed_path(secret: bytes, attachment_id: str, filename: str, expires: int) -> str:
    """``/attachments/{id}/{filename}?exp=…&sig=…``, valid until ``expires`` (unix s)."""
    sig = _signature(secret, attachment_id, expires)
    return f"/attachments/{attachment_id}/{quote(filename)}?exp={expires}&sig={sig}"


def verify_signature(secret: bytes, attachment_id: str, expires: int, sig: str, now: float) -> bool:
    if expires < now:
        return False
    return hmac.compare_digest(_signature(secret, attachment_id, expires), sig)


_LINK_INFO = b"parley attachment links v1"


def link_key(secret: str | None) -> bytes:
    """The key attachment links are signed with: HKDF-SHA256 (RFC 5869) of the server
    secret, so a link never exposes anything usable to forge a token. With no secret (a
    public-key JWT setup), a random key of this process alone."""
    if secret is None:
        return secrets.token_bytes(32)
    prk = hmac.new(b"parley-hkdf-salt", secret.encode(), hashlib.sha256).digest()
    return hmac.new(prk, _LINK_INFO + b"\x01", hashlib.sha256).digest()


def content_disposition(disposition: str, filename: str) -> str:
    """``Content-Disposition`` with an ASCII ``filename`` and the exact UTF-8 name in
    ``filename*`` (RFC 6266, RFC 5987)."""
    fallback = (
        "".join(ch if " " <= ch < "\x7f" and ch not in '"\\%' else "_" for ch in filename) or "file"
    )
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
