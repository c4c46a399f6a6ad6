"""A client in its own process, for the chaos test (run: ``python -m tests.client.chaos_client``).

``offline``: queue ``--count`` messages while no server is reachable, print
``{"queued": [local_id, …]}`` and wait to be killed (the queue stays on disk).

``live``: start on the same ``--queue`` (replaying what is left), send ``--count`` more
messages and print ``{"sent": [local_id, …]}``; record every message received. Standard
input then brings ``{conversation_id: last_seq}``: once the queue is empty and those
messages are all held, print ``{"records": …, "received": …}`` and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from parley.auth import mint_token
from parley.client import ChatClient, MessageRecord


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["offline", "live"])
    p.add_argument("--url", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--conversations", required=True, help="comma-separated ids to send to")
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--ttl", type=float, default=3600)
    args = p.parse_args()
    convs = args.conversations.split(",")

    async def token() -> str:
        return mint_token(args.secret, args.user, ttl=args.ttl)

    client = ChatClient(
        args.url,
        token_provider=token,
        queue_path=args.queue,
        heartbeat_interval=0.5,
        max_missed_heartbeats=3,
        backoff_base=0.05,
        backoff_cap=0.5,
        retry_delay=0.1,
        ack_timeout=3.0,
        open_timeout=3.0,
    )
    received: dict[str, list[tuple[int | None, str | None]]] = {}

    def on_message(m: MessageRecord) -> None:
        received.setdefault(m["conversation_id"], []).append((m["seq"], m["id"]))

    client.on("message", on_message)
    await client.connect(wait=False)
    sent: list[str] = []
    for i in range(args.count):
        rec = await client.send_message(convs[i % len(convs)], f"{args.user}#{args.mode}{i}")
        sent.append(rec["local_id"] or "")
        if args.mode == "live":
            await asyncio.sleep(0.05)  # pacing, as a person types
    if args.mode == "offline":
        print(json.dumps({"queued": sent}), flush=True)
        await asyncio.Event().wait()  # until killed
        return

    print(json.dumps({"sent": sent}), flush=True)
    # Standard input brings {conversation_id: final last_seq} when the others are done.
    targets = json.loads(await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read))
    await client.wait_for(
        lambda s: (
            not s["messageQueue"]
            and client.caught_up
            and all(s["conversations"]["byId"][c]["synced_seq"] >= n for c, n in targets.items())
        ),
        60,
    )
    records: dict[str, Any] = {}
    for lid in client.state["messages"]["byLocalId"]:
        found = client.message(lid)
        if found is not None:
            records[lid] = {"id": found["id"], "seq": found["seq"], "status": str(found["status"])}
    await client.close()
    print(json.dumps({"records": records, "received": received}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
