"""A bot that answers every message in its conversations with ``echo: <content>``.

    python examples/echo_bot.py --url ws://127.0.0.1:8000/ws --secret S --user echo-bot
    python examples/echo_bot.py --url ws://127.0.0.1:8000/ws --token JWT

With ``--secret`` the bot mints its own short-lived tokens (and new ones when the server
closes with 4003); with ``--token`` it uses the one given. It learns new conversations
live (``conversation.created``), answers only messages sent after it first saw a
conversation, and never answers itself. Prints ``connected as USER`` once connected.
Stops on SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from parley.auth import mint_token
from parley.client import ChatClient, MessageRecord


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="ws://127.0.0.1:8000/ws")
    auth = p.add_mutually_exclusive_group(required=True)
    auth.add_argument("--secret", help="server secret: mint tokens for --user")
    auth.add_argument("--token", help="a JWT to connect with")
    p.add_argument("--user", default="echo-bot", help="user id (with --secret)")
    p.add_argument("--queue", default=None, help="SQLite file for the offline queue")
    p.add_argument("--prefix", default="echo: ")
    return p.parse_args()


async def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    async def fresh_token() -> str:
        return mint_token(args.secret, args.user, ttl=3600)

    client = ChatClient(
        args.url,
        token=args.token,
        token_provider=fresh_token if args.secret else None,
        queue_path=args.queue,
        history=False,  # answer what is new, not the past
    )

    async def answer(message: MessageRecord) -> None:
        if message["sender_id"] == client.user_id:
            return
        await client.send_message(
            message["conversation_id"],
            f"{args.prefix}{message['content']}",
            reply_to=message["id"],
        )
        await client.mark_read(message["conversation_id"], [message["id"] or ""])

    client.on("message", answer)
    client.on("conversation", lambda c: print(f"joined conversation {c['id']}", flush=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client.on("closed", lambda _info: stop.set())
    await client.connect()
    print(f"connected as {client.user_id}", flush=True)
    await stop.wait()
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
