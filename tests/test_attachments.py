"""Attachment rules: pure functions."""

from __future__ import annotations

import base64

import pytest

from parley import attachments as att

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("photo.jpg", "photo.jpg"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\x.dll", "x.dll"),
        ("C:\\Users\\me\\pic.png", "pic.png"),
        ("/abs/path/file.txt", "file.txt"),
        ("..", "file"),
        ("", "file"),
        (None, "file"),
        (".hidden", "hidden"),
        ("a\x00b\x1fc.txt", "abc.txt"),
        ('quote".png', "quote_.png"),
        ("<script>.html", "_script_.html"),
        ("x" * 300 + ".png", "x" * 124 + ".png"),
    ],
)
def test_sanitize_filename(name: str | None, expected: str) -> None:
    assert att.sanitize_filename(name) == expected


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (PNG, "image/png"),
        (b"\xff\xd8\xff\xe0rest", "image/jpeg"),
        (b"GIF89a...", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"\x00\x00\x00\x18ftypmp42", "video/mp4"),
        (b"OggS\x00", "audio/ogg"),
        (b"ID3\x03", "audio/mpeg"),
        (b"%PDF-1.7", "application/pdf"),
        (b"<html><script>", "application/octet-stream"),
    ],
)
def test_sniff(data: bytes, content_type: str) -> None:
    assert att.sniff(data) == content_type


def test_check_type() -> None:
    assert att.check_type("image", PNG) == "image/png"
    assert att.check_type("file", b"anything") == "application/octet-stream"
    with pytest.raises(att.AttachmentError):
        att.check_type("image", b"<svg onload=alert(1)>")
    with pytest.raises(att.AttachmentError):
        att.check_type("executable", PNG)


def test_decode_base64() -> None:
    assert att.decode_base64(base64.b64encode(PNG).decode(), 1000) == PNG
    assert (
        att.decode_base64(base64.urlsafe_b64encode(b"\xfb\xff" * 10).decode(), 1000)
        == b"\xfb\xff" * 10
    )
    assert att.decode_base64("data:image/png;base64," + base64.b64encode(PNG).decode(), 1000) == PNG
    with pytest.raises(att.AttachmentError) as info:
        att.decode_base64(base64.b64encode(b"x" * 2000).decode(), 1000)
    assert info.value.too_large
    with pytest.raises(att.AttachmentError) as info:
        att.decode_base64("!!!!", 1000)
    assert not info.value.too_large
    with pytest.raises(att.AttachmentError):
        att.decode_base64("", 1000)


def test_signatures() -> None:
    secret = b"k" * 32
    path = att.signed_path(secret, "att_1", "a b.png", 2000)
    assert path.startswith("/attachments/att_1/a%20b.png?exp=2000&sig=")
    sig = path.rsplit("sig=", 1)[1]
    assert att.verify_signature(secret, "att_1", 2000, sig, now=1000)
    assert not att.verify_signature(secret, "att_1", 2000, sig, now=3000)  # expired
    assert not att.verify_signature(secret, "att_2", 2000, sig, now=1000)  # other id
    assert not att.verify_signature(secret, "att_1", 2001, sig, now=1000)  # other expiry
    assert not att.verify_signature(b"other" * 8, "att_1", 2000, sig, now=1000)
