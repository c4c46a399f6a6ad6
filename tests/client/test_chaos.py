"""Chaos: clients behind a proxy that cuts connections at random, a server SIGKILLed and
restarted mid-run, sends made while it is down, a client process killed with a full
queue and restarted, tokens expiring while connected.

The long-lived clients also change their own messages as they go — edits, reactions
added and taken back, deletions — queued like sends while the link is down.

Across all of it: every message sent by any client reaches every member exactly once,
in ``seq`` order; the server holds each send once and each change once (every change is
made to change something, so the conversations' last ``seq`` counts them exactly); no
change fails; every sender's records end as ``sent`` or better; and every client ends
with exactly the server's messages as they are now (content, edits, deletions,
reactions).

``PARLEY_CHAOS_SECONDS`` sets how long the chaos lasts (default 15); ``PARLEY_CHAOS_SEED``
fixes the randomness. The figures are printed at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from parley.client import ChatClient, ChatState, MessageRecord
from parley.codes import MessageStatus
from tests.client.conftest import create_conversation, history, last_seq
from tests.support.chaos_proxy import ChaosProxy
from tests.support.server import ParleyServer, free_port

ROOT = Path(__file__).resolve().parents[2]
CHAOS_SECONDS = float(os.environ.get("PARLEY_CHAOS_SECONDS", "15"))
SEED = int(os.environ.get("PARLEY_CHAOS_SEED", str(random.randrange(1 << 30))))
# When the server is SIGKILLed, as fractions of the run: twice, or every ~20 s if longer.
KILL_AT = (
    (0.3, 0.65)
    if CHAOS_SECONDS < 50
    else tuple((i + 0.5) / (CHAOS_SECONDS // 20) for i in range(int(CHAOS_SECONDS // 20)))
)
TOKEN_TTL = 4  # seconds: every client is closed with 4003 and refreshes during the run
SENT_OR_BETTER = {"sent", "delivered", "read"}

CLIENT_OPTIONS: dict[str, Any] = {
    "heartbeat_interval": 0.4,
    "max_missed_heartbeats": 3,
    "backoff_base": 0.05,
    "backoff_cap": 0.8,
    "retry_delay": 0.1,
    "ack_timeout": 3.0,
    "open_timeout": 3.0,
}


async def spawn_client(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.client.chaos_client",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
    )


async def read_json(proc: asyncio.subprocess.Process, within: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), within)
    assert line, f"client process exited with {proc.returncode}"
    result: dict[str, Any] = json.loads(line)
    return result


def reconnected(c: ChatClient, before: int) -> Callable[[ChatState], bool]:
    """Holds once ``c`` made a new connection after ``before`` and caught up on it."""
    return lambda _s: c.stats["connections"] > before and c.caught_up


@pytest.mark.slow
@pytest.mark.timeout(int(CHAOS_SECONDS) + 150)
async def test_chaos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(SEED)
    srv = ParleyServer(tmp_path / "server").start()  # default rate limits stay on
    proxy = await ChaosProxy("127.0.0.1", srv.port, seed=SEED).start()
    url = f"ws://127.0.0.1:{proxy.port}/ws"
    clients: dict[str, ChatClient] = {}
    procs: list[asyncio.subprocess.Process] = []
    try:
        await _run(tmp_path, srv, proxy, url, rng, clients, procs, capsys)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for client in clients.values():
            await client.close()
        await proxy.close()
        srv.kill()


async def _run(
    tmp_path: Path,
    srv: ParleyServer,
    proxy: ChaosProxy,
    url: str,
    rng: random.Random,
    clients: dict[str, ChatClient],
    procs: list[asyncio.subprocess.Process],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # alice, bob and carol live in this process; dave in processes of his own.
    everyone = await create_conversation(srv, "alice", ["bob", "carol", "dave"], title="all")
    ab = await create_conversation(srv, "alice", ["bob"])
    bcd = await create_conversation(srv, "bob", ["carol", "dave"], title="bcd")
    conversations = {c["id"]: set(c["member_ids"]) for c in (everyone, ab, bcd)}
    dave_convs = f"{everyone['id']},{bcd['id']}"
    dave_queue = str(tmp_path / "dave.db")

    # 1. dave queues messages with no server in reach, and is killed with them on disk.
    offline = await spawn_client(
        "offline",
        "--url",
        f"ws://127.0.0.1:{free_port()}/ws",
        "--secret",
        srv.secret,
        "--user",
        "dave",
        "--queue",
        dave_queue,
        "--conversations",
        dave_convs,
        "--count",
        "6",
    )
    procs.append(offline)
    dave_first = (await read_json(offline, 30))["queued"]
    offline.kill()
    await offline.wait()

    # 2. The long-lived clients, with tokens that expire every few seconds.
    received: dict[str, list[MessageRecord]] = {}
    sent: dict[str, list[str]] = {}  # user -> local ids
    changes: dict[str, int] = {}  # user -> changes made (each one changes something)
    change_failures: list[Any] = []
    for user in ("alice", "bob", "carol"):

        async def provider(user: str = user) -> str:
            return srv.token(user, ttl=TOKEN_TTL)

        client = ChatClient(
            url,
            token_provider=provider,
            queue_path=tmp_path / f"{user}.db",
            **CLIENT_OPTIONS,
        )
        received[user] = []
        sent[user] = []
        client.on("message", received[user].append)
        client.on("change_failed", change_failures.append)
        changes[user] = 0
        clients[user] = client
    await asyncio.gather(*(c.connect() for c in clients.values()))

    # 3. dave comes back on the same queue file, through the proxy, and sends more.
    live = await spawn_client(
        "live",
        "--url",
        url,
        "--secret",
        srv.secret,
        "--user",
        "dave",
        "--queue",
        dave_queue,
        "--conversations",
        dave_convs,
        "--count",
        "20",
        "--ttl",
        str(TOKEN_TTL),
    )
    procs.append(live)

    # 4. Chaos: senders, random cuts, server kills.
    stop = asyncio.Event()
    figures: dict[str, Any] = {
        "seed": SEED,
        "server_kills": 0,
        "caught_up_after_restart": [],
        "sends_queued_offline": 0,
        "changes_returned_disconnected": 0,
    }

    async def change(user: str, mine: list[tuple[str, str]], reacted: dict[str, list[str]]) -> None:
        """One change to one of the user's own messages, made so that it changes something:
        a new text, a reaction never used before, taking one back, a deletion."""
        client = clients[user]
        cid, lid = rng.choice(mine[-10:])
        roll = rng.random()
        codes = reacted.setdefault(lid, [])
        if roll < 0.35:
            rec = await client.edit_message(cid, lid, f"{user} edit {changes[user]}")
        elif roll < 0.7 or not codes:
            code = f":r{changes[user]}:"
            codes.append(code)
            rec = await client.react(cid, lid, code)
        elif roll < 0.93:
            rec = await client.unreact(cid, lid, codes.pop(rng.randrange(len(codes))))
        else:
            mine.remove((cid, lid))  # nothing changes it after its deletion
            rec = await client.delete_message(cid, lid)
        changes[user] += 1
        if not client.connected:
            figures["changes_returned_disconnected"] += 1
        del rec

    async def sender(user: str) -> None:
        client = clients[user]
        mine = [cid for cid, members in conversations.items() if user in members]
        own: list[tuple[str, str]] = []  # (conversation, local id) of messages still there
        reacted: dict[str, list[str]] = {}
        i = 0
        while not stop.is_set():
            cid = rng.choice(mine)
            rec = await client.send_message(cid, f"{user}#{i}")
            sent[user].append(rec["local_id"] or "")
            own.append((cid, rec["local_id"] or ""))
            if rec["status"] == MessageStatus.SENDING:
                figures["sends_queued_offline"] += 1
            i += 1
            while own and rng.random() < 0.6:
                await change(user, own, reacted)
            await asyncio.sleep(rng.uniform(0.03, 0.12))  # pacing, as people type

    async def killer() -> None:
        for fraction in KILL_AT:
            await asyncio.sleep(CHAOS_SECONDS * fraction - (time.monotonic() - started))
            srv.kill()
            # Connections made from now on reach the restarted server.
            before = {u: c.stats["connections"] for u, c in clients.items()}
            figures["server_kills"] += 1
            await asyncio.sleep(rng.uniform(0.5, 1.5))  # the server stays down a while
            await asyncio.to_thread(srv.start)
            ready = time.monotonic()
            await asyncio.gather(
                *(c.wait_for(reconnected(c, before[u]), 60) for u, c in clients.items())
            )
            figures["caught_up_after_restart"].append(round(time.monotonic() - ready, 3))

    started = time.monotonic()
    tasks = [asyncio.create_task(sender(u)) for u in clients]
    chaos = asyncio.create_task(proxy.run_chaos(mean_interval=0.4))
    kills = asyncio.create_task(killer())
    await asyncio.sleep(CHAOS_SECONDS)  # the length of the run, not synchronisation
    await kills
    stop.set()
    chaos.cancel()
    await asyncio.gather(*tasks)
    await asyncio.gather(chaos, return_exceptions=True)

    # 5. Calm: everything must converge. First every queue empties (no sends after).
    settle_started = time.monotonic()
    dave_second = (await read_json(live, 60))["sent"]
    for client in clients.values():
        await client.wait_for(lambda s: not s["messageQueue"], 60)
    truth: dict[str, list[dict[str, Any]]] = {}
    last: dict[str, int] = {}
    for cid, members in conversations.items():
        truth[cid] = await history(srv, next(iter(members)), cid)
        last[cid] = await last_seq(srv, next(iter(members)), cid)
    assert live.stdin is not None
    # The targets are log seqs (messages and changes share them), not message counts.
    live.stdin.write(json.dumps({c: last[c] for c in dave_convs.split(",")}).encode())
    live.stdin.close()
    dave = await read_json(live, 90)
    assert await asyncio.wait_for(live.wait(), 30) == 0

    def settled(c: ChatClient) -> Callable[[ChatState], bool]:
        def check(s: ChatState) -> bool:
            return (
                not s["messageQueue"]
                and c.caught_up
                and all(
                    s["conversations"]["byId"][cid]["synced_seq"] >= last[cid]
                    for cid, members in conversations.items()
                    if c.user_id in members
                )
            )

        return check

    for client in clients.values():
        await client.wait_for(settled(client), 60)
    figures["settle_seconds"] = round(time.monotonic() - settle_started, 3)

    # 6. The server holds every send exactly once, seq 1..n without gaps: each send's
    # record names a stored message, no two sends name the same one, nothing else is there.
    all_sent = {u: list(ids) for u, ids in sent.items()}
    all_sent["dave"] = dave_first + dave_second
    stored_ids = {m["id"] for messages in truth.values() for m in messages}
    # Messages and changes share each conversation's seq, 1..last without gaps: the
    # messages' seqs rise, and what is left of 1..last is exactly one entry per change.
    for messages in truth.values():
        seqs = [m["seq"] for m in messages]
        assert seqs == sorted(set(seqs))
    total_changes = sum(changes.values())
    entries = sum(last.values())
    assert not change_failures, change_failures[:5]
    assert entries == sum(len(m) for m in truth.values()) + total_changes, (
        "a change lost or doubled"
    )
    send_ids: dict[str, str | None] = {}
    for user, client in clients.items():
        for lid in sent[user]:
            rec = client.message(lid)
            send_ids[lid] = rec["id"] if rec else None
    for lid in all_sent["dave"]:
        send_ids[lid] = dave["records"].get(lid, {}).get("id")
    lost_on_server = [lid for lid, mid in send_ids.items() if mid not in stored_ids]
    named = [mid for mid in send_ids.values() if mid is not None]
    duplicated_on_server = len(stored_ids) - len(set(named) & stored_ids)
    assert len(named) == len(set(named))

    # 7. Every member received every message exactly once, in seq order.
    lost = duplicated = out_of_order = 0
    views: dict[str, list[tuple[str, int, str | None]]] = {
        u: [(m["conversation_id"], int(m["seq"] or 0), m["id"]) for m in r]
        for u, r in received.items()
    }
    views["dave"] = [
        (cid, seq, mid) for cid, items in dave["received"].items() for seq, mid in items
    ]
    for user, view in views.items():
        for cid, members in conversations.items():
            if user not in members:
                assert all(v[0] != cid for v in view)
                continue
            got = [(seq, mid) for c, seq, mid in view if c == cid]
            want = [(m["seq"], m["id"]) for m in truth[cid]]
            lost += len(set(want) - set(got))
            duplicated += len(got) - len(set(got))
            out_of_order += sum(1 for a, b in itertools.pairwise(got) if a[0] >= b[0])
            assert got == want, f"{user} in {cid}"

    # 8. Every sender's records end as sent or better.
    not_sent = []
    for user, client in clients.items():
        for lid in sent[user]:
            rec = client.message(lid)
            if rec is None or rec["status"] not in SENT_OR_BETTER:
                not_sent.append((user, lid, rec and rec["status"]))
    for lid in dave_first + dave_second:
        status = dave["records"].get(lid, {}).get("status")
        if status not in SENT_OR_BETTER:
            not_sent.append(("dave", lid, status))

    # 9. Every client holds exactly the server's messages as they are now.
    def now(m: Any) -> tuple[Any, ...]:
        reactions = {e: sorted(u) for e, u in (m["reactions"] or {}).items()}
        return (m["id"], m["seq"], m["content"], m["edited_at"], m["deleted"], reactions)

    diverged = 0
    for user, client in clients.items():
        for cid, members in conversations.items():
            if user in members:
                mine_now = [now(m) for m in client.messages(cid)]
                want_now = [now(m) for m in truth[cid]]
                diverged += sum(1 for a, b in zip(mine_now, want_now, strict=False) if a != b)
                assert mine_now == want_now, f"{user} in {cid}"

    total = sum(len(m) for m in truth.values())
    figures.update(
        {
            "chaos_seconds": CHAOS_SECONDS,
            "messages_sent": sum(len(ids) for ids in all_sent.values()),
            "messages_stored": total,
            "deliveries_checked": sum(len(v) for v in views.values()),
            "connections": proxy.stats.accepted,
            "connections_refused": proxy.stats.refused,
            "connections_cut": proxy.stats.cut_total,
            "cuts_by_mode": proxy.stats.cuts,
            "token_refreshes": sum(c.stats["token_refreshes"] for c in clients.values()),
            "resends_after_error": sum(c.stats["resends"] for c in clients.values()),
            "replayed_after_reconnect": sum(c.stats["replays"] for c in clients.values()),
            "lost": lost + len(lost_on_server),
            "duplicated": duplicated + duplicated_on_server,
            "out_of_order": out_of_order,
            "not_sent_or_better": len(not_sent),
            "changes_made": total_changes,
            "changes_failed": len(change_failures),
            "states_diverged": diverged,
        }
    )
    with capsys.disabled():
        print("\nchaos figures:", json.dumps(figures, indent=2))
    assert not lost_on_server and duplicated_on_server == 0
    assert lost == duplicated == out_of_order == 0
    assert not not_sent, not_sent[:10]
    assert not change_failures, change_failures[:5]
    assert figures["messages_sent"] == total
    assert figures["server_kills"] == len(KILL_AT) and figures["connections_cut"] > 0
    assert figures["token_refreshes"] > 0
    assert all(
        r["status"] != MessageStatus.FAILED
        for c in clients.values()
        for r in c.state["messages"]["byId"].values()
    )
