"""``parley bench`` end to end: short runs against a real server, asserting on the JSON.

No timing assertions: only that messages flowed, nothing was lost and nothing failed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from parley.bench import main
from parley.bench.cli import format_table
from parley.bench.histogram import Histogram
from parley.bench.wsclient import SetupError, WsClient
from tests.support.server import ParleyServer, free_port

ROOT = Path(__file__).resolve().parents[2]


def run_bench(tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "result.json"
    code = main([*args, "--duration", "1", "--warmup", "0.3", "--quiet", "--json", str(out)])
    assert code == 0
    result: dict[str, object] = json.loads(out.read_text())
    return result


def test_parley_fan_out(server: ParleyServer, tmp_path: Path) -> None:
    result = run_bench(
        tmp_path,
        *("--url", server.ws_url(), "--secret", server.secret),
        *("--connections", "12", "--room-size", "4", "--rate", "60"),
    )
    assert result["protocol"] == "parley"
    assert result["connections"]["established"] == 12  # type: ignore[index]
    assert result["sent"] > 0  # type: ignore[operator]
    assert result["delivered"] > 0  # type: ignore[operator]
    assert result["acked"] > 0  # type: ignore[operator]
    assert result["delivery_latency_ms"]["count"] > 0  # type: ignore[index]
    assert result["ack_latency_ms"]["count"] > 0  # type: ignore[index]
    assert result["errors"] == 0, result["error_kinds"]
    assert result["lost"] == 0
    assert result["reconnects"] == 0
    assert 0 < result["generator_cpu"] <= 1.5  # type: ignore[operator]
    assert "delivery" in format_table(result)


def test_parley_token_command(server: ParleyServer, tmp_path: Path) -> None:
    command = f"{sys.executable} -m parley token --secret {server.secret} --data-dir {tmp_path}"
    result = run_bench(
        tmp_path,
        *("--url", server.ws_url(), "--token-command", command),
        *("--connections", "2", "--room-size", "2", "--rate", "20"),
    )
    assert result["delivered"] > 0  # type: ignore[operator]
    assert result["errors"] == 0, result["error_kinds"]


def test_connect_mode(server: ParleyServer, tmp_path: Path) -> None:
    out = tmp_path / "connect.json"
    args = ["--url", server.ws_url(), "--secret", server.secret, "--mode", "connect"]
    assert main([*args, "--connections", "20", "--quiet", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["connections"]["established"] == 20
    assert result["connections"]["per_second"] > 0


def test_bad_secret_fails_setup(server: ParleyServer) -> None:
    args = ["--url", server.ws_url(), "--secret", "wrong-secret-" + "x" * 32, "--connections", "2"]
    assert main([*args, "--duration", "1", "--quiet"]) == 1


@pytest.fixture(scope="module")
def raw_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The no-persistence aiohttp peer of ``bench/peers``, as a real process."""
    port = free_port()
    log = tmp_path_factory.mktemp("raw") / "raw.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench/peers/raw_aiohttp.py"), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"raw peer not ready:\n{log.read_text()}")
                time.sleep(0.05)  # polling a process we do not control
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_raw_peer(raw_peer: str, tmp_path: Path) -> None:
    result = run_bench(
        tmp_path,
        *("--protocol", "raw", "--url", raw_peer),
        *("--connections", "10", "--room-size", "5", "--rate", "50"),
    )
    assert result["delivered"] > 0  # type: ignore[operator]
    assert result["errors"] == 0, result["error_kinds"]
    assert result["lost"] == 0


def test_histogram_percentiles_within_one_percent() -> None:
    rng = random.Random(6)
    values = sorted(int(rng.lognormvariate(8, 1.5)) for _ in range(20_000))
    hist = Histogram()
    for v in values:
        hist.record(v)
    assert hist.count == len(values)
    assert hist.max == values[-1]
    for q in (0.5, 0.95, 0.99):
        exact = values[max(0, int(q * len(values)) - 1)]
        assert abs(hist.percentile(q) - exact) <= max(1, 0.01 * exact)
    assert Histogram().percentile(0.99) == 0.0


def test_histogram_since_and_merge() -> None:
    a = Histogram()
    for v in (10, 200, 5000):
        a.record(v)
    snap = a.copy()
    a.record(70_000)
    delta = a.since(snap)
    assert delta.count == 1
    assert 69_000 < delta.percentile(0.5) < 71_000
    snap.merge(delta)
    assert snap.count == a.count


class _Transport:
    """Records what the client writes; no socket."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_ws_client_frames_on_bytes() -> None:
    """Upgrade response and frames cut at every 7th byte still come out whole."""
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    client = WsClient(b"GET / HTTP/1.1\r\n\r\n", key)
    transport = _Transport()
    client.connection_made(transport)  # type: ignore[arg-type]
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    response = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    big = b"x" * 300
    stream = (
        response
        + b"\x81\x05hello"
        + b"\x81\x7e"
        + len(big).to_bytes(2)
        + big
        + b"\x01\x03abc\x80\x03def"  # a fragmented text message
        + b"\x89\x02hi"  # a ping
    )
    for i in range(0, len(stream), 7):
        client.data_received(stream[i : i + 7])
    received = []
    while not client.inbox.empty():
        received.append(client.inbox.get_nowait())
    assert client.upgraded.done() and client.upgraded.exception() is None
    assert received == [b"hello", big, b"abcdef"]
    pong = transport.written[-1]
    assert pong[0] == 0x8A and pong[1] == 0x80 | 2  # masked pong, same payload
    mask = pong[2:6]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(pong[6:])) == b"hi"

    assert client.send_text(b"payload")
    frame = transport.written[-1]
    assert frame[0] == 0x81 and frame[1] == 0x80 | 7
    mask = frame[2:6]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(frame[6:])) == b"payload"


async def test_ws_client_refused_upgrade() -> None:
    client = WsClient(b"GET / HTTP/1.1\r\n\r\n", b"k")
    client.connection_made(_Transport())  # type: ignore[arg-type]
    client.data_received(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(SetupError, match="403"):
        await client.upgraded
