"""``ChatClient``: the asyncio SDK over one WebSocket, reconnecting for as long as it lives.

Layers: ``state`` (pure reducer), ``outbox`` + ``queue`` (sending, on disk first),
``connection`` (per-connection bookkeeping, close-code rules), ``backoff`` (pure delays),
``events`` (listeners); this module is the I/O that ties them. One supervisor task keeps
a connection up; each connection (a ``Session``) runs a reader, a heartbeat and the
outbox sender, and ends them all when the socket closes.

The delivery rules, which the chaos test checks end to end:

* Every ``send_message`` is put in the offline queue (committed to disk) before it is
  sent, and leaves it only when the server's ack — the ``chat_message`` echo with its
  ``local_id`` — has arrived. After every (re)connect the queue is sent again, oldest
  first, one message at a time, with the same ``local_id``s (the server deduplicates).
* After every (re)connect, and whenever a ``seq`` jumps, the client sends ``sync`` with
  the highest contiguous ``seq`` it holds in each conversation, and repeats it until it
  holds everything up to the last ``seq`` the server has announced.
* ``"message"`` listeners see each message of a conversation once, in ``seq`` order,
  when it and all earlier ones are held; messages from others are then acknowledged
  with ``mark_delivered``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from parley.client import state as st
from parley.client.backoff import Backoff
from parley.client.connection import (
    Session,
    SessionLost,
    after_close,
    decode_frame,
    get_json,
    http_base,
    send_frame,
    token_expiry,
)
from parley.client.errors import ChangeFailed, ClientClosed, ClientError
from parley.client.events import Emitter, Listener
from parley.client.outbox import Outbox
from parley.client.queue import OfflineQueue
from parley.client.rest import RestClient
from parley.codes import (
    BACKOFF_BASE_MS,
    BACKOFF_CAP_MS,
    BACKOFF_JITTER,
    HEARTBEAT_INTERVAL_MS,
    MAX_MISSED_HEARTBEATS,
    MAX_RETRIES,
    RECEIPT_BATCH,
    RETRY_DELAY_MS,
    SEND_BURST,
    SEND_RATE,
    SEND_WINDOW,
    ActionName,
    CloseCode,
    ErrorCode,
    EventName,
    LocalErrorCode,
    MessageStatus,
    receipt_batch,
)

log = logging.getLogger("parley.client")

TokenProvider = Callable[[], Awaitable[str]]

TOKEN_MARGIN = 1.0  # seconds: a token this close to its expiry is replaced before use


class ChatClient:
    """A Parley client: connection, offline queue, state, events.

    Give ``token`` (a JWT) or ``token_provider`` (an async callable returning a fresh
    JWT; called before the first connection and after every 4003), or both.
    ``queue_path`` is the SQLite file of the offline queue (``None``: in memory only).
    With ``history=False`` the client skips the messages that existed before it first
    saw a conversation (a bot's choice); by default it syncs whole histories.

    Listeners (``on``) may be plain functions or coroutine functions; the latter run as
    tasks. A listener's exception is logged and never breaks the client.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        queue_path: str | Path | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_MS / 1000,
        max_missed_heartbeats: int = MAX_MISSED_HEARTBEATS,
        backoff_base: float = BACKOFF_BASE_MS / 1000,
        backoff_cap: float = BACKOFF_CAP_MS / 1000,
        backoff_jitter: float = BACKOFF_JITTER,
        retry_delay: float = RETRY_DELAY_MS / 1000,
        max_retries: int = MAX_RETRIES,
        send_window: int = SEND_WINDOW,
        send_rate: float = SEND_RATE,
        send_burst: float = SEND_BURST,
        ack_timeout: float = 10.0,
        open_timeout: float = 10.0,
        receipt_interval: float = 0.2,
        history: bool = True,
        token_in_query: bool = False,
    ) -> None:
        if max_retries < 1:
            raise ValueError("max_retries must be at least 1")
        self.url = url
        self._token = token
        self._token_provider = token_provider
        self._heartbeat_interval = heartbeat_interval
        self._max_missed = max_missed_heartbeats
        self._backoff = Backoff(backoff_base, backoff_cap, backoff_jitter)
        self._retry_delay = retry_delay
        self._max_retries = max_retries
        self._ack_timeout = ack_timeout
        self._receipt_interval = receipt_interval
        self._open_timeout = open_timeout
        self._history = history
        self._token_in_query = token_in_query

        self._state = st.initial_state()
        self._events = Emitter()
        self._predicates: list[tuple[Callable[[st.ChatState], bool], asyncio.Future[None]]] = []

        self._runner: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._session: Session | None = None  # the established connection, if any
        self._closing = False
        self._closed = False
        self._stop_error: ClientError | None = None
        self._connected_waiters: list[asyncio.Future[None]] = []
        self._wakeup = asyncio.Event()  # interrupts the backoff sleep
        self._baselined: set[str] = set()  # conversations whose start point is fixed
        self._member_fetches: set[str] = set()  # conversations whose members are asked for
        self._pending_delivered: dict[str, list[str]] = {}
        self._pending_read: dict[str, list[str]] = {}
        self._caught_up = False
        # Counters for monitoring and tests: WebSocket connections opened, sync requests,
        # sends repeated after an error, queue entries sent again on a later connection,
        # tokens fetched after a 4003, sends refused with RATE_LIMITED, the most sends
        # unanswered at once.
        self.stats = {
            "connections": 0,
            "syncs": 0,
            "resends": 0,
            "replays": 0,
            "token_refreshes": 0,
            "rate_limited": 0,  # sends the server refused with RATE_LIMITED
            "max_in_flight": 0,  # the most sends unanswered at once (at most send_window)
        }
        queue = OfflineQueue(queue_path)
        self._outbox = Outbox(
            queue,
            get_state=lambda: self._state,
            dispatch=self._dispatch,
            stats=self.stats,
            on_change_failed=self._change_failed,
            retry_delay=retry_delay,
            max_retries=max_retries,
            ack_timeout=ack_timeout,
            window=send_window,
            rate=send_rate,
            burst=send_burst,
        )
        entries = queue.entries()
        if entries:
            self._dispatch(st.queue_loaded(entries))

    # -- public API ----------------------------------------------------------------
    @property
    def state(self) -> st.ChatState:
        """The current state (the seed's store shape). Read it; never mutate it."""
        return self._state

    @property
    def user_id(self) -> str | None:
        return self._state["connection"]["userId"]

    @property
    def connected(self) -> bool:
        return self._session is not None

    @property
    def caught_up(self) -> bool:
        """Connected, and holding every message the server has announced."""
        return self._session is not None and self._caught_up

    def on(self, event: str, callback: Listener) -> Callable[[], None]:
        """Call ``callback(data)`` on ``event`` (see ``EVENTS``); returns an unsubscribe."""
        return self._events.on(event, callback)

    async def connect(self, *, wait: bool = True) -> None:
        """Start connecting (and reconnecting, until ``close``).

        With ``wait`` (the default), return once the server has sent
        ``connection.established``; raise ``AuthenticationError`` / ``AccessDenied`` if
        it refused for good. Failures that may pass (server down, network) are retried
        with backoff, not raised: bound the wait with ``asyncio.timeout`` if needed (the
        client keeps trying in the background).
        """
        if self._closed:
            raise ClientClosed("the client is closed")
        if self._runner is None or self._runner.done():
            self._stop_error = None
            self._runner = asyncio.create_task(self._supervise(), name="parley-client")
        if not wait or self._session is not None:
            return
        if self._stop_error is not None:
            raise self._stop_error
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._connected_waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._connected_waiters:
                self._connected_waiters.remove(fut)

    async def close(self) -> None:
        """Close the connection (code 1000) and stop. Queued messages stay on disk."""
        if self._closed:
            return
        self._closing = True
        self._wakeup.set()
        runner, ws = self._runner, self._ws
        if runner is not None and ws is not None:
            # Close politely and let the connection wind down on its own.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(CloseCode.NORMAL, "client closing"), 5.0)
            await asyncio.wait({runner}, timeout=5.0)
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._closed = True
        self._stop(ClientClosed("the client is closed"))
        await self._events.aclose()
        await self._outbox.close()

    async def __aenter__(self) -> ChatClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send_message(
        self,
        conversation_id: str,
        content: str,
        reply_to: str | None = None,
        attachments: Sequence[Mapping[str, Any]] | None = None,
        mentions: Sequence[str] | None = None,
    ) -> st.MessageRecord:
        """Send a message; return its record.

        The message is queued on disk first. While connected this waits for the
        outcome and returns the record ``sent`` (or better), or ``failed`` with the
        server's ``error`` after ``max_retries`` tries ``retry_delay`` apart (errors no
        retry can cure fail at once; ``RATE_LIMITED`` waits ``retry_after_ms`` and does
        not count as a try). While disconnected — or if the connection drops before the
        ack — it returns the record still ``sending``: the queue delivers it after the
        next connect. Later status changes arrive as ``"message_status"`` events.
        """
        if self._closed:
            raise ClientClosed("the client is closed")
        entry: st.QueuedMessage = {
            "action": "send_message",  # ActionName.SEND_MESSAGE (a Literal for the TypedDict)
            "conversation_id": str(conversation_id),
            "content": content,
            "local_id": new_local_id(),
        }
        if reply_to is not None:
            entry["reply_to"] = str(reply_to)
        if attachments:
            entry["attachments"] = [dict(a) for a in attachments]
        if mentions:
            entry["mentions"] = [str(u) for u in mentions]
        await self._outbox.put(entry)
        self._dispatch(st.send_message(entry))
        await self._outbox.wait(entry["local_id"], self._session is not None)
        return self._record(entry["local_id"])

    async def retry(self, local_id: str) -> st.MessageRecord:
        """Send a ``failed`` own message again (same ``local_id``); as ``send_message``."""
        rec = self._record(local_id)
        if rec["status"] != MessageStatus.FAILED:
            return rec
        action = st.retry_message(local_id)
        queued = st.reduce(self._state, action)["messageQueue"]
        await self._outbox.put(next(e for e in queued if st.entry_key(e) == local_id))  # disk first
        self._dispatch(action)
        await self._outbox.wait(local_id, self._session is not None)
        return self._record(local_id)

    async def edit_message(
        self, conversation_id: str, message_id: str, content: str
    ) -> st.MessageRecord | None:
        """Replace the content of an own message (``message_id``: its id, or its
        ``local_id`` before the ack). See ``_change`` for what is returned and raised."""
        return await self._change(
            {
                "action": "edit_message",
                "conversation_id": str(conversation_id),
                "message_id": str(message_id),
                "request_id": new_request_id(),
                "content": content,
            }
        )

    async def delete_message(
        self, conversation_id: str, message_id: str
    ) -> st.MessageRecord | None:
        """Delete a message (the sender's, or any as a group owner): it stays a tombstone."""
        return await self._change(
            {
                "action": "delete_message",
                "conversation_id": str(conversation_id),
                "message_id": str(message_id),
                "request_id": new_request_id(),
            }
        )

    async def react(
        self, conversation_id: str, message_id: str, emoji: str
    ) -> st.MessageRecord | None:
        """Add the user's reaction ``emoji`` (one emoji or a ``:short_code:``)."""
        return await self._change(
            {
                "action": "add_reaction",
                "conversation_id": str(conversation_id),
                "message_id": str(message_id),
                "request_id": new_request_id(),
                "emoji": emoji,
            }
        )

    async def unreact(
        self, conversation_id: str, message_id: str, emoji: str
    ) -> st.MessageRecord | None:
        """Take the user's reaction ``emoji`` back."""
        return await self._change(
            {
                "action": "remove_reaction",
                "conversation_id": str(conversation_id),
                "message_id": str(message_id),
                "request_id": new_request_id(),
                "emoji": emoji,
            }
        )

    async def _change(self, change: st.QueuedChange) -> st.MessageRecord | None:
        """Queue a change (on disk first) like a message, and send it in queue order.

        While connected, wait for the server's answer (the event carrying the change's
        ``request_id``) and return the message record as it is then (``None`` if the
        message is not held); raise ``ChangeFailed`` if the server refused it. While
        disconnected, return the current record at once: the queue sends the change
        after the next connect, with the same ``request_id`` (a replayed change changes
        nothing on the server and is answered with the current state).
        """
        if self._closed:
            raise ClientClosed("the client is closed")
        rid = change["request_id"]
        await self._outbox.put(change)
        self._dispatch(st.change_queued(change))
        await self._outbox.wait(rid, self._session is not None)
        error = self._outbox.failures.pop(rid, None)
        if error is not None:
            raise ChangeFailed(rid, error)
        return st.find_message(self._state, change["message_id"])

    def _change_failed(self, entry: st.QueueEntry, error: Mapping[str, Any]) -> None:
        self._emit(
            "change_failed",
            {"request_id": st.entry_key(entry), "action": entry["action"], "error": error},
        )

    async def load_conversations(self) -> list[dict[str, Any]]:
        """``GET /api/conversations``: the user's conversations with their members and
        unread state (``read_seq``, ``unread_count``, ``mention_count``), also put in
        ``state``."""
        token = await self._get_token(False)
        if token is None:
            return []
        url = f"{http_base(self.url)}/api/conversations"
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, get_json, url, token, self._open_timeout)
        items = (
            [dict(c) for c in (data.get("conversations") or [])] if isinstance(data, dict) else []
        )
        self._dispatch(st.conversations_loaded(items))
        self._baseline()
        return items

    async def search(
        self,
        q: str,
        conversation_id: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> dict[str, Any]:
        """``GET /api/search``: ``{"messages": [...], ...}``, best matches first, over the
        user's conversations only (``RestClient.search`` with this client's token)."""
        token = await self._get_token(False)
        if token is None:
            raise ClientError("search needs a token")
        api = RestClient(http_base(self.url), token=token, timeout=self._open_timeout)
        return await api.search(q, conversation_id=conversation_id, limit=limit, offset=offset)

    async def presence(self, user_ids: Sequence[str]) -> list[dict[str, Any]]:
        """``GET /api/presence``: the presence of those of ``user_ids`` who share a
        conversation with the user; also put in ``state["presence"]``."""
        token = await self._get_token(False)
        if token is None or not user_ids:
            return []
        query = urllib.parse.urlencode({"user_ids": ",".join(str(u) for u in user_ids)})
        url = f"{http_base(self.url)}/api/presence?{query}"
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, get_json, url, token, self._open_timeout)
        items = [dict(i) for i in (data.get("presence") or [])] if isinstance(data, dict) else []
        self._dispatch(st.presence_updated(items))
        return items

    async def typing(self, conversation_id: str, is_typing: bool = True) -> bool:
        """Tell the others whether the user is typing; False if not connected (dropped)."""
        return await self._send_now(
            {
                "action": ActionName.TYPING,
                "conversation_id": str(conversation_id),
                "is_typing": is_typing,
            }
        )

    async def mark_read(
        self, conversation_id: str, message_ids: Sequence[str] | None = None
    ) -> None:
        """Mark messages read (default: up to the newest message held).

        Sent at once if connected, else kept and sent after the next connect.
        """
        cid = str(conversation_id)
        if message_ids is None:
            synced = self._state["conversations"]["byId"].get(cid)
            held = st.messages_between(self._state, cid, 0, synced["synced_seq"] if synced else 0)
            message_ids = [held[-1]["id"]] if held and held[-1]["id"] else []
        ids = [str(m) for m in message_ids]
        if not ids:
            return
        self._pending_read[cid] = [*self._pending_read.get(cid, []), *ids]
        if self._session is not None:
            self._kick_receipts(self._session)

    def message(self, message_id: str) -> st.MessageRecord | None:
        """The record with server id or own ``local_id`` ``message_id``, if held."""
        return st.find_message(self._state, message_id)

    def messages(self, conversation_id: str) -> list[st.MessageRecord]:
        """The conversation's messages held, in ``seq`` order, then own pending ones."""
        return st.conversation_messages(self._state, str(conversation_id))

    async def wait_for(
        self,
        predicate: Callable[[st.ChatState], bool],
        timeout: float | None = None,
    ) -> st.ChatState:
        """Wait until ``predicate(state)`` holds (checked now and after every change)."""
        if predicate(self._state):
            return self._state
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        item = (predicate, fut)
        self._predicates.append(item)
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            if item in self._predicates:
                self._predicates.remove(item)
        return self._state

    async def wait_for_event(
        self,
        event: str,
        predicate: Callable[[Any], bool] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The data of the next ``event`` for which ``predicate`` holds."""
        return await self._events.wait_for(event, predicate, timeout)

    # -- state and events ------------------------------------------------------------
    def _dispatch(self, action: st.Action) -> None:
        old = self._state
        new, changed = st.reduce_with_changes(old, action)
        if new is old:
            return
        self._state = new
        for key in changed:
            rec = new["messages"]["byId"].get(key)
            if rec is not None:
                self._emit("message_status", rec)
        if new["conversations"]["byId"] is not old["conversations"]["byId"]:
            self._emit_contiguous(old, new, action)
        self._emit("state", new)
        self._check_predicates()

    def _check_predicates(self) -> None:
        """Wake ``wait_for`` callers; called after every change of state or status."""
        for predicate, fut in list(self._predicates):
            if not fut.done():
                try:
                    if predicate(self._state):
                        fut.set_result(None)
                except Exception as exc:
                    fut.set_exception(exc)

    def _emit_contiguous(self, old: st.ChatState, new: st.ChatState, action: st.Action) -> None:
        old_convs = old["conversations"]["byId"]
        skipped = action["payload"] if action["type"] == st.HISTORY_SKIPPED else None
        self_id = new["connection"]["userId"]
        new_convs = new["conversations"]["byId"]
        if action["type"] == st.MESSAGE_RECEIVED or action["type"] in st.CHANGE_ACTIONS:
            touched = [str(action["payload"]["conversation_id"])]
        else:
            touched = list(new_convs)
        for cid in touched:
            conv = new_convs[cid]
            prev = old_convs.get(cid)
            lo = prev["synced_seq"] if prev is not None else 0
            if conv["synced_seq"] <= lo:
                continue
            if skipped is not None and skipped["conversation_id"] == cid:
                lo = max(lo, int(skipped["seq"]))
            for rec in st.messages_between(new, cid, lo, conv["synced_seq"]):
                if rec["sender_id"] != self_id and rec["id"] is not None:
                    self._pending_delivered.setdefault(cid, []).append(rec["id"])
                self._emit("message", rec)

    def _emit(self, event: str, data: Any) -> None:
        self._events.emit(event, data)

    def _record(self, local_id: str) -> st.MessageRecord:
        rec = st.find_message(self._state, local_id)
        if rec is None:
            raise KeyError(local_id)
        return rec

    async def _send(self, session: Session, frame: Mapping[str, Any]) -> None:
        await send_frame(session, frame)

    async def _send_now(self, frame: Mapping[str, Any]) -> bool:
        session = self._session
        if session is None:
            return False
        try:
            await self._send(session, frame)
        except SessionLost:
            return False
        return True

    # -- connection supervisor ------------------------------------------------------------
    def _ws_url(self, token: str | None) -> str:
        if token is None or not self._token_in_query:
            return self.url
        parts = urllib.parse.urlsplit(self.url)
        query = urllib.parse.parse_qsl(parts.query)
        query = [(k, v) for k, v in query if k != "token"] + [("token", token)]
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

    async def _get_token(self, refresh: bool) -> str | None:
        """The token to connect with: a new one after a 4003, or if it has expired."""
        if self._token_provider is None:
            return self._token
        expires = token_expiry(self._token) if self._token is not None else None
        expired = expires is not None and expires - time.time() < TOKEN_MARGIN
        if refresh or expired or self._token is None:
            if self._token is not None:
                self.stats["token_refreshes"] += 1
            self._token = await self._token_provider()
        return self._token

    async def _supervise(self) -> None:
        try:
            await self._run()
        except Exception as exc:
            # A bug of ours must not leave callers waiting on a client that is gone.
            log.exception("the client stopped on an unexpected error")
            self._stop(ClientError(f"internal error: {exc!r}"))

    async def _run(self) -> None:
        attempt = 0
        refresh = False
        while not self._closing:
            self._dispatch(st.connect())
            code: int | None = None
            reason: str | None = None
            established = False
            try:
                token = await self._get_token(refresh)
                refresh = False
                headers = {}
                if token is not None and not self._token_in_query:
                    headers["Authorization"] = f"Bearer {token}"
                ws = await ws_connect(
                    self._ws_url(token),
                    additional_headers=headers,
                    open_timeout=self._open_timeout,
                    ping_interval=None,  # the protocol's heartbeat does this job
                    close_timeout=5.0,
                    max_size=16 * 1024 * 1024,
                )
            except asyncio.CancelledError:
                raise
            except InvalidStatus as exc:
                status = exc.response.status_code
                code, reason = None, f"HTTP {status}"
                if status == 401:
                    code = CloseCode.UNAUTHORIZED
                elif status == 403:
                    code = CloseCode.ACCESS_DENIED
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                log.debug("connect failed: %s", reason)
            else:
                self._ws = ws
                try:
                    established = await self._serve(ws)
                finally:
                    self._ws = None
                code, reason = ws.close_code, ws.close_reason
            if established:
                attempt = 0
            self._dispatch(st.disconnected(code, reason))
            self._emit("disconnected", {"code": code, "reason": reason})
            if self._closing:
                break
            then = after_close(
                code, reason, established=established, can_refresh=self._token_provider is not None
            )
            if then.stop is not None:
                self._stop(then.stop, code, reason)
                return
            refresh = then.refresh_token
            delay = 0.0 if then.immediate else self._backoff.delay(attempt)
            attempt += 1
            self._emit("reconnecting", {"attempt": attempt, "delay": delay})
            await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        self._wakeup.clear()
        if delay > 0 and not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)

    def _stop(self, error: ClientError, code: int | None = None, reason: str | None = None) -> None:
        """Stop for good (terminal close code, or ``close``)."""
        if self._stop_error is None:
            self._stop_error = error
            self._emit("closed", {"code": code, "reason": reason})
        for fut in self._connected_waiters:
            if not fut.done():
                fut.set_exception(error)
        self._connected_waiters.clear()
        self._outbox.release()
        for _predicate, fut in self._predicates:
            if not fut.done():
                fut.set_exception(ClientClosed(str(error)))

    async def _serve(self, ws: ClientConnection) -> bool:
        """Run one connection until it closes; True if it was established."""
        session = Session(ws)
        self.stats["connections"] += 1
        session.spawn(self._heartbeat(session), "parley-heartbeat")
        try:
            async for raw in ws:
                frame = decode_frame(raw)
                if frame is None:
                    log.warning("ignoring a frame that is not a JSON object")
                    self._emit(
                        "local_error",
                        {
                            "code": LocalErrorCode.BAD_FRAME,
                            "message": "a frame that is not a JSON object",
                        },
                    )
                    continue
                try:
                    if not session.established:
                        if frame.get("type") != EventName.CONNECTION_ESTABLISHED:
                            self._emit("frame", frame)
                            self._route(session, frame)
                            continue
                        await self._on_established(session, frame.get("data") or {})
                        session.spawn(self._outbox.run(session), "parley-outbox")
                        continue
                    await self._handle(session, frame)
                except SessionLost:
                    break
                except Exception as exc:
                    # A peer's bad frame must not end the client.
                    log.exception("could not handle a %r frame", frame.get("type"))
                    self._emit(
                        "local_error", {"code": LocalErrorCode.BAD_FRAME, "message": repr(exc)}
                    )
        except ConnectionClosed:
            pass
        finally:
            session.lost = True
            if self._session is session:
                self._session = None
            self._caught_up = False
            for task in session.tasks:
                task.cancel()
            await asyncio.gather(*session.tasks, return_exceptions=True)
            for fut in session.acks.values():
                if not fut.done():
                    fut.cancel()
            self._outbox.release()
            if ws.state is not State.CLOSED:
                ws.transport.abort()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.wait_closed(), 5.0)
        return session.established

    async def _heartbeat(self, session: Session) -> None:
        try:
            while True:
                await asyncio.sleep(self._heartbeat_interval)
                if session.missed_heartbeats >= self._max_missed:
                    log.warning("%d heartbeats unanswered; reconnecting", self._max_missed)
                    session.abort()
                    return
                session.missed_heartbeats += 1
                await self._send(session, {"action": ActionName.HEARTBEAT})
        except SessionLost:
            pass

    # -- incoming frames ------------------------------------------------------------------
    async def _on_established(self, session: Session, data: Mapping[str, Any]) -> None:
        self._dispatch(st.connection_established(data))
        session.established = True
        self._session = session
        self._check_predicates()
        self._baseline()
        self._emit("connected", data)
        for fut in self._connected_waiters:
            if not fut.done():
                fut.set_result(None)
        self._connected_waiters.clear()
        self._kick_receipts(session)
        await self._request_sync(session)

    def _baseline(self) -> None:
        """Fix where each newly seen conversation starts (``history=False``: now)."""
        for cid, conv in self._state["conversations"]["byId"].items():
            if cid in self._baselined or not conv["active"]:
                continue
            self._baselined.add(cid)
            if not self._history and conv["last_seq"] > conv["synced_seq"]:
                self._dispatch(st.history_skipped(cid, conv["last_seq"]))

    async def _handle(self, session: Session, frame: Mapping[str, Any]) -> None:
        self._emit("frame", frame)
        kind = frame.get("type")
        if kind == EventName.CHAT_MESSAGE:
            await self._on_chat_message(session, frame["message"])
        elif kind == EventName.HEARTBEAT_ACK:
            session.missed_heartbeats = 0
        elif kind == EventName.SYNC_COMPLETE:
            await self._on_sync_complete(session, frame.get("data") or {})
        elif kind in (EventName.MESSAGES_READ, EventName.MESSAGES_DELIVERED):
            data = frame["data"]
            receipt: st.ReceiptKind = "read" if kind == EventName.MESSAGES_READ else "delivered"
            self._dispatch(st.receipt_received(receipt, data))
            self._emit(receipt, data)
            conv = self._state["conversations"]["byId"].get(str(data["conversation_id"]))
            if conv is not None and conv["member_ids"] is None:
                self._want_members(conv["id"])
        elif kind == EventName.TYPING_INDICATOR:
            self._dispatch(st.typing_received(frame["data"]))
            self._emit("typing", frame["data"])
        elif kind in _CHANGE_EVENTS:
            await self._on_change_event(session, _CHANGE_EVENTS[kind], frame.get("data") or {})
        elif kind == EventName.PRESENCE:
            self._dispatch(st.presence_updated(frame["data"]))
            self._emit("presence", frame["data"])
        elif kind in (EventName.CONVERSATION_CREATED, EventName.CONVERSATION_UPDATED):
            self._dispatch(st.conversation_updated(frame["data"]))
            self._baseline()
            self._emit("conversation", frame["data"])
            if st.gaps(self._state):
                await self._request_sync(session)
        else:
            self._route(session, frame)
        if self._pending_delivered or self._pending_read:
            self._kick_receipts(session)

    async def _on_change_event(self, session: Session, kind: str, data: Mapping[str, Any]) -> None:
        rid = data.get("request_id")
        rid = str(rid) if rid is not None else None
        if rid is not None and self._outbox.is_queued(rid):
            await self._outbox.forget(rid)  # off the disk first, as for a message's ack
        before = self._state
        self._dispatch({"type": kind, "payload": data})
        if rid is not None:
            self._outbox.acked(session, rid)
        mid = (data.get("message") or {}).get("id") if "message" in data else None
        mid = str(mid if mid is not None else data.get("message_id"))
        rec = st.find_message(self._state, mid)
        if rec is not None and rec is not st.find_message(before, mid):
            self._emit("message_updated", rec)
        conv = self._state["conversations"]["byId"].get(str(data["conversation_id"]))
        if conv is not None and conv["synced_seq"] < conv["last_seq"]:
            self._caught_up = False
            await self._request_sync(session)

    def _route(self, session: Session, frame: Mapping[str, Any]) -> None:
        """Errors: to the send waiting for them, else to ``"error"`` listeners."""
        if frame.get("type") != EventName.ERROR:
            return
        error = frame.get("error") or {}
        lid = error.get("local_id")
        if lid is not None and self._outbox.error(session, str(lid), error):
            return
        request_id = str(error.get("request_id") or "")
        if request_id and self._outbox.error(session, request_id, error):
            return  # a queued change's refusal
        code = error.get("code")
        # A cursor the server refuses (FORBIDDEN, NOT_FOUND) still ends in sync.complete;
        # any other error ends the sync request without one.
        refused_cursor = code in (ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND)
        if request_id.startswith("sync-") and session.sync_in_flight and not refused_cursor:
            session.sync_in_flight = False
            session.sync_again = False
            if code in (ErrorCode.RATE_LIMITED, ErrorCode.MESSAGE_FAILED):
                delay = max(self._retry_delay, float(error.get("retry_after_ms") or 0) / 1000)
                session.spawn(self._sync_later(session, delay), "parley-sync-retry")
        self._emit("error", error)

    async def _sync_later(self, session: Session, delay: float) -> None:
        await asyncio.sleep(delay)
        with contextlib.suppress(SessionLost):
            await self._request_sync(session)

    async def _on_chat_message(self, session: Session, message: Mapping[str, Any]) -> None:
        lid = message.get("local_id")
        lid = str(lid) if lid is not None else None
        cid = str(message["conversation_id"])
        if cid not in self._baselined:
            # A conversation first seen through one of its messages.
            self._baselined.add(cid)
            if not self._history:
                self._dispatch(st.history_skipped(cid, int(message["seq"]) - 1))
        if lid is not None and self._outbox.is_queued(lid):
            # The ack: the entry leaves the disk first, so that whatever the state no
            # longer holds as queued is gone from the file too.
            await self._outbox.forget(lid)
        self._dispatch(st.message_received(message))
        if lid is not None:
            await self._outbox.rekey(lid, str(message["id"]))
            self._outbox.acked(session, lid)
        conv = self._state["conversations"]["byId"][cid]
        if conv["synced_seq"] < conv["last_seq"]:
            self._caught_up = False
            await self._request_sync(session)

    async def _request_sync(self, session: Session) -> None:
        if session.sync_in_flight:
            session.sync_again = True
            return
        cursors = st.sync_cursors(self._state)
        last = {c: v["last_seq"] for c, v in self._state["conversations"]["byId"].items()}
        session.sync_in_flight = True
        session.sync_again = False
        session.sync_sent = (cursors, last)
        session.sync_count += 1
        self.stats["syncs"] += 1
        await self._send(
            session,
            {
                "action": ActionName.SYNC,
                "cursors": cursors,
                "request_id": f"sync-{session.sync_count}",
            },
        )

    async def _on_sync_complete(self, session: Session, data: Mapping[str, Any]) -> None:
        self._dispatch(st.sync_completed(data))
        session.sync_in_flight = False
        again, session.sync_again = session.sync_again, False
        has_more = any(
            (v or {}).get("has_more") for v in (data.get("conversations") or {}).values()
        )
        self._baseline()
        if has_more or again or st.gaps(self._state):
            before_cursors, before_last = session.sync_sent or ({}, {})
            after_last = {c: v["last_seq"] for c, v in self._state["conversations"]["byId"].items()}
            if st.sync_cursors(self._state) != before_cursors or after_last != before_last:
                await self._request_sync(session)
                return
            # The server announced messages that sync does not return: do not spin.
            log.warning("sync made no progress; gaps remain: %s", st.gaps(self._state))
            self._emit(
                "local_error",
                {"code": LocalErrorCode.SYNC_STALLED, "message": "sync made no progress"},
            )
            return
        self._caught_up = True
        self._emit("synced", {})
        self._check_predicates()

    def _want_members(self, cid: str) -> None:
        """Fetch a conversation's members (REST), needed to turn receipts into statuses.

        Only conversations seen in ``connection.established`` alone lack them, and only
        once a receipt arrives for them; a failed fetch is tried again on a later one.
        """
        if cid in self._member_fetches or self._token is None:
            return
        self._member_fetches.add(cid)
        self._events.track(asyncio.ensure_future(self._fetch_members(cid, self._token)))

    async def _fetch_members(self, cid: str, token: str) -> None:
        url = f"{http_base(self.url)}/api/conversations/{urllib.parse.quote(cid, safe='')}"
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(None, get_json, url, token, self._open_timeout)
        except (OSError, ValueError) as exc:
            log.info("could not fetch conversation %s: %s", cid, exc)
            self._member_fetches.discard(cid)
            return
        if isinstance(data, dict) and str(data.get("id")) == cid:
            self._dispatch(st.conversation_updated(data))

    def _kick_receipts(self, session: Session) -> None:
        """Send pending receipts now, then at most every ``receipt_interval`` s.

        Receipts are cursors on the server, so a batch stands for every earlier message:
        coalescing them loses nothing and keeps a busy conversation under rate limits.
        """
        if session.receipts is None or session.receipts.done():
            session.receipts = session.spawn(self._receipt_flusher(session), "parley-receipts")

    async def _receipt_flusher(self, session: Session) -> None:
        try:
            while self._pending_delivered or self._pending_read:
                await self._flush_receipts(session)
                await asyncio.sleep(self._receipt_interval)
        except SessionLost:
            pass

    async def _flush_receipts(self, session: Session) -> None:
        for action, pending in (
            (ActionName.MARK_DELIVERED, self._pending_delivered),
            (ActionName.MARK_READ, self._pending_read),
        ):
            while pending:
                cid, queued = next(iter(pending.items()))
                if action == ActionName.MARK_DELIVERED:
                    # These ids come in seq order and the server keeps receipts as
                    # cursors: the newest stand for all before them; one frame is enough.
                    taken, ids = len(queued), receipt_batch(queued)
                else:  # the application's ids, in its order: all of them, in chunks
                    taken = min(len(queued), RECEIPT_BATCH)
                    ids = queued[:taken]
                await self._send(
                    session, {"action": action, "conversation_id": cid, "message_ids": ids}
                )
                # Lists only grow at the end, also while the frame was being sent.
                rest = pending[cid][taken:]
                if rest:
                    pending[cid] = rest
                else:
                    del pending[cid]


_CHANGE_EVENTS: dict[str, str] = {
    EventName.MESSAGE_UPDATED: st.MESSAGE_UPDATED,
    EventName.MESSAGE_DELETED: st.MESSAGE_DELETED,
    EventName.REACTION_ADDED: st.REACTION_ADDED,
    EventName.REACTION_REMOVED: st.REACTION_REMOVED,
}


def new_request_id() -> str:
    """A fresh ``request_id`` for a change: its key in the offline queue."""
    return f"pyc_{uuid.uuid4().hex}"


def new_local_id() -> str:
    """A fresh ``local_id``: never all digits, so never mistaken for a server id."""
    return f"py_{uuid.uuid4().hex}"
