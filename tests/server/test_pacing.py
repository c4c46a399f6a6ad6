"""Rate limits pace before they refuse (docs/security.md, Limits): a pipelined burst is
slowed down and every action in it is still processed, in order; heartbeats never wait
behind paced actions; replies already owed go out before a close; a bystander's acks
keep flowing while a flooder is paced and refused."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.server.test_ws import connect, conversation
from tests.support.server import ParleyServer
from tests.support.wsclient import WsClient, api

FIGURES = Path(tempfile.gettempdir()) / "parley-figures"


def record_figure(name: str, value: object) -> None:
    """Keep a measured figure (for the notes), never asserted on."""
    FIGURES.mkdir(exist_ok=True)
    (FIGURES / f"{name}.json").write_text(json.dumps(value))
    print(f"{name}: {value}")


def send(conv_id: str, local_id: str, content: str = "hello") -> dict[str, Any]:
    return {
        "action": "send_message",
        "conversation_id": conv_id,
        "content": content,
        "local_id": local_id,
    }


def is_ack(local_id: str) -> Any:
    def match(e: dict[str, Any]) -> bool:
        return bool(e.get("type") == "chat_message" and e["message"].get("local_id") == local_id)

    return match


async def history(srv: ParleyServer, user: str, conv_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        status, page = await api(
            "GET",
            f"{srv.http_url}/api/conversations/{conv_id}/messages?after_seq={after}&limit=200",
            srv.token(user),
        )
        assert status == 200, page
        out += page["messages"]
        if not page["has_more"] or not page["messages"]:
            return out
        after = page["messages"][-1]["seq"]


async def pipeline(ws: WsClient, frames: list[dict[str, Any]]) -> None:
    """Send every frame without waiting for any answer (one write per frame)."""
    for frame in frames:
        await ws.send(frame)


async def test_pipelined_burst_of_200_gets_200_acks_in_order(tmp_path: Path) -> None:
    with ParleyServer(tmp_path) as srv:  # default limits: 50/s, burst 100
        conv = await conversation(srv, "alice", "bob")
        ws = await connect(srv, "alice")
        try:
            await pipeline(ws, [send(conv["id"], f"b{i}") for i in range(200)])
            seqs = []
            for i in range(200):
                ack = await ws.expect("chat_message", is_ack(f"b{i}"), timeout=30)
                seqs.append(ack["message"]["seq"])
            assert seqs == list(range(1, 201))
            assert not ws.seen("error")
        finally:
            await ws.close()
        stored = await history(srv, "bob", conv["id"])
        assert [m["content"] for m in stored] == ["hello"] * 200
        assert [m["seq"] for m in stored] == list(range(1, 201))


async def test_heartbeat_answered_before_paced_actions(tmp_path: Path) -> None:
    args = ["--rate-limit", "50", "--rate-burst", "10"]
    with ParleyServer(tmp_path, extra_args=args) as srv:
        conv = await conversation(srv, "alice", "bob")
        ws = await connect(srv, "alice")
        try:
            await pipeline(ws, [send(conv["id"], f"h{i}") for i in range(100)])
            await ws.send({"action": "heartbeat"})
            await ws.expect("heartbeat_ack", timeout=30)
            await ws.expect("chat_message", is_ack("h99"), timeout=30)
            kinds = [
                "hb" if e["type"] == "heartbeat_ack" else e["message"]["local_id"]
                for e in ws.events
                if e["type"] in ("heartbeat_ack", "chat_message")
            ]
            # The heartbeat went after 100 paced sends, and is answered before most of them.
            assert kinds.index("hb") < kinds.index("h50"), kinds
            assert len([k for k in kinds if k != "hb"]) == 100
        finally:
            await ws.close()


async def test_a_connection_held_back_by_pacing_is_not_taken_for_silent(tmp_path: Path) -> None:
    """While the server holds back reading a connection (its paced actions fill their
    queue), the client's pongs wait unread in the socket: the heartbeat sweep must not
    drop it as silent. Each hold here lasts about a second, several ping intervals."""
    args = [
        *("--rate-limit", "10", "--rate-burst", "1", "--rate-max-delay", "30"),
        *("--rate-queue-bytes", "3000", "--ping-interval", "0.25"),
    ]
    with ParleyServer(tmp_path, extra_args=args) as srv:
        conv = await conversation(srv, "alice", "bob")
        ws = await connect(srv, "alice")
        try:
            await pipeline(ws, [send(conv["id"], f"p{i}", "x" * 200) for i in range(40)])
            for i in range(40):
                await ws.expect("chat_message", is_ack(f"p{i}"), timeout=30)
            assert not ws.seen("error")
            await ws.send({"action": "heartbeat"})
            await ws.expect("heartbeat_ack", timeout=10)
        finally:
            await ws.close()


async def test_refused_past_max_delay_then_1008_after_owed_acks(tmp_path: Path) -> None:
    args = [
        "--rate-limit",
        "5",
        "--rate-burst",
        "5",
        "--rate-max-delay",
        "1",
        "--rate-abuse-strikes",
        "20",
    ]
    with ParleyServer(tmp_path, extra_args=args) as srv:
        conv = await conversation(srv, "alice", "bob")
        ws = await connect(srv, "alice")
        try:
            # 5 run at once, 5 wait 0.2 … 1.0 s, the 11th would wait 1.2 s: refused.
            await pipeline(ws, [send(conv["id"], f"r{i}") for i in range(11)])
            err = (await ws.expect("error"))["error"]
            assert err["code"] == "RATE_LIMITED"
            assert err["local_id"] == "r10"
            assert err["retry_after_ms"] > 1000
            for i in range(10):  # the paced ones are processed, in order
                ack = await ws.expect("chat_message", is_ack(f"r{i}"))
                assert ack["message"]["seq"] == i + 1
            await ws.send({"action": "heartbeat"})
            await ws.expect("heartbeat_ack")
        finally:
            await ws.close()

        # A flooder past the limit is closed with 1008, after the acks it is owed.
        ws = await connect(srv, "alice")
        try:
            burst = [send(conv["id"], f"f{i}") for i in range(5)]
            typing = {"action": "typing", "conversation_id": conv["id"], "is_typing": True}
            await pipeline(ws, [*burst, *([typing] * 60)])
            assert await ws.wait_closed() == 1008
            acked = [e["message"]["local_id"] for e in ws.seen("chat_message")]
            assert acked == [f"f{i}" for i in range(5)]
        finally:
            await ws.close()
        stored = await history(srv, "bob", conv["id"])
        assert len(stored) == 15
        async with await connect(srv, "bob") as bob:  # the server is fine
            await bob.send({"action": "heartbeat"})
            await bob.expect("heartbeat_ack")


async def test_bystander_acks_flow_while_a_flooder_is_paced(tmp_path: Path) -> None:
    args = [
        "--rate-limit",
        "50",
        "--rate-burst",
        "100",
        "--rate-max-delay",
        "2",
        "--rate-abuse-strikes",
        "1000000000",  # refused, not closed: the flood goes on for the whole measurement
    ]
    with ParleyServer(tmp_path, extra_args=args) as srv:
        flood_conv = await conversation(srv, "mallory", "eve")
        conv = await conversation(srv, "alice", "bob")
        alice = await connect(srv, "alice")
        # The flooder is a process of its own, so its sending does not slow the
        # bystander's client down: what is measured is the server.
        flooder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            FLOODER,
            srv.ws_url(srv.token("mallory")),
            flood_conv["id"],
            stdout=asyncio.subprocess.PIPE,
        )
        assert flooder.stdout is not None
        try:
            async with asyncio.timeout(30):
                assert (await flooder.stdout.readline()).strip() == b"refused"
            latencies = []
            for i in range(200):
                started = time.perf_counter()
                await alice.send(send(conv["id"], f"a{i}"))
                await alice.expect("chat_message", is_ack(f"a{i}"), timeout=30)
                latencies.append(time.perf_counter() - started)
            if flooder.returncode is not None:
                stopped = (await flooder.stdout.read()).decode()
                raise AssertionError(f"the flooder stopped early: {stopped}")
            flooder.terminate()
            out = json.loads(await flooder.stdout.read())
            assert not alice.seen("error")
            assert out["refused"] > 0 and out["acked"] > 0 and out["close"] is None
            latencies.sort()
            record_figure(
                "bystander_ack_while_flooded",
                {
                    "acks": len(latencies),
                    "p50_ms": round(latencies[99] * 1000, 2),
                    "p99_ms": round(latencies[197] * 1000, 2),
                    "max_ms": round(latencies[-1] * 1000, 2),
                    "flooder": out,
                },
            )
        finally:
            if flooder.returncode is None:
                flooder.kill()
            await flooder.wait()
            await alice.close()


FLOODER = """
import asyncio, json, signal, sys
import aiohttp

async def main(url, conv):
    # As fast as the server answers, far past the limit, with at most 500 actions
    # unanswered: a flooder that reads its answers (one that does not is evicted as a
    # slow consumer, 1013, once they fill its outbound buffer).
    stats = {"sent": 0, "acked": 0, "refused": 0, "answered": 0, "close": None}
    stop = asyncio.Event()
    answered = asyncio.Event()
    def end():
        stop.set()
        answered.set()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, end)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, max_msg_size=0) as ws:
            async def read():
                told = False
                async for msg in ws:
                    event = json.loads(msg.data)
                    if event.get("type") == "chat_message":
                        stats["acked"] += 1
                    elif event.get("type") == "error":
                        stats["refused"] += event["error"]["code"] == "RATE_LIMITED"
                        if not told:
                            told = True
                            print("refused", flush=True)
                    else:
                        continue
                    stats["answered"] += 1
                    answered.set()
                stats["close"] = ws.close_code
                end()
            reader = asyncio.ensure_future(read())
            while not stop.is_set():
                if stats["sent"] - stats["answered"] >= 500:
                    answered.clear()
                    await answered.wait()
                    continue
                frame = {"action": "send_message", "conversation_id": conv,
                         "content": "flood", "local_id": "m%d" % stats["sent"]}
                await ws.send_str(json.dumps(frame))
                stats["sent"] += 1
                if stats["sent"] % 20 == 0:
                    await asyncio.sleep(0)
            reader.cancel()
    print(json.dumps(stats), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""
