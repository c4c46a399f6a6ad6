"""A host backend's webhook receiver: verifies each delivery and prints who to push-notify.

    parley serve --webhook-url http://127.0.0.1:9000/parley --webhook-secret WHSEC …
    python examples/push_receiver.py --port 9000 --secret WHSEC --seen seen.db

For every ``message.created`` it prints one line per offline member::

    notify bob: ann in conversation 12: "see you at 5"

and ``listening on http://HOST:PORT/parley`` once it is up. It answers 2xx only after it
has recorded the event id (in the ``--seen`` SQLite file), so a delivery Parley sends
again (its retries are at least once) is acknowledged and not printed twice, also after
this process is killed and started again. (It records before it prints: killed between
the two, it misses that one notification. A backend that must never miss a push sends
it first and records after, accepting a rare second push instead.) A bad or stale
signature is 401 and nothing is printed. Stops on SIGINT / SIGTERM. Only the standard
library and aiohttp: no Parley code needed on the receiving side (docs/webhooks.md,
"Verifying a delivery").
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import signal
import sqlite3
import time
from typing import Any

from aiohttp import web

TOLERANCE = 300  # seconds between the signature's timestamp and our clock


def signature_ok(secret: str, body: bytes, header: str, now: float) -> bool:
    """``Parley-Signature: t=…,v1=…``: HMAC-SHA256 of ``"{t}.{body}"``, compared in
    constant time, with ``t`` no further than ``TOLERANCE`` from ``now`` (replays)."""
    fields = [part.strip().partition("=") for part in header.split(",")]
    stamps = [v for k, _, v in fields if k == "t" and v.isascii() and v.isdigit()]
    candidates = [v for k, _, v in fields if k == "v1"]
    if len(stamps) != 1 or not candidates or abs(now - int(stamps[0])) > TOLERANCE:
        return False
    signed = stamps[0].encode() + b"." + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, c) for c in candidates if c.isascii())


class Receiver:
    def __init__(self, secret: str, seen_path: str) -> None:
        self.secret = secret
        self.db = sqlite3.connect(seen_path, isolation_level=None)
        self.db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, at REAL)")

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get("Parley-Signature", "")
        if not signature_ok(self.secret, body, header, time.time()):
            return web.Response(status=401, text="bad signature")
        try:
            event = json.loads(body)
            event_id = str(event["id"])
        except (ValueError, KeyError, TypeError):
            return web.Response(status=400, text="not an event")
        # Record the id first: a redelivery of an event already handled is only acked.
        fresh = (
            self.db.execute(
                "INSERT INTO seen (id, at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (event_id, time.time()),
            ).rowcount
            == 1
        )
        if fresh and event.get("type") == "message.created":
            self.notify(event["data"])
        return web.Response(status=204)

    @staticmethod
    def notify(data: dict[str, Any]) -> None:
        message = data["message"]
        preview = message["content"][:80] or "(attachment)"
        for user in data.get("offline_member_ids") or []:
            # A real backend would look up the user's device tokens and call APNs / FCM.
            print(
                f"notify {user}: {message['sender_id']} in conversation "
                f"{data['conversation_id']}: {json.dumps(preview, ensure_ascii=False)}",
                flush=True,
            )


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--path", default="/parley")
    p.add_argument("--secret", required=True, help="the server's --webhook-secret")
    p.add_argument("--seen", default="push_receiver_seen.db", help="SQLite file of event ids")
    args = p.parse_args()

    receiver = Receiver(args.secret, args.seen)
    app = web.Application()
    app.router.add_post(args.path, receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    print(f"listening on http://{args.host}:{args.port}{args.path}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
