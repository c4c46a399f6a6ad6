"""``/readyz`` tells the truth (docs/deployment.md, Readiness): 503 with the reason while
the store fails writes or while ``--redis`` is set and Redis is unreachable, 200 again
once healthy; nothing acked is lost to a full disk."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from tests.server.test_pacing import history, is_ack, send
from tests.server.test_ws import connect, conversation
from tests.support.server import ParleyServer, free_port
from tests.support.wsclient import api


async def wait_ready_status(srv: ParleyServer, status: int, timeout: float = 20) -> Any:
    """Poll ``/readyz`` (a process we do not control) until it answers ``status``."""
    async with asyncio.timeout(timeout):
        while True:
            got, body = await api("GET", f"{srv.http_url}/readyz")
            if got == status:
                return body
            await asyncio.sleep(0.1)


def set_file_size_limit(pid: int, limit: str) -> None:
    """``prlimit --fsize`` on the running server: writes past ``limit`` bytes fail (EFBIG)."""
    subprocess.run(["prlimit", "--pid", str(pid), f"--fsize={limit}:unlimited"], check=True)


async def test_disk_full_readyz_503_then_200_and_nothing_acked_lost(tmp_path: Path) -> None:
    with ParleyServer(tmp_path, extra_args=["--rate-limit", "0"]) as srv:
        assert srv.proc is not None
        conv = await conversation(srv, "alice", "bob")
        alice = await connect(srv, "alice")
        acked: list[str] = []
        try:
            for i in range(20):
                await alice.send(send(conv["id"], f"a{i}", f"{i}:" + "x" * 4000))
            for i in range(20):
                await alice.expect("chat_message", is_ack(f"a{i}"))
                acked.append(f"a{i}")
            # The disk is full: from now on no file of the server can grow by a byte.
            set_file_size_limit(srv.proc.pid, "1")
            failed = None
            for i in range(20):
                local_id = f"d{i}"
                await alice.send(send(conv["id"], local_id, f"{i}:" + "x" * 4000))
                reply = await alice.expect(
                    pred=lambda e, lid=local_id: (
                        e.get("type") in ("chat_message", "error")
                        and (e.get("message") or e.get("error") or {}).get("local_id") == lid
                    )
                )
                if reply["type"] == "error":
                    failed = reply["error"]
                    break
                acked.append(local_id)
            assert failed is not None, "the disk never filled up"
            assert failed["code"] == "MESSAGE_FAILED"
            body = await wait_ready_status(srv, 503)
            assert body["status"] == "unavailable"
            assert "store" in body["reason"], body
            assert body["checks"]["store"].startswith("error"), body

            set_file_size_limit(srv.proc.pid, "unlimited")  # space again
            body = await wait_ready_status(srv, 200)
            assert body["checks"]["store"] == "ok"
            await alice.send(send(conv["id"], "after"))
            await alice.expect("chat_message", is_ack("after"), timeout=20)
            acked.append("after")
        finally:
            await alice.close()

        srv.restart()  # SIGKILL, then start again on the same database
        stored = await history(srv, "alice", conv["id"])
        ids = [m["local_id"] for m in stored]
        assert len(ids) == len(set(ids))  # each once
        assert [lid for lid in ids if lid in set(acked)] == acked  # every ack, in order
        assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))


def start_redis(port: int, tmp: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc


async def wait_redis(port: int, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)  # redis-server starting up
                continue
            writer.write(b"PING\r\n")
            line = await reader.readline()
            writer.close()
            if line.startswith(b"+PONG"):
                return


async def test_redis_down_readyz_503_then_200(tmp_path: Path) -> None:
    port = free_port()
    redis = start_redis(port, tmp_path)
    try:
        await wait_redis(port)
        url = f"redis://:s3cret@127.0.0.1:{port}/0"
        with ParleyServer(tmp_path, extra_args=["--redis", f"redis://127.0.0.1:{port}/0"]) as srv:
            body = await wait_ready_status(srv, 200)
            assert body["checks"]["broker"] == "ok"

            redis.terminate()
            redis.wait(timeout=10)
            body = await wait_ready_status(srv, 503)
            assert f"127.0.0.1:{port}" in body["reason"] and "Redis" in body["reason"], body
            assert "s3cret" not in str(body) and url not in str(body)

            redis = start_redis(port, tmp_path)
            await wait_redis(port)
            body = await wait_ready_status(srv, 200)
            assert body["checks"] == {"store": "ok", "broker": "ok"}
    finally:
        if redis.poll() is None:
            redis.terminate()
            redis.wait(timeout=10)
