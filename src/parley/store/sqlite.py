"""SQLite backend of ``Store``: one writer thread doing group commit, readers in a pool.

Every write goes through a single writer thread that takes all queued operations,
runs them in one transaction and commits once (one fsync for the whole batch in WAL
mode with ``synchronous=FULL``), then resolves their futures on the event loop with one
call. Readers use their own connections (WAL lets them run beside the writer).

Commit delay (``commit_delay``, PostgreSQL's ``commit_delay``/``commit_siblings`` idea):
while messages of more than one sender are arriving (two senders within
``_SIBLING_WINDOW``), the writer waits ``commit_delay`` after the first queued operation
so the others join the same commit. Each commit writes every page it touched and
fsyncs once, so fewer, larger commits cost far fewer system calls per message. A lone
sender (one message in flight, waiting for its ack) never waits.

Rule for the writer's operations: an operation raises ``StoreError`` only *before* it
writes anything, so a refused request never leaves half its rows in the batch. Any other
exception in an operation rolls the batch back, drops the writer's caches and runs the
batch again without that operation, which alone fails (poison isolation); a failing
COMMIT fails the whole batch. The single writer is what serialises appends and
membership changes (``parley.store.base``, "The transaction rule").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from parley.store.base import (
    CONVERSATION_NOT_FOUND,
    DIRECT_IS_TWO,
    MEMBERSHIP_NOT_FOUND,
    MESSAGE_DELETED,
    MESSAGE_NOT_FOUND,
    NOT_MEMBER,
    REPLY_NOT_FOUND,
    USER_DEACTIVATED,
    AttachmentRecord,
    ChangeEmit,
    Conversation,
    ConversationKind,
    ConversationState,
    ConversationSummary,
    Cursor,
    DeactivatedError,
    EntryKind,
    ForbiddenError,
    LimitError,
    LogEntry,
    MembershipEmit,
    MessageEmit,
    MessageRecord,
    NewMessage,
    NotFoundError,
    OutboxEvent,
    OutboxRow,
    ReceiptKind,
    SearchQuery,
    SearchTerm,
    StoreError,
    UserState,
    attachment_not_found,
    attachment_unusable,
    edited,
    row_id,
    tombstone,
    too_many_members,
    too_many_reactions,
    with_reaction,
    without_reaction,
)

T = TypeVar("T")

# (version, script). Versions are applied in ascending order, each once; a script's
# statements are split where ``sqlite3.complete_statement`` says one ends (so a
# trigger's BEGIN … END body stays whole).
MIGRATIONS: list[tuple[int, str]] = [
    # 1: initial schema
    (
        1,
        """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        active INTEGER NOT NULL DEFAULT 1
    );
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        title TEXT,
        created_at REAL NOT NULL,
        last_seq INTEGER NOT NULL DEFAULT 0,
        last_activity REAL NOT NULL,
        direct_key TEXT UNIQUE
    );
    CREATE TABLE members (
        conversation_id INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        read_seq INTEGER NOT NULL DEFAULT 0,
        delivered_seq INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (conversation_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX members_by_user ON members (user_id, conversation_id);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        sender_id TEXT NOT NULL,
        local_id TEXT NOT NULL,
        content TEXT NOT NULL,
        sent_at REAL NOT NULL,
        reply_to INTEGER,
        has_attachments INTEGER NOT NULL DEFAULT 0,
        UNIQUE (conversation_id, seq),
        UNIQUE (sender_id, local_id)
    );
    CREATE TABLE attachments (
        id TEXT PRIMARY KEY,
        message_id INTEGER,
        type TEXT NOT NULL,
        filename TEXT NOT NULL,
        size INTEGER NOT NULL,
        content_type TEXT NOT NULL,
        uploader_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        data BLOB NOT NULL
    );
    CREATE INDEX attachments_by_message ON attachments (message_id);
    """,
    ),
    # 2: a conversation's last seq and activity are read off its newest message
    (
        2,
        """
    ALTER TABLE conversations DROP COLUMN last_seq;
    ALTER TABLE conversations DROP COLUMN last_activity;
    """,
    ),
    # 3: group owners, join order, the creator, cursors kept across leave and re-join.
    # A direct conversation that ever had other than two members becomes a group; a
    # group's first member (by user id) becomes its owner.
    (
        3,
        """
    ALTER TABLE conversations ADD COLUMN creator_id TEXT;
    ALTER TABLE members ADD COLUMN joined_at REAL NOT NULL DEFAULT 0;
    ALTER TABLE members ADD COLUMN owner_since REAL;
    CREATE TABLE past_cursors (
        conversation_id INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        read_seq INTEGER NOT NULL,
        delivered_seq INTEGER NOT NULL,
        PRIMARY KEY (conversation_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX conversations_by_creator ON conversations (creator_id, created_at);
    UPDATE conversations SET kind = 'group', direct_key = NULL WHERE kind = 'direct'
        AND (SELECT count(*) FROM members m WHERE m.conversation_id = conversations.id) != 2;
    UPDATE members SET owner_since = 0 WHERE (conversation_id, user_id) IN
        (SELECT m.conversation_id, min(m.user_id) FROM members m
         JOIN conversations c ON c.id = m.conversation_id
         WHERE c.kind = 'group' GROUP BY m.conversation_id);
    """,
    ),
    # 4: changes to messages are log entries sharing the conversation's seq; messages
    # keep their current state (edited, deleted, mentions) and their reactions.
    (
        4,
        """
    ALTER TABLE messages ADD COLUMN mentions TEXT;
    ALTER TABLE messages ADD COLUMN edited_at REAL;
    ALTER TABLE messages ADD COLUMN deleted_at REAL;
    ALTER TABLE messages ADD COLUMN changed_seq INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE log_entries (
        conversation_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        message_id INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        emoji TEXT,
        at REAL NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE reactions (
        message_id INTEGER NOT NULL,
        emoji TEXT NOT NULL,
        user_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (message_id, emoji, user_id)
    ) WITHOUT ROWID;
    """,
    ),
    # 5: the webhook outbox (docs/webhooks.md). Leases live in the store object: SQLite
    # serves one node, so a restarted process owns every event again.
    (
        5,
        """
    CREATE TABLE webhook_outbox (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        data BLOB NOT NULL,
        stamped INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL
    );
    CREATE INDEX webhook_outbox_by_conversation ON webhook_outbox (conversation_id, position);
    CREATE INDEX webhook_outbox_unstamped ON webhook_outbox (position) WHERE stamped = 0;
    """,
    ),
    # 6: full-text search over the current content of every message (docs/protocol.md,
    # "Search"). An external-content FTS5 index kept in step with the messages table by
    # triggers, so an edit (an UPDATE of content) re-indexes the message and a deletion
    # that blanks it leaves nothing to find; existing messages are indexed here.
    (
        6,
        """
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        content, content='messages', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content)
            VALUES ('delete', old.id, old.content);
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content)
            VALUES ('delete', old.id, old.content);
        INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
    END;
    INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');
    """,
    ),
    # 7: new messages are indexed by the writer with one statement per write batch
    # (``_index_new``), not by a trigger per row: a trigger's FTS5 insert cost about
    # 22 µs a message, the batch statement about 4 (docs/production.md, Capacity).
    # Edits and deletions still re-index through the update trigger.
    (
        7,
        """
    DROP TRIGGER IF EXISTS messages_fts_insert;
    """,
    ),
    # 8: the writer indexes new messages in larger groups, up to a second after their
    # commit (``_index_new``): an FTS5 insert of 1,000 rows costs a third per row of one
    # of 20. ``search_indexed.upto`` is the highest message id in the index, so a start
    # after a crash indexes what the last run left out, and the triggers leave rows above
    # it alone (the update trigger is made at every start: ``_erase_deleted_words``).
    # Every row is indexed at this point (migration 7 indexed in the insert's transaction).
    (
        8,
        """
    CREATE TABLE search_indexed (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        upto INTEGER NOT NULL
    );
    INSERT INTO search_indexed (id, upto) SELECT 1, coalesce(max(id), 0) FROM messages;
    DROP TRIGGER IF EXISTS messages_fts_delete;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
    WHEN old.id <= (SELECT upto FROM search_indexed WHERE id = 1) BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content)
            VALUES ('delete', old.id, old.content);
    END;
    """,
    ),
]

_MESSAGE_COLUMNS = (
    "id, conversation_id, seq, sender_id, local_id, content, sent_at, reply_to, has_attachments,"
    " mentions, edited_at, deleted_at, changed_seq"
)
_ATTACHMENT_COLUMNS = "id, type, filename, size, content_type, uploader_id, created_at"
# A conversation's last seq and activity are read off its newest message (the
# (conversation_id, seq) index makes that one lookup), so an append writes only the
# message row: no per-batch UPDATE of every conversation it touched.
# Messages and changes share one sequence: the last seq is the larger of the two tails.
_LAST_SEQ = (
    "max(coalesce((SELECT max(seq) FROM messages WHERE conversation_id = c.id), 0),"
    " coalesce((SELECT max(seq) FROM log_entries WHERE conversation_id = c.id), 0))"
)
_LAST_ACTIVITY = (
    "coalesce((SELECT sent_at FROM messages WHERE conversation_id = c.id"
    " ORDER BY seq DESC LIMIT 1), c.created_at)"
)
# Unread messages of member row ``m`` (from others, after its read cursor, not deleted),
# and those of them that mention the user; the (conversation_id, seq) index bounds each
# count to the unread tail.
_UNREAD = (
    "(SELECT count(*) FROM messages u WHERE u.conversation_id = m.conversation_id"
    " AND u.seq > m.read_seq AND u.sender_id != m.user_id AND u.deleted_at IS NULL)"
)
_MENTIONED = (
    "(SELECT count(*) FROM messages u WHERE u.conversation_id = m.conversation_id"
    " AND u.seq > m.read_seq AND u.sender_id != m.user_id AND u.deleted_at IS NULL"
    " AND u.mentions IS NOT NULL"
    " AND EXISTS (SELECT 1 FROM json_each(u.mentions) j WHERE j.value = m.user_id))"
)
_CACHE_LIMIT = 20_000
_INDEX_ROWS = 2_000  # new messages indexed at once, at most …
_INDEX_DELAY = 1.0  # … and at least once a second (a search indexes at once)
_BATCH_MAX = 1024
_STOP = object()
_SIBLING_WINDOW = 0.01  # seconds: two senders this close together → others are active


@dataclass(slots=True)
class _ConvState:
    last_seq: int
    members: set[str]
    kind: str


@dataclass(slots=True)
class _Op:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    source: str | None = None  # who asked (a sender id): drives the commit delay


class _Siblings:
    """Whether several senders are active: two different ones seen within ``window``."""

    __slots__ = ("last_pair", "last_seen", "last_source", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.last_source: str | None = None
        self.last_seen = self.last_pair = -1.0  # monotonic times

    def see(self, source: str | None, now: float) -> bool:
        """Note an operation of ``source`` (None: not a sender's); True if others are
        sending too, so a commit should wait for them."""
        if source is None:
            return False
        if source != self.last_source and now - self.last_seen < self.window:
            self.last_pair = now
        self.last_source, self.last_seen = source, now
        return now - self.last_pair < self.window


@dataclass(slots=True)
class _WriterState:
    conv: dict[int, _ConvState] = field(default_factory=dict)
    # ids of committed (or this transaction's) messages not yet in the search index, in
    # insert order, and when the first of them was added (monotonic seconds)
    unindexed: list[int] = field(default_factory=list)
    unindexed_since: float = 0.0
    # user id -> deactivated? The writer is the only one that changes it
    # (_op_set_user_active), as it is for ``conv``; dropped with ``conv`` on a rollback.
    deactivated: dict[str, bool] = field(default_factory=dict)
    # this transaction blanked indexed words that only an FTS5 ``optimize`` takes out of
    # the file (SQLite older than 3.44: ``_erase_deleted_words``)
    erase_words: bool = False


def _index_new(conn: sqlite3.Connection, state: _WriterState) -> None:
    """Add the messages not yet in the search index to it, in one statement, and move
    ``search_indexed.upto``. Runs inside the writer's transaction: when the index is due
    (``_index_due``), before a search (``_op_flush_index``), and before anything that
    re-indexes a message (the update trigger's FTS5 ``delete`` needs the row indexed)."""
    ids = state.unindexed
    if not ids:
        return
    state.unindexed = []
    low, high = min(ids), max(ids)
    if high - low + 1 == len(ids):  # the usual case: one writer, consecutive row ids
        conn.execute(
            "INSERT INTO messages_fts (rowid, content)"
            " SELECT id, content FROM messages WHERE id BETWEEN ? AND ?",
            (low, high),
        )
    else:
        conn.execute(
            "INSERT INTO messages_fts (rowid, content) SELECT id, content FROM messages"
            " WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(ids),),
        )
    conn.execute("UPDATE search_indexed SET upto = max(upto, ?) WHERE id = 1", (high,))


def _index_due(state: _WriterState, now: float, delay: float) -> float | None:
    """Seconds until the pending messages must be indexed (0: now); None: none pending."""
    if not state.unindexed:
        return None
    if len(state.unindexed) >= _INDEX_ROWS:
        return 0.0
    return max(0.0, state.unindexed_since + delay - now)


def _op_flush_index(conn: sqlite3.Connection, state: _WriterState) -> None:
    """Index everything committed so far (a search reads its own writes)."""
    _index_new(conn, state)


def _index_pending(conn: sqlite3.Connection, state: _WriterState) -> None:
    """Index the pending messages in a transaction of their own. On failure they stay
    pending (the next batch or start-up indexes them)."""
    unindexed, kept = state.unindexed, len(state.unindexed)
    try:
        conn.execute("BEGIN IMMEDIATE")
        _index_new(conn, state)
        conn.execute("COMMIT")
    except sqlite3.Error:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        del unindexed[kept:]  # ``_index_new`` replaces the list, never empties it
        state.unindexed, state.unindexed_since = unindexed, time.monotonic()


def _index_leftovers(conn: sqlite3.Connection) -> None:
    """At start-up: index the messages that a crash left out of the index."""
    (upto,) = conn.execute("SELECT upto FROM search_indexed WHERE id = 1").fetchone()
    (top,) = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()
    if top > upto:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO messages_fts (rowid, content)"
            " SELECT id, content FROM messages WHERE id > ?",
            (upto,),
        )
        conn.execute("UPDATE search_indexed SET upto = ? WHERE id = 1", (top,))
        conn.execute("COMMIT")


def _connect(path: str, uri: bool, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, uri=uri, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=OFF")
    return conn


class SQLiteStore:
    """``Store`` on one SQLite file. See the module docstring for the threading model."""

    _mem_counter = itertools.count(1)

    def __init__(self, path: str, *, synchronous: str = "FULL", commit_delay: float = 0.0) -> None:
        synchronous = synchronous.upper()
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"bad synchronous setting {synchronous!r}")
        self._uri = False
        if path in (":memory:", ""):
            path = f"file:parley-mem-{next(self._mem_counter)}-{id(self)}?mode=memory&cache=shared"
            self._uri = True
        else:
            Path(path).resolve().parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.synchronous = synchronous
        self.commit_delay = max(0.0, commit_delay)
        self.sibling_window = _SIBLING_WINDOW
        self.index_delay = _INDEX_DELAY  # seconds a new message may wait for the index
        self._queue: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._keepalive: sqlite3.Connection | None = None  # keeps a memory DB alive
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self._closed = False
        # Webhook outbox leases; touched on the writer thread only. In
        # memory: one SQLite file serves one node (transaction rule 6).
        self._leases: dict[int, tuple[float, object]] = {}  # {position: (until, claim)}
        self.batches = 0  # committed write batches (for metrics)
        self.index_rewrites = 0  # FTS5 optimize runs for deletions (SQLite < 3.44)
        self.write_error: str | None = None  # why the last write batch failed, until one commits
        self.batched_ops = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._uri:
            self._keepalive = sqlite3.connect(self.path, uri=True, check_same_thread=False)
        ready: asyncio.Future[None] = self._loop.create_future()
        self._writer = threading.Thread(
            target=self._writer_main, args=(ready,), name="parley-sqlite-writer", daemon=True
        )
        self._writer.start()
        await ready
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="parley-sqlite-reader")
        if not self._uri:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_main, name="parley-sqlite-checkpoint", daemon=True
            )
            self._checkpointer.start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        if self._writer is not None:
            self._queue.put(_STOP)
            await loop.run_in_executor(None, self._writer.join)
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            await loop.run_in_executor(None, self._checkpointer.join)
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()
        if self._keepalive is not None:
            self._keepalive.close()

    async def ping(self) -> None:
        if self._closed or self._writer is None or not self._writer.is_alive():
            raise RuntimeError("SQLite writer is not running")
        await self._read(lambda c: c.execute("SELECT 1").fetchone())
        if self.write_error is not None:  # writes were failing: does one succeed now?
            await self._submit(_op_probe_write)

    # ------------------------------------------------------------------ plumbing
    def _submit(
        self, fn: Callable[..., T], *args: Any, source: str | None = None
    ) -> asyncio.Future[T]:
        """Queue a write operation for the writer thread (synchronously, keeping order)."""
        assert self._loop is not None, "store not started"
        future: asyncio.Future[T] = self._loop.create_future()
        if self._closed:
            future.set_exception(RuntimeError("store is closed"))
            return future
        self._queue.put(_Op(fn, args, future, source))
        return future

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        assert self._loop is not None and self._readers is not None, "store not started"
        return await self._loop.run_in_executor(self._readers, self._run_read, fn)

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, self._uri, self.synchronous)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            self._reader_conns.append(conn)
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    def _writer_main(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = _connect(self.path, self._uri, self.synchronous)
            # A deleted message's content and attachment bytes are overwritten on disk,
            # not only unlinked (docs/protocol.md, "Edits, deletions and reactions").
            conn.execute("PRAGMA secure_delete=ON")
            _migrate(conn)
            _erase_deleted_words(conn)
            _index_leftovers(conn)
            if not self._uri:  # checkpoints run beside the writer, never inside a commit
                conn.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException as exc:  # report start-up failure to start()
            loop.call_soon_threadsafe(ready.set_exception, exc)
            return
        loop.call_soon_threadsafe(ready.set_result, None)
        state = _WriterState()
        stopping = False
        delay = self.commit_delay
        siblings = _Siblings(self.sibling_window)
        while not stopping:
            due = _index_due(state, time.monotonic(), self.index_delay)
            try:
                item = self._queue.get() if due is None else self._queue.get(timeout=due)
            except queue.Empty:  # idle, and the pending messages are due for the index
                _index_pending(conn, state)
                continue
            batch: list[_Op] = []
            if item is _STOP:
                stopping = True
            else:
                batch.append(item)  # type: ignore[arg-type]
            if delay and batch and siblings.see(batch[0].source, time.monotonic()):
                time.sleep(delay)  # others are sending: let them join this commit
            while len(batch) < _BATCH_MAX:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    continue
                batch.append(item)  # type: ignore[arg-type]
            if delay and len(batch) > 1:
                now = time.monotonic()
                for op in batch[1:]:
                    siblings.see(op.source, now)
            if batch:
                results = self._run_batch(conn, state, batch)
                loop.call_soon_threadsafe(_resolve, results)
        _index_pending(conn, state)  # what is pending goes into the index before exit
        conn.close()

    def _checkpoint_main(self) -> None:
        """Copy the WAL back into the database every second (PASSIVE: never blocks the
        writer), so a commit never pays for a checkpoint; a last full one at close."""
        conn = _connect(self.path, self._uri, self.synchronous)
        try:
            while not self._stop_checkpoints.wait(1.0):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # busy or locked: try again next second
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def _run_batch(
        self, conn: sqlite3.Connection, state: _WriterState, batch: list[_Op]
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        """Run ``batch`` in one transaction. An operation that fails with anything but a
        ``StoreError`` (a value SQLite cannot take) is taken out and the rest run again
        in a new transaction, so it fails alone (poison isolation); a failing COMMIT
        fails the whole batch."""
        done: dict[int, tuple[Any, BaseException | None]] = {}
        todo = batch
        while todo:
            results: list[tuple[_Op, Any, BaseException | None]] = []
            poison: tuple[_Op, Exception] | None = None
            # A rollback keeps what was pending before it: the batch only appends to
            # this list, and ``_index_new`` replaces it rather than emptying it.
            unindexed, kept, since = state.unindexed, len(state.unindexed), state.unindexed_since
            try:
                conn.execute("BEGIN IMMEDIATE")
                for op in todo:
                    try:
                        results.append((op, op.fn(conn, state, *op.args), None))
                    except StoreError as exc:
                        results.append((op, None, exc))
                    except sqlite3.OperationalError:
                        raise  # the database itself fails (disk full, I/O): the whole batch
                    except Exception as exc:
                        poison = (op, exc)
                        raise
                if not kept and state.unindexed:
                    state.unindexed_since = time.monotonic()
                if _index_due(state, time.monotonic(), self.index_delay) == 0.0:
                    _index_new(conn, state)
                if state.erase_words:
                    conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('optimize')")
                    state.erase_words = False
                    self.index_rewrites += 1
                conn.execute("COMMIT")
            except Exception as exc:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                del unindexed[kept:]
                state.unindexed, state.unindexed_since = unindexed, since
                state.conv.clear()
                state.deactivated.clear()
                state.erase_words = False
                if poison is None:  # a storage failure: nothing of the batch is kept
                    failure = RuntimeError(f"storage failure: {exc}")
                    self.write_error = str(failure)
                    for op in todo:
                        done[id(op)] = (None, failure)
                    break
                bad, error = poison
                done[id(bad)] = (None, RuntimeError(f"storage failure: {error!r}"))
                todo = [op for op in todo if op is not bad]
                continue
            for op, value, error_ in results:
                done[id(op)] = (value, error_)
            self.write_error = None
            self.batches += 1
            self.batched_ops += len(todo)
            break
        return [(op.future, *done[id(op)]) for op in batch]

    # ------------------------------------------------------------------ writer helpers
    @staticmethod
    def _conv_state(conn: sqlite3.Connection, state: _WriterState, conv_id: int) -> _ConvState:
        cs = state.conv.get(conv_id)
        if cs is not None:
            return cs
        row = conn.execute(
            f"SELECT {_LAST_SEQ}, kind FROM conversations c WHERE id = ?", (conv_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(CONVERSATION_NOT_FOUND)
        members = {
            r[0]
            for r in conn.execute(
                "SELECT user_id FROM members WHERE conversation_id = ?", (conv_id,)
            )
        }
        cs = _ConvState(last_seq=row[0], members=members, kind=row[1])
        if len(state.conv) >= _CACHE_LIMIT:
            for key in list(state.conv)[: _CACHE_LIMIT // 2]:
                del state.conv[key]
        state.conv[conv_id] = cs
        return cs

    # ------------------------------------------------------------------ users
    async def set_user_active(self, user_id: str, active: bool) -> None:
        await self._submit(_op_set_user_active, user_id, active)

    async def is_user_active(self, user_id: str) -> bool:
        row = await self._read(
            lambda c: c.execute("SELECT active FROM users WHERE id = ?", (user_id,)).fetchone()
        )
        return row is None or bool(row[0])

    async def users_state(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        ids = list(dict.fromkeys(user_ids))
        rows = await self._read(
            lambda c: c.execute(
                "SELECT q.value, coalesce(u.active, 1), m.conversation_id"
                " FROM json_each(?) q LEFT JOIN users u ON u.id = q.value"
                " LEFT JOIN members m ON m.user_id = q.value ORDER BY m.conversation_id",
                (json.dumps(ids),),
            ).fetchall()
        )
        convs: dict[str, list[str]] = {user: [] for user in ids}
        active: dict[str, bool] = {}
        for user, flag, cid in rows:
            active[user] = bool(flag)
            if cid is not None:
                convs[user].append(str(cid))
        return {user: UserState(active.get(user, True), convs[user]) for user in ids}

    # ------------------------------------------------------------------ conversations
    async def create_conversation(
        self,
        member_ids: Sequence[str],
        *,
        kind: ConversationKind,
        title: str | None,
        created_at: float,
        creator_id: str,
        emit: MembershipEmit | None = None,
    ) -> tuple[Conversation, bool]:
        members = sorted(set(member_ids))
        if kind == "direct" and len(members) != 2:
            raise ValueError(DIRECT_IS_TWO)
        return await self._submit(
            self._op_create, members, kind, title, created_at, creator_id, emit
        )

    def _op_create(
        self,
        conn: sqlite3.Connection,
        state: _WriterState,
        members: list[str],
        kind: ConversationKind,
        title: str | None,
        created_at: float,
        creator_id: str,
        emit: MembershipEmit | None,
    ) -> tuple[Conversation, bool]:
        direct_key = "\x00".join(members) if kind == "direct" else None
        if direct_key is not None:
            row = conn.execute(
                "SELECT id FROM conversations WHERE direct_key = ?", (direct_key,)
            ).fetchone()
            if row is not None:
                return _load_conversation(conn, row[0]), False
        cur = conn.execute(
            "INSERT INTO conversations (kind, title, created_at, direct_key, creator_id)"
            " VALUES (?, ?, ?, ?, ?)",
            (kind, title, created_at, direct_key, creator_id),
        )
        conv_id = cur.lastrowid
        assert conv_id is not None
        owners = [creator_id] if kind == "group" and creator_id in members else []
        conn.executemany(
            "INSERT INTO members (conversation_id, user_id, joined_at, owner_since)"
            " VALUES (?, ?, ?, ?)",
            [(conv_id, m, created_at, created_at if m in owners else None) for m in members],
        )
        state.conv[conv_id] = _ConvState(0, set(members), kind)
        conv = Conversation(str(conv_id), kind, title, members, created_at, 0, owners)
        if emit is not None:
            _insert_events(conn, emit(conv, members))
        return conv, True

    async def conversations_created_since(self, user_id: str, since: float) -> int:
        row = await self._read(
            lambda c: c.execute(
                "SELECT count(*) FROM conversations WHERE creator_id = ? AND created_at >= ?",
                (user_id, since),
            ).fetchone()
        )
        return int(row[0])

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        cid = row_id(conversation_id)
        if cid is None:
            return None

        def read(c: sqlite3.Connection) -> Conversation | None:
            try:
                return _load_conversation(c, cid)
            except NotFoundError:
                return None

        return await self._read(read)

    async def list_conversations(self, user_id: str) -> list[ConversationSummary]:
        def read(c: sqlite3.Connection) -> list[ConversationSummary]:
            # One query for every conversation (members, owners, counts, the newest
            # message's id), then one for those messages: no query per conversation.
            rows = c.execute(
                "SELECT c.id, c.kind, c.title, c.created_at, "
                f"{_LAST_SEQ}, m.read_seq, {_UNREAD}, {_MENTIONED},"
                " (SELECT json_group_array(user_id) FROM (SELECT user_id FROM members"
                "  WHERE conversation_id = c.id ORDER BY user_id)),"
                " (SELECT json_group_array(user_id) FROM (SELECT user_id FROM members"
                "  WHERE conversation_id = c.id AND owner_since IS NOT NULL"
                "  ORDER BY owner_since, user_id)),"
                " (SELECT id FROM messages WHERE conversation_id = c.id"
                "  ORDER BY seq DESC LIMIT 1)"
                " FROM members m JOIN conversations c ON c.id = m.conversation_id"
                " WHERE m.user_id = ?"
                f" ORDER BY {_LAST_ACTIVITY} DESC, c.id DESC",
                (user_id,),
            ).fetchall()
            last_ids = [r[10] for r in rows if r[10] is not None]
            marks = ",".join("?" * len(last_ids))
            found = (
                c.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id IN ({marks})", last_ids
                ).fetchall()
                if last_ids
                else []
            )
            last = {int(m.id): m for m in _messages(c, found)}
            return [
                ConversationSummary(
                    Conversation(
                        str(cid),
                        kind,
                        title,
                        json.loads(members),
                        created_at,
                        last_seq,
                        json.loads(owners),
                    ),
                    last.get(last_id) if last_id is not None else None,
                    unread,
                    read_seq,
                    mentioned,
                )
                for (
                    cid,
                    kind,
                    title,
                    created_at,
                    last_seq,
                    read_seq,
                    unread,
                    mentioned,
                    members,
                    owners,
                    last_id,
                ) in rows
            ]

        return await self._read(read)

    async def user_conversations(self, user_id: str) -> dict[str, int]:
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT c.id, {_LAST_SEQ} FROM members m JOIN conversations c"
                " ON c.id = m.conversation_id WHERE m.user_id = ? ORDER BY c.id",
                (user_id,),
            ).fetchall()
        )
        return {str(cid): seq for cid, seq in rows}

    async def add_members(
        self,
        conversation_id: str,
        user_ids: Sequence[str],
        *,
        max_members: int,
        emit: MembershipEmit | None = None,
    ) -> Conversation:
        cid = row_id(conversation_id)
        if cid is None:
            raise NotFoundError(CONVERSATION_NOT_FOUND)
        return await self._submit(
            self._op_add_members, cid, sorted(set(user_ids)), max_members, time.time(), emit
        )

    def _op_add_members(
        self,
        conn: sqlite3.Connection,
        state: _WriterState,
        cid: int,
        user_ids: list[str],
        max_members: int,
        now: float,
        emit: MembershipEmit | None,
    ) -> Conversation:
        cs = self._conv_state(conn, state, cid)
        new = [u for u in user_ids if u not in cs.members]
        if new and cs.kind == "direct":
            raise ForbiddenError(DIRECT_IS_TWO)
        if len(cs.members) + len(new) > max_members:
            raise LimitError(too_many_members(max_members))
        # A member added later sees the whole history, so its cursors start at 0; a
        # member coming back gets the cursors it had (cursors never go backwards).
        conn.executemany(
            "INSERT INTO members (conversation_id, user_id, read_seq, delivered_seq, joined_at)"
            " VALUES (?1, ?2,"
            " coalesce((SELECT read_seq FROM past_cursors WHERE conversation_id = ?1"
            " AND user_id = ?2), 0),"
            " coalesce((SELECT delivered_seq FROM past_cursors WHERE conversation_id = ?1"
            " AND user_id = ?2), 0), ?3)",
            [(cid, u, now) for u in new],
        )
        cs.members.update(new)
        conv = self._conversation_from_cache(conn, cid, cs)
        if emit is not None and new:
            _insert_events(conn, emit(conv, new))
        return conv

    async def remove_member(
        self, conversation_id: str, user_id: str, *, emit: MembershipEmit | None = None
    ) -> Conversation:
        cid = row_id(conversation_id)
        if cid is None:
            raise NotFoundError(CONVERSATION_NOT_FOUND)
        return await self._submit(self._op_remove_member, cid, user_id, time.time(), emit)

    def _op_remove_member(
        self,
        conn: sqlite3.Connection,
        state: _WriterState,
        cid: int,
        user_id: str,
        now: float,
        emit: MembershipEmit | None,
    ) -> Conversation:
        cs = self._conv_state(conn, state, cid)
        if user_id not in cs.members:
            raise NotFoundError(MEMBERSHIP_NOT_FOUND)
        conn.execute(
            "INSERT INTO past_cursors (conversation_id, user_id, read_seq, delivered_seq)"
            " SELECT conversation_id, user_id, read_seq, delivered_seq FROM members"
            " WHERE conversation_id = ? AND user_id = ?"
            " ON CONFLICT (conversation_id, user_id) DO UPDATE SET"
            " read_seq = max(read_seq, excluded.read_seq),"
            " delivered_seq = max(delivered_seq, excluded.delivered_seq)",
            (cid, user_id),
        )
        conn.execute(
            "DELETE FROM members WHERE conversation_id = ? AND user_id = ?", (cid, user_id)
        )
        cs.members.discard(user_id)
        if cs.kind == "direct":  # the pair is free to open a new direct conversation
            conn.execute("UPDATE conversations SET direct_key = NULL WHERE id = ?", (cid,))
        elif cs.members:
            has_owner = conn.execute(
                "SELECT 1 FROM members WHERE conversation_id = ? AND owner_since IS NOT NULL",
                (cid,),
            ).fetchone()
            if has_owner is None:  # the last owner left: the longest-standing member
                conn.execute(
                    "UPDATE members SET owner_since = ? WHERE conversation_id = ? AND user_id ="
                    " (SELECT user_id FROM members WHERE conversation_id = ?"
                    " ORDER BY joined_at, user_id LIMIT 1)",
                    (now, cid, cid),
                )
        conv = self._conversation_from_cache(conn, cid, cs)
        if emit is not None:
            _insert_events(conn, emit(conv, [user_id]))
        return conv

    async def set_title(self, conversation_id: str, title: str | None) -> Conversation:
        cid = row_id(conversation_id)
        if cid is None:
            raise NotFoundError(CONVERSATION_NOT_FOUND)
        return await self._submit(self._op_set_title, cid, title)

    def _op_set_title(
        self, conn: sqlite3.Connection, state: _WriterState, cid: int, title: str | None
    ) -> Conversation:
        cs = self._conv_state(conn, state, cid)
        conn.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, cid))
        return self._conversation_from_cache(conn, cid, cs)

    @staticmethod
    def _conversation_from_cache(
        conn: sqlite3.Connection, cid: int, cs: _ConvState
    ) -> Conversation:
        kind, title, created_at = conn.execute(
            "SELECT kind, title, created_at FROM conversations WHERE id = ?", (cid,)
        ).fetchone()
        return Conversation(
            str(cid), kind, title, sorted(cs.members), created_at, cs.last_seq, _owners(conn, cid)
        )

    # ------------------------------------------------------------------ messages
    def append_message(
        self, message: NewMessage, emit: MessageEmit | None = None
    ) -> asyncio.Future[tuple[MessageRecord, bool]]:
        # Queued synchronously: the caller's order is the commit order, and no task is
        # made per message.
        return self._submit(self._op_append, message, emit, source=message.sender_id)

    def _op_append(
        self,
        conn: sqlite3.Connection,
        state: _WriterState,
        m: NewMessage,
        emit: MessageEmit | None = None,
    ) -> tuple[MessageRecord, bool]:
        cid = row_id(m.conversation_id)
        if cid is None:
            raise NotFoundError(CONVERSATION_NOT_FOUND)
        cs = self._conv_state(conn, state, cid)
        if m.sender_id not in cs.members:
            existing = _find_by_local_id(conn, m.sender_id, m.local_id)
            if existing is not None:
                return existing, False
            raise ForbiddenError(NOT_MEMBER)
        if _deactivated(conn, state, m.sender_id):
            existing = _find_by_local_id(conn, m.sender_id, m.local_id)
            if existing is not None:
                return existing, False
            raise DeactivatedError(USER_DEACTIVATED)
        reply_to: int | None = None
        if m.reply_to is not None:
            reply_to = row_id(m.reply_to)
            row = (
                conn.execute("SELECT conversation_id FROM messages WHERE id = ?", (reply_to,))
                if reply_to is not None
                else None
            )
            found = row.fetchone() if row is not None else None
            if found is None or found[0] != cid:
                raise NotFoundError(REPLY_NOT_FOUND)
        uploads: list[AttachmentRecord] = []
        claimed: set[str] = set()
        for att in m.attachments:
            if att.data is None:
                row = conn.execute(
                    f"SELECT {_ATTACHMENT_COLUMNS}, message_id FROM attachments WHERE id = ?",
                    (att.meta.id,),
                ).fetchone()
                if row is None:
                    raise NotFoundError(attachment_not_found(att.meta.id))
                if row[5] != m.sender_id or row[7] is not None or att.meta.id in claimed:
                    raise ForbiddenError(attachment_unusable(att.meta.id))
                claimed.add(att.meta.id)
                uploads.append(AttachmentRecord(*row[:7]))
        seq = cs.last_seq + 1
        cur = conn.execute(
            "INSERT INTO messages (conversation_id, seq, sender_id, local_id, content, sent_at,"
            " reply_to, has_attachments, mentions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (sender_id, local_id) DO NOTHING",
            (
                cid,
                seq,
                m.sender_id,
                m.local_id,
                m.content,
                m.sent_at,
                reply_to,
                1 if m.attachments else 0,
                json.dumps(list(m.mentions)) if m.mentions else None,
            ),
        )
        if cur.rowcount == 0:
            existing = _find_by_local_id(conn, m.sender_id, m.local_id)
            assert existing is not None
            return existing, False
        msg_id = cur.lastrowid
        assert msg_id is not None
        cs.last_seq = seq
        state.unindexed.append(msg_id)
        records: list[AttachmentRecord] = []
        upload_iter = iter(uploads)
        for att in m.attachments:
            if att.data is None:
                rec = next(upload_iter)
                conn.execute("UPDATE attachments SET message_id = ? WHERE id = ?", (msg_id, rec.id))
            else:
                rec = att.meta
                conn.execute(
                    "INSERT INTO attachments (id, message_id, type, filename, size, content_type,"
                    " uploader_id, created_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        rec.id,
                        msg_id,
                        rec.type,
                        rec.filename,
                        rec.size,
                        rec.content_type,
                        rec.uploader_id,
                        rec.created_at,
                        att.data,
                    ),
                )
            records.append(rec)
        record = MessageRecord(
            id=str(msg_id),
            conversation_id=m.conversation_id,
            seq=seq,
            sender_id=m.sender_id,
            local_id=m.local_id,
            content=m.content,
            sent_at=m.sent_at,
            reply_to=str(reply_to) if reply_to is not None else None,
            attachments=records,
            mentions=list(m.mentions),
            changed_seq=seq,
        )
        if emit is not None:
            _insert_events(conn, emit(record))
        return record, True

    async def get_messages(
        self,
        conversation_id: str,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int = 50,
    ) -> tuple[list[MessageRecord], bool]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        cid = row_id(conversation_id)
        if cid is None:
            return [], False

        def read(c: sqlite3.Connection) -> tuple[list[MessageRecord], bool]:
            if after_seq is not None:
                upper = before_seq if before_seq is not None else 2**62
                rows = c.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?"
                    " AND seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                    (cid, after_seq, upper, limit + 1),
                ).fetchall()
                more = len(rows) > limit
                return _messages(c, rows[:limit]), more
            upper = before_seq if before_seq is not None else 2**62
            rows = c.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?"
                " AND seq < ? ORDER BY seq DESC LIMIT ?",
                (cid, upper, limit + 1),
            ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            rows.reverse()
            return _messages(c, rows), more

        return await self._read(read)

    async def search_messages(
        self,
        user_id: str,
        query: SearchQuery,
        *,
        conversation_id: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[list[MessageRecord], bool]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        where = ""
        args: list[object] = [user_id, fts5_match(query)]
        if conversation_id is not None:
            cid = row_id(conversation_id)
            if cid is None:
                return [], False
            where = " AND m.conversation_id = ?"
            args.append(cid)
        args += [limit + 1, offset]
        # Membership is part of the statement: a user removed a moment ago finds nothing.
        sql = (
            f"SELECT {', '.join('m.' + c for c in _MESSAGE_COLUMNS.split(', '))}"
            " FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid"
            " JOIN members mb ON mb.conversation_id = m.conversation_id AND mb.user_id = ?"
            f" WHERE messages_fts MATCH ?{where}"
            " ORDER BY bm25(messages_fts), m.id DESC LIMIT ? OFFSET ?"
        )

        def read(c: sqlite3.Connection) -> tuple[list[MessageRecord], bool]:
            rows = c.execute(sql, args).fetchall()
            return _messages(c, rows[:limit]), len(rows) > limit

        await self._submit(_op_flush_index)  # what was committed before is found
        return await self._read(read)

    # ------------------------------------------------------------------ receipts
    async def advance_cursor(
        self,
        conversation_id: str,
        user_id: str,
        message_ids: Sequence[str],
        kind: ReceiptKind,
    ) -> list[str]:
        cid = row_id(conversation_id)
        if cid is None:
            raise NotFoundError(CONVERSATION_NOT_FOUND)
        ids = [i for i in (row_id(x) for x in message_ids) if i is not None]
        return await self._submit(self._op_advance, cid, user_id, ids, kind)

    def _op_advance(
        self,
        conn: sqlite3.Connection,
        state: _WriterState,
        cid: int,
        user_id: str,
        ids: list[int],
        kind: ReceiptKind,
    ) -> list[str]:
        cs = self._conv_state(conn, state, cid)
        if user_id not in cs.members:
            raise ForbiddenError(NOT_MEMBER)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = conn.execute(
            f"SELECT id, seq FROM messages WHERE conversation_id = ? AND id IN ({marks})",
            (cid, *ids),
        ).fetchall()
        if not rows:
            return []
        top = max(seq for _, seq in rows)
        if kind == "read":
            conn.execute(
                "UPDATE members SET read_seq = max(read_seq, ?),"
                " delivered_seq = max(delivered_seq, ?)"
                " WHERE conversation_id = ? AND user_id = ?",
                (top, top, cid, user_id),
            )
        else:
            conn.execute(
                "UPDATE members SET delivered_seq = max(delivered_seq, ?)"
                " WHERE conversation_id = ? AND user_id = ?",
                (top, cid, user_id),
            )
        wanted = {str(i) for i, _ in rows}
        return [str(i) for i in ids if str(i) in wanted]

    async def get_cursors(self, conversation_id: str) -> list[Cursor]:
        cid = row_id(conversation_id)
        if cid is None:
            return []
        rows = await self._read(
            lambda c: c.execute(
                "SELECT user_id, read_seq, delivered_seq FROM members WHERE conversation_id = ?",
                (cid,),
            ).fetchall()
        )
        return [Cursor(u, r, d) for u, r, d in rows]

    async def get_cursors_of(self, conversation_ids: Sequence[str]) -> dict[str, list[Cursor]]:
        out: dict[str, list[Cursor]] = {cid: [] for cid in conversation_ids}
        ids = [i for i in (row_id(c) for c in conversation_ids) if i is not None]
        if not ids:
            return out
        marks = ",".join("?" * len(ids))
        rows = await self._read(
            lambda c: c.execute(
                "SELECT conversation_id, user_id, read_seq, delivered_seq FROM members"
                f" WHERE conversation_id IN ({marks})",
                ids,
            ).fetchall()
        )
        for cid, u, r, d in rows:
            out.setdefault(str(cid), []).append(Cursor(u, r, d))
        return out

    # ------------------------------------------------------------------ unread
    async def conversation_states(self, user_id: str) -> dict[str, ConversationState]:
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT m.conversation_id, {_LAST_SEQ.replace('c.id', 'm.conversation_id')},"
                f" m.read_seq, {_UNREAD}, {_MENTIONED} FROM members m"
                " WHERE m.user_id = ?1 ORDER BY m.conversation_id",
                (user_id,),
            ).fetchall()
        )
        return {
            str(cid): ConversationState(last, read, unread, mentioned)
            for cid, last, read, unread, mentioned in rows
        }

    # ------------------------------------------------------------------ changes
    async def get_message(self, message_id: str) -> MessageRecord | None:
        mid = row_id(message_id)
        if mid is None:
            return None

        def read(c: sqlite3.Connection) -> MessageRecord | None:
            row = c.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (mid,)
            ).fetchone()
            return _messages(c, [row])[0] if row is not None else None

        return await self._read(read)

    async def get_log(
        self, conversation_id: str, *, after_seq: int, limit: int
    ) -> tuple[list[LogEntry], bool]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        cid = row_id(conversation_id)
        if cid is None:
            return [], False

        def read(c: sqlite3.Connection) -> tuple[list[LogEntry], bool]:
            rows = c.execute(
                "SELECT seq, 'message', id, sender_id, sent_at, NULL FROM messages"
                " WHERE conversation_id = ?1 AND seq > ?2"
                " UNION ALL SELECT seq, kind, message_id, user_id, at, emoji FROM log_entries"
                " WHERE conversation_id = ?1 AND seq > ?2 ORDER BY 1 LIMIT ?3",
                (cid, after_seq, limit + 1),
            ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            ids = sorted({r[2] for r in rows})
            marks = ",".join("?" * len(ids))
            found = c.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id IN ({marks})", ids
            ).fetchall()
            by_id = {int(m.id): m for m in _messages(c, found)}
            entries = [
                LogEntry(str(cid), seq, kind, by_id[mid], user, at, emoji)
                for seq, kind, mid, user, at, emoji in rows
            ]
            return entries, more

        return await self._read(read)

    def _change(
        self, conversation_id: str, message_id: str, *args: Any, source: str
    ) -> asyncio.Future[tuple[LogEntry, bool]]:
        cid, mid = row_id(conversation_id), row_id(message_id)
        if cid is None:
            raise NotFoundError(CONVERSATION_NOT_FOUND)
        if mid is None:
            raise NotFoundError(MESSAGE_NOT_FOUND)
        return self._submit(*args[:1], cid, mid, *args[1:], source=source)

    async def edit_message(
        self,
        conversation_id: str,
        message_id: str,
        user_id: str,
        content: str,
        at: float,
        emit: ChangeEmit | None = None,
    ) -> tuple[LogEntry, bool]:
        return await self._change(
            conversation_id, message_id, self._op_edit, user_id, content, at, emit, source=user_id
        )

    async def delete_message(
        self,
        conversation_id: str,
        message_id: str,
        user_id: str,
        at: float,
        *,
        admin: bool,
        emit: ChangeEmit | None = None,
    ) -> tuple[LogEntry, bool]:
        return await self._change(
            conversation_id, message_id, self._op_delete, user_id, at, admin, emit, source=user_id
        )

    async def add_reaction(
        self,
        conversation_id: str,
        message_id: str,
        user_id: str,
        emoji: str,
        at: float,
        *,
        max_reactions: int,
    ) -> tuple[LogEntry, bool]:
        return await self._change(
            conversation_id,
            message_id,
            self._op_react,
            user_id,
            emoji,
            at,
            max_reactions,
            source=user_id,
        )

    async def remove_reaction(
        self, conversation_id: str, message_id: str, user_id: str, emoji: str, at: float
    ) -> tuple[LogEntry, bool]:
        return await self._change(
            conversation_id, message_id, self._op_unreact, user_id, emoji, at, source=user_id
        )

    # Each change is one writer operation: it runs inside the batch's transaction, so a
    # webhook outbox row written here commits (or not) with the change itself.
    def _target(
        self,
        conn: sqlite3.Connection,
        state: _WriterState,
        cid: int,
        mid: int,
        user_id: str,
        member: bool = True,
    ) -> tuple[_ConvState, MessageRecord]:
        """The conversation and message a change applies to, checked (rule 5)."""
        cs = self._conv_state(conn, state, cid)
        if member and user_id not in cs.members:
            raise ForbiddenError(NOT_MEMBER)
        row = conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ? AND conversation_id = ?",
            (mid, cid),
        ).fetchone()
        if row is None:
            raise NotFoundError(MESSAGE_NOT_FOUND)
        return cs, _messages(conn, [row])[0]

    @staticmethod
    def _log(
        conn: sqlite3.Connection,
        cs: _ConvState,
        cid: int,
        mid: int,
        kind: EntryKind,
        user_id: str,
        at: float,
        emoji: str | None = None,
    ) -> int:
        seq = cs.last_seq + 1
        conn.execute(
            "INSERT INTO log_entries (conversation_id, seq, kind, message_id, user_id, emoji, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (cid, seq, kind, mid, user_id, emoji, at),
        )
        conn.execute("UPDATE messages SET changed_seq = ? WHERE id = ?", (seq, mid))
        cs.last_seq = seq
        return seq

    def _op_edit(
        self,
        conn: sqlite3.Connection,
        state: _WriterState,
        cid: int,
        mid: int,
        user_id: str,
        content: str,
        at: float,
        emit: ChangeEmit | None = None,
    ) -> tuple[LogEntry, bool]:
        cs, msg = self._target(conn, state, cid, mid, user_id)
        if msg.deleted:
            raise NotFoundError(MESSAGE_DELETED)
        _index_new(conn, state)
        if msg.content == content:
            return LogEntry(
                str(cid), msg.last_change_seq, "message.updated", msg, user_id, at
            ), False
        conn.execute(
            "UPDATE messages SET content = ?, edited_at = ? WHERE id = ?", (content, at, mid)
        )
        seq = self._log(conn, cs, cid, mid, "message.updated", user_id, at)
        now = edited(msg, content, at, seq)
        entry = LogEntry(str(cid), seq, "message.updated", now, user_id, at)
        if emit is not None:
            _insert_events(conn, emit(entry))
        return entry, True

    def _op_delete(
        self,
        conn: sqlite3.Connection,
        state: _WriterState,
        cid: int,
        mid: int,
        user_id: str,
        at: float,
        admin: bool,
        emit: ChangeEmit | None = None,
    ) -> tuple[LogEntry, bool]:
        cs, msg = self._target(conn, state, cid, mid, user_id, member=not admin)
        if msg.deleted:
            when = msg.deleted_at or at
            return LogEntry(
                str(cid), msg.last_change_seq, "message.deleted", msg, user_id, when
            ), False
        _index_new(conn, state)
        conn.execute(
            "UPDATE messages SET content = '', deleted_at = ?, has_attachments = 0,"
            " mentions = NULL WHERE id = ?",
            (at, mid),
        )
        if msg.content and not _SECURE_DELETE:
            state.erase_words = True
        conn.execute("DELETE FROM attachments WHERE message_id = ?", (mid,))
        conn.execute("DELETE FROM reactions WHERE message_id = ?", (mid,))
        seq = self._log(conn, cs, cid, mid, "message.deleted", user_id, at)
        now = tombstone(msg, at, seq)
        entry = LogEntry(str(cid), seq, "message.deleted", now, user_id, at)
        if emit is not None:
            _insert_events(conn, emit(entry))
        return entry, True

    def _op_react(
        self,
        conn: sqlite3.Connection,
        state: _WriterState,
        cid: int,
        mid: int,
        user_id: str,
        emoji: str,
        at: float,
        max_reactions: int,
    ) -> tuple[LogEntry, bool]:
        cs, msg = self._target(conn, state, cid, mid, user_id)
        if msg.deleted:
            raise NotFoundError(MESSAGE_DELETED)
        if user_id in msg.reactions.get(emoji, ()):
            entry = LogEntry(
                str(cid), msg.last_change_seq, "reaction.added", msg, user_id, at, emoji
            )
            return entry, False
        if emoji not in msg.reactions and len(msg.reactions) >= max_reactions:
            raise LimitError(too_many_reactions(max_reactions))
        seq = self._log(conn, cs, cid, mid, "reaction.added", user_id, at, emoji)
        conn.execute(
            "INSERT INTO reactions (message_id, emoji, user_id, seq) VALUES (?, ?, ?, ?)",
            (mid, emoji, user_id, seq),
        )
        now = with_reaction(msg, emoji, user_id, seq)
        entry = LogEntry(str(cid), seq, "reaction.added", now, user_id, at, emoji)
        return entry, True

    def _op_unreact(
        self,
        conn: sqlite3.Connection,
        state: _WriterState,
        cid: int,
        mid: int,
        user_id: str,
        emoji: str,
        at: float,
    ) -> tuple[LogEntry, bool]:
        cs, msg = self._target(conn, state, cid, mid, user_id)
        if user_id not in msg.reactions.get(emoji, ()):  # a deleted message has none
            entry = LogEntry(
                str(cid), msg.last_change_seq, "reaction.removed", msg, user_id, at, emoji
            )
            return entry, False
        conn.execute(
            "DELETE FROM reactions WHERE message_id = ? AND emoji = ? AND user_id = ?",
            (mid, emoji, user_id),
        )
        seq = self._log(conn, cs, cid, mid, "reaction.removed", user_id, at, emoji)
        now = without_reaction(msg, emoji, user_id, seq)
        entry = LogEntry(str(cid), seq, "reaction.removed", now, user_id, at, emoji)
        return entry, True

    # ------------------------------------------------------------------ attachments
    async def put_attachment(self, meta: AttachmentRecord, data: bytes) -> None:
        await self._submit(_op_put_attachment, meta, data)

    async def get_attachment(self, attachment_id: str) -> tuple[AttachmentRecord, bytes] | None:
        row = await self._read(
            lambda c: c.execute(
                f"SELECT {_ATTACHMENT_COLUMNS}, data FROM attachments WHERE id = ?",
                (attachment_id,),
            ).fetchone()
        )
        if row is None:
            return None
        return AttachmentRecord(*row[:7]), bytes(row[7])

    # ------------------------------------------------------------------ webhook outbox
    # Claims, deliveries and retries run on the writer thread, which alone touches the
    # leases: each sees every earlier write, so a delivered head is never handed out again.
    async def outbox_claim(
        self, *, now: float, lease: float, limit: int, run: int = 1
    ) -> list[OutboxRow]:
        return await self._submit(self._op_outbox_claim, now, lease, limit, run, object())

    def _op_outbox_claim(
        self,
        conn: sqlite3.Connection,
        state: _WriterState,
        now: float,
        lease: float,
        limit: int,
        run: int,
        token: object,
    ) -> list[OutboxRow]:
        # ``token``: a batch run again (poison isolation) hands out the same rows.
        leases = self._leases
        for position in [p for p, (until, _) in leases.items() if until <= now]:
            del leases[position]
        # A leased head still blocks its conversation, so read past as many as are leased.
        rows = conn.execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM webhook_outbox WHERE position IN"
            " (SELECT min(position) FROM webhook_outbox GROUP BY conversation_id)"
            " AND next_at <= ? ORDER BY position LIMIT ?",
            (now, limit + len(leases)),
        ).fetchall()
        heads = [r for r in rows if r[0] not in leases or leases[r[0]][1] is token][:limit]
        out: list[OutboxRow] = []
        for head in heads:
            out.append(_outbox_row(head))
            if run > 1:
                behind = conn.execute(
                    f"SELECT {_OUTBOX_COLUMNS} FROM webhook_outbox"
                    " WHERE conversation_id = ? AND position > ? ORDER BY position LIMIT ?",
                    (head[3], head[0], run - 1),
                ).fetchall()
                out.extend(_outbox_row(r) for r in behind)
        for row in out:
            leases[row.position] = (now + lease, token)
        out.sort(key=lambda r: r.position)
        return out

    async def outbox_delivered(self, positions: Sequence[int]) -> None:
        await self._submit(self._op_outbox_delete, list(positions))

    def _op_outbox_delete(
        self, conn: sqlite3.Connection, state: _WriterState, positions: list[int]
    ) -> None:
        conn.executemany("DELETE FROM webhook_outbox WHERE position = ?", [(p,) for p in positions])
        for position in positions:
            self._leases.pop(position, None)

    async def outbox_retry(self, position: int, *, attempts: int, next_at: float) -> None:
        await self._submit(self._op_outbox_retry, position, attempts, next_at)

    def _op_outbox_retry(
        self,
        conn: sqlite3.Connection,
        state: _WriterState,
        position: int,
        attempts: int,
        next_at: float,
    ) -> None:
        conn.execute(
            "UPDATE webhook_outbox SET attempts = ?, next_at = ? WHERE position = ?",
            (attempts, next_at, position),
        )
        self._leases.pop(position, None)

    async def outbox_release(self, positions: Sequence[int]) -> None:
        await self._submit(self._op_outbox_release, list(positions))

    def _op_outbox_release(
        self, conn: sqlite3.Connection, state: _WriterState, positions: list[int]
    ) -> None:
        for position in positions:
            self._leases.pop(position, None)

    async def outbox_unstamped(self, limit: int) -> list[OutboxRow]:
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM webhook_outbox WHERE stamped = 0"
                " ORDER BY position LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [_outbox_row(r) for r in rows]

    async def outbox_stamp(self, stamps: Sequence[tuple[int, bytes]]) -> None:
        if stamps:
            await self._submit(_op_outbox_stamp, list(stamps))

    async def outbox_stats(self) -> tuple[int, float | None]:
        row = await self._read(
            lambda c: c.execute("SELECT count(*), min(created_at) FROM webhook_outbox").fetchone()
        )
        return int(row[0]), row[1]


# ---------------------------------------------------------------------- module helpers
_OUTBOX_COLUMNS = (
    "position, event_id, type, conversation_id, created_at, data, stamped, attempts, next_at"
)


def _outbox_row(r: Any) -> OutboxRow:
    return OutboxRow(
        position=r[0],
        event=OutboxEvent(r[1], r[2], r[3], r[4], bytes(r[5]), bool(r[6])),
        attempts=r[7],
        next_at=r[8],
    )


def _insert_events(conn: sqlite3.Connection, events: Sequence[OutboxEvent]) -> None:
    conn.executemany(
        "INSERT INTO webhook_outbox (event_id, type, conversation_id, created_at, data,"
        " stamped, next_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (e.id, e.type, e.conversation_id, e.created_at, e.data, int(e.stamped), e.created_at)
            for e in events
        ],
    )


def _op_outbox_stamp(
    conn: sqlite3.Connection, state: _WriterState, stamps: list[tuple[int, bytes]]
) -> None:
    conn.executemany(
        "UPDATE webhook_outbox SET data = ?, stamped = 1 WHERE position = ?",
        [(data, position) for position, data in stamps],
    )


def _resolve(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, exc in results:
        if future.done():
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)


def _op_set_user_active(
    conn: sqlite3.Connection, state: _WriterState, user_id: str, active: bool
) -> None:
    conn.execute(
        "INSERT INTO users (id, active) VALUES (?, ?)"
        " ON CONFLICT (id) DO UPDATE SET active = excluded.active",
        (user_id, 1 if active else 0),
    )
    state.deactivated[user_id] = not active


def _deactivated(conn: sqlite3.Connection, state: _WriterState, user_id: str) -> bool:
    """Whether ``user_id`` is deactivated: one primary-key lookup in the writer, then
    remembered until the writer itself changes it."""
    known = state.deactivated.get(user_id)
    if known is not None:
        return known
    row = conn.execute("SELECT active FROM users WHERE id = ?", (user_id,)).fetchone()
    deactivated = row is not None and not row[0]
    if len(state.deactivated) >= _CACHE_LIMIT:
        state.deactivated.clear()
    state.deactivated[user_id] = deactivated
    return deactivated


def _op_put_attachment(
    conn: sqlite3.Connection, state: _WriterState, meta: AttachmentRecord, data: bytes
) -> None:
    conn.execute(
        "INSERT INTO attachments (id, message_id, type, filename, size, content_type,"
        " uploader_id, created_at, data) VALUES (?, NULL, ?, ?, ?, ?, ?, ?, ?)",
        (
            meta.id,
            meta.type,
            meta.filename,
            meta.size,
            meta.content_type,
            meta.uploader_id,
            meta.created_at,
            data,
        ),
    )


def _op_probe_write(conn: sqlite3.Connection, state: object) -> None:
    """A tiny real write, for ``ping`` after a write failed: a row added and removed in
    one transaction still writes its page (a row rewritten as it was would not)."""
    conn.execute("INSERT OR REPLACE INTO schema_migrations VALUES (-1, 0)")
    conn.execute("DELETE FROM schema_migrations WHERE version = -1")


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
        " applied_at REAL NOT NULL)"
    )
    done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    from parley.store.admin import check_not_newer

    check_not_newer(done, max(v for v, _ in MIGRATIONS))  # never run on a newer Parley's schema
    for version, sql in sorted(MIGRATIONS):
        if version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in split_script(sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


# A row not in the index yet (its id above ``search_indexed.upto``) is indexed later with
# its content of that time: a change before then must not touch the index (an FTS5
# ``delete`` of a row that is not there corrupts it).
_INDEXED = "WHEN old.id <= (SELECT upto FROM search_indexed WHERE id = 1)"


# FTS5 ``secure-delete`` (SQLite 3.44+) takes a deleted row's words out of the index
# file with the row's ``delete``; before 3.44 only a rewrite of the index (``optimize``)
# does, and the writer runs one at the end of each batch that deleted a message.
_SECURE_DELETE = sqlite3.sqlite_version_info >= (3, 44, 0)


def _erase_deleted_words(conn: sqlite3.Connection) -> None:
    """Make a deletion's words leave the file, as its content does (secure_delete).

    An FTS5 ``delete`` only records a tombstone: the words stay in older index segments
    until they are merged. SQLite 3.44+ removes them at once (FTS5 ``secure-delete``).
    With an older SQLite, ``_run_batch`` rewrites the index (``optimize``) before the
    commit of a batch that deleted a message: once however many it deleted, at a cost
    proportional to the index (about a second per 100,000 messages here), so prefer a
    newer SQLite. The update trigger is made here at every start."""
    if _SECURE_DELETE:
        conn.execute("INSERT INTO messages_fts (messages_fts, rank) VALUES ('secure-delete', 1)")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DROP TRIGGER IF EXISTS messages_fts_update")
    conn.execute(
        "CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages"
        f" {_INDEXED} BEGIN"
        " INSERT INTO messages_fts (messages_fts, rowid, content)"
        " VALUES ('delete', old.id, old.content);"
        " INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);"
        " END"
    )
    conn.execute("COMMIT")


def fts5_match(query: SearchQuery) -> str:
    """``query`` as an FTS5 MATCH expression: each term a quoted string (inside which
    FTS5 reads no syntax at all), all included terms ANDed, each exclusion NOTed."""

    def phrase(term: SearchTerm) -> str:
        return '"' + " ".join(term.words).replace('"', '""') + '"'

    expr = " AND ".join(phrase(t) for t in query.include)
    for term in query.exclude:
        expr = f"({expr}) NOT {phrase(term)}"
    return expr


def split_script(sql: str) -> list[str]:
    """The statements of a migration script, each whole (a trigger body included)."""
    statements: list[str] = []
    current = ""
    for piece in sql.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \n;"):
        statements.append(current.strip())
    return statements


def _load_conversation(conn: sqlite3.Connection, conv_id: int) -> Conversation:
    row = conn.execute(
        f"SELECT id, kind, title, created_at, {_LAST_SEQ} FROM conversations c WHERE id = ?",
        (conv_id,),
    ).fetchone()
    if row is None:
        raise NotFoundError(CONVERSATION_NOT_FOUND)
    members = [
        r[0]
        for r in conn.execute(
            "SELECT user_id FROM members WHERE conversation_id = ? ORDER BY user_id", (conv_id,)
        )
    ]
    return Conversation(
        str(row[0]), row[1], row[2], members, row[3], row[4], _owners(conn, conv_id)
    )


def _owners(conn: sqlite3.Connection, conv_id: int) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT user_id FROM members WHERE conversation_id = ? AND owner_since IS NOT NULL"
            " ORDER BY owner_since, user_id",
            (conv_id,),
        )
    ]


def _find_by_local_id(
    conn: sqlite3.Connection, sender_id: str, local_id: str
) -> MessageRecord | None:
    row = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE sender_id = ? AND local_id = ?",
        (sender_id, local_id),
    ).fetchone()
    return _messages(conn, [row])[0] if row is not None else None


def _messages(conn: sqlite3.Connection, rows: list[Any]) -> list[MessageRecord]:
    reactions = _reactions(conn, [r[0] for r in rows if r[11] is None])
    with_att = [r[0] for r in rows if r[8]]
    atts: dict[int, list[AttachmentRecord]] = {}
    if with_att:
        marks = ",".join("?" * len(with_att))
        for row in conn.execute(
            f"SELECT message_id, {_ATTACHMENT_COLUMNS} FROM attachments"
            f" WHERE message_id IN ({marks}) ORDER BY rowid",
            with_att,
        ):
            atts.setdefault(row[0], []).append(AttachmentRecord(*row[1:]))
    return [
        MessageRecord(
            id=str(r[0]),
            conversation_id=str(r[1]),
            seq=r[2],
            sender_id=r[3],
            local_id=r[4],
            content=r[5],
            sent_at=r[6],
            reply_to=str(r[7]) if r[7] is not None else None,
            attachments=atts.get(r[0], []),
            mentions=json.loads(r[9]) if r[9] else [],
            edited_at=r[10],
            deleted_at=r[11],
            reactions=reactions.get(r[0], {}),
            changed_seq=max(r[2], r[12]),
        )
        for r in rows
    ]


def _reactions(conn: sqlite3.Connection, message_ids: list[int]) -> dict[int, dict[str, list[str]]]:
    """``{message_id: {emoji: [user ids]}}``: emoji by first use, users in the
    order they reacted (both by the seq of the reaction)."""
    out: dict[int, dict[str, list[str]]] = {}
    if not message_ids:
        return out
    marks = ",".join("?" * len(message_ids))
    rows = conn.execute(
        f"SELECT message_id, emoji, user_id, seq, min(seq) OVER (PARTITION BY message_id, emoji)"
        f" AS first FROM reactions WHERE message_id IN ({marks}) ORDER BY message_id, first, seq",
        message_ids,
    ).fetchall()
    for mid, emoji, user, _seq, _first in rows:
        out.setdefault(mid, {}).setdefault(emoji, []).append(user)
    return out
