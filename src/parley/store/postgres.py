"""PostgreSQL backend of ``Store`` (``store.base``), on asyncpg, for many nodes at once.

How the guarantees hold when several nodes write the same conversation:

* ``seq``: a message batch takes the row lock of each conversation it writes (in
  ascending id order, so two batches never deadlock), reads each conversation's
  ``last_seq`` under that lock, numbers its messages from there and writes them and the
  new ``last_seq``, all in one transaction. The next writer of that conversation waits
  on the lock until this transaction commits, so ``seq`` has no gaps and commit order
  is ``seq`` order. ``UNIQUE (conversation_id, seq)`` backs it up.
* Idempotency: ``UNIQUE (sender_id, local_id)``. A pair already stored is answered
  from the table, read in the batch's transaction; a pair another node inserts after
  that read makes the insert fail, the transaction roll back and the batch is tried
  again, when the read finds it.
* Group commit: ``append_message`` queues the message at once (no task per message) on
  the writer of its conversation (conversation id modulo ``writers``); each writer takes
  whatever is queued for it (up to ``batch_max``) and commits it in one transaction, so a
  burst costs one WAL flush instead of one per message. One writer per conversation
  keeps the order of its appends (a sender's messages take seqs in the order sent) and
  the writers of one node never wait on each other's row locks. A batch is four round
  trips on the writer's own connection, whatever its size (one more when it links
  uploads): ``BEGIN`` with the row locks, one read of everything its checks need (a
  statement of its own after the locks, so that it sees what they waited for), one
  write of everything (``last_seq``, messages, attachments, webhook events), ``COMMIT``
  (see ``_append_batch``). Each message is validated on its own, inside that
  transaction after the row locks are taken (membership, ``reply_to``, uploads not
  linked yet: ``parley.store.base``, "The transaction rule"), so one refused message
  never fails its neighbours; and when the transaction itself fails, each message is
  committed again on its own, so only a message the database cannot take fails (poison
  isolation).
* Membership changes take the same conversation row lock first, so an append and a
  removal of its sender are serialised.
* Changes to messages (edits, deletions, reactions) are log entries: they take the
  same conversation row locks as appends, bump ``last_seq`` and are committed in groups
  by a writer of their own (see ``_change``), with the same poison isolation.
* Migrations are numbered, recorded in ``schema_migrations`` and applied under a
  transaction-scoped advisory lock, so nodes starting together apply each one once.

Ids are ``bigint`` identity columns, strings on the wire. Timestamps are unix seconds
in ``double precision`` columns, so they read back exactly as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, cast

import asyncpg  # type: ignore[import-untyped]

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

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
AppendResult = tuple[MessageRecord, bool]

# pg_advisory_xact_lock key guarding migrations: "parley" in ASCII.
MIGRATION_LOCK_KEY = 0x7061726C6579

# Search (docs/protocol.md, "Search") splits text into words as the SQLite store's
# FTS5 ``unicode61 remove_diacritics 2`` tokenizer does, so both give the same answers.
# The tables below are written out from FTS5 (and checked against it by
# tests/store/test_search_parity.py): letters FTS5 folds other than by lowercasing
# (diacritics of Latin letters, Greek final sigma …), the combining diacritics it
# removes, and the combining marks it takes as separators. Then every run of
# characters other than letters and digits separates words, and ``simple`` only
# lowercases: no stemming, no stop words, for any language.
_FOLD_FROM = (
    "µÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖÙÚÛÜÝàáâãäåçèéêëìíîïñòóôõöùúûüýÿĀāĂăĄą"
    "ĆćĈĉĊċČčĎďĒēĔĕĖėĘęĚěĜĝĞğĠġĢģĤĥĨĩĪīĬĭĮįİĴĵĶķĹĺĻļĽľŃńŅņŇňŌōŎŏŐ"
    "őŔŕŖŗŘřŚśŜŝŞşŠšŢţŤťŨũŪūŬŭŮůŰűŲųŴŵŶŷŸŹźŻżŽžſƠơƯưǍǎǏǐǑǒǓǔǕǖǗǘǙ"
    "ǚǛǜǞǟǦǧǨǩǪǫǬǭǰǴǵǸǹǺǻȀȁȂȃȄȅȆȇȈȉȊȋȌȍȎȏȐȑȒȓȔȕȖȗȘșȚțȞȟȦȧȨȩȪȫȬȭȮȯ"
    "ȰȱȲȳςϐϑϕϖϰϱϵḀḁḂḃḄḅḆḇḈḉḊḋḌḍḎḏḐḑḒḓḔḕḖḗḘḙḚḛḜḝḞḟḠḡḢḣḤḥḦḧḨḩḪḫḬḭḮḯ"
    "ḰḱḲḳḴḵḶḷḸḹḺḻḼḽḾḿṀṁṂṃṄṅṆṇṈṉṊṋṌṍṎṏṐṑṒṓṔṕṖṗṘṙṚṛṜṝṞṟṠṡṢṣṤṥṦṧṨṩṪṫ"
    "ṬṭṮṯṰṱṲṳṴṵṶṷṸṹṺṻṼṽṾṿẀẁẂẃẄẅẆẇẈẉẊẋẌẍẎẏẐẑẒẓẔẕẖẗẘẙẛẠạẢảẤấẦầẨẩẪẫẬ"
    "ậẮắẰằẲẳẴẵẶặẸẹẺẻẼẽẾếỀềỂểỄễỆệỈỉỊịỌọỎỏỐốỒồỔổỖỗỘộỚớỜờỞởỠỡỢợỤụỦủỨ"
    "ứỪừỬửỮữỰựỲỳỴỵỶỷỸỹιÅ"
)
_FOLD_TO = (
    "μaaaaaaceeeeiiiinooooouuuuyaaaaaaceeeeiiiinooooouuuuyyaaaaaa"
    "ccccccccddeeeeeeeeeegggggggghhiiiiiiiiijjkkllllllnnnnnnooooo"
    "orrrrrrssssssssttttuuuuuuuuuuuuwwyyyzzzzzzsoouuaaiioouuuuuuu"
    "uuuaaggkkoooojggnnaaaaaaeeeeiiiioooorrrruuuusstthhaaeeoooooo"
    "ooyyσβθφπκρεaabbbbbbccddddddddddeeeeeeeeeeffgghhhhhhhhhhiiii"
    "kkkkkkllllllllmmmmmmnnnnnnnnoooooooopppprrrrrrrrsssssssssstt"
    "ttttttuuuuuuuuuuvvvvwwwwwwwwwwxxxxyyzzzzzzhtwysaaaaaaaaaaaaa"
    "aaaaaaaaaaaeeeeeeeeeeeeeeeeiiiioooooooooooooooooooooooouuuuu"
    "uuuuuuuuuyyyyyyyyιa"
)
# combining diacritics: removed, as FTS5 removes them
_DROPPED = (
    "\u0300\u0301\u0302\u0303\u0304\u0306\u0307\u0308\u0309\u030a"
    "\u030b\u030c\u030f\u0311\u031b\u0323\u0324\u0325\u0326\u0327"
    "\u0328\u032d\u032e\u0330\u0331"
)
_SEPARATING_MARKS = [
    (0x0305, 0x0305),
    (0x030D, 0x030E),
    (0x0310, 0x0310),
    (0x0312, 0x031A),
    (0x031C, 0x0322),
    (0x0329, 0x032C),
    (0x032F, 0x032F),
    (0x0332, 0x036F),
    (0x0483, 0x0489),
    (0x0591, 0x05BD),
    (0x05BF, 0x05BF),
    (0x05C1, 0x05C2),
    (0x05C4, 0x05C5),
    (0x05C7, 0x05C7),
    (0x0610, 0x061A),
    (0x064B, 0x065F),
    (0x0670, 0x0670),
    (0x06D6, 0x06DC),
    (0x06DF, 0x06E4),
    (0x06E7, 0x06E8),
    (0x06EA, 0x06ED),
    (0x0711, 0x0711),
    (0x0730, 0x074A),
    (0x07A6, 0x07B0),
    (0x07EB, 0x07F3),
    (0x0816, 0x0819),
    (0x081B, 0x0823),
    (0x0825, 0x0827),
    (0x0829, 0x082D),
    (0x0859, 0x085B),
    (0x08E4, 0x08FE),
    (0x0900, 0x0903),
    (0x093A, 0x093C),
    (0x093E, 0x094F),
    (0x0951, 0x0957),
    (0x0962, 0x0963),
    (0x0981, 0x0983),
    (0x09BC, 0x09BC),
    (0x09BE, 0x09C4),
    (0x09C7, 0x09C8),
    (0x09CB, 0x09CD),
    (0x09D7, 0x09D7),
    (0x09E2, 0x09E3),
    (0x0A01, 0x0A03),
    (0x0A3C, 0x0A3C),
    (0x0A3E, 0x0A42),
    (0x0A47, 0x0A48),
    (0x0A4B, 0x0A4D),
    (0x0A51, 0x0A51),
    (0x0A70, 0x0A71),
    (0x0A75, 0x0A75),
    (0x0A81, 0x0A83),
    (0x0ABC, 0x0ABC),
    (0x0ABE, 0x0AC5),
    (0x0AC7, 0x0AC9),
    (0x0ACB, 0x0ACD),
    (0x0AE2, 0x0AE3),
    (0x0B01, 0x0B03),
    (0x0B3C, 0x0B3C),
    (0x0B3E, 0x0B44),
    (0x0B47, 0x0B48),
    (0x0B4B, 0x0B4D),
    (0x0B56, 0x0B57),
    (0x0B62, 0x0B63),
    (0x0B82, 0x0B82),
    (0x0BBE, 0x0BC2),
    (0x0BC6, 0x0BC8),
    (0x0BCA, 0x0BCD),
    (0x0BD7, 0x0BD7),
    (0x0C01, 0x0C03),
    (0x0C3E, 0x0C44),
    (0x0C46, 0x0C48),
    (0x0C4A, 0x0C4D),
    (0x0C55, 0x0C56),
    (0x0C62, 0x0C63),
    (0x0C82, 0x0C83),
    (0x0CBC, 0x0CBC),
    (0x0CBE, 0x0CC4),
    (0x0CC6, 0x0CC8),
    (0x0CCA, 0x0CCD),
    (0x0CD5, 0x0CD6),
    (0x0CE2, 0x0CE3),
    (0x0D02, 0x0D03),
    (0x0D3E, 0x0D44),
    (0x0D46, 0x0D48),
    (0x0D4A, 0x0D4D),
    (0x0D57, 0x0D57),
    (0x0D62, 0x0D63),
    (0x0D82, 0x0D83),
    (0x0DCA, 0x0DCA),
    (0x0DCF, 0x0DD4),
    (0x0DD6, 0x0DD6),
    (0x0DD8, 0x0DDF),
    (0x0DF2, 0x0DF3),
    (0x0E31, 0x0E31),
    (0x0E34, 0x0E3A),
    (0x0E47, 0x0E4E),
    (0x0EB1, 0x0EB1),
    (0x0EB4, 0x0EB9),
    (0x0EBB, 0x0EBC),
    (0x0EC8, 0x0ECD),
    (0x0F18, 0x0F19),
    (0x0F35, 0x0F35),
    (0x0F37, 0x0F37),
    (0x0F39, 0x0F39),
    (0x0F3E, 0x0F3F),
    (0x0F71, 0x0F84),
    (0x0F86, 0x0F87),
    (0x0F8D, 0x0F97),
    (0x0F99, 0x0FBC),
    (0x0FC6, 0x0FC6),
    (0x102B, 0x103E),
    (0x1056, 0x1059),
    (0x105E, 0x1060),
    (0x1062, 0x1064),
    (0x1067, 0x106D),
    (0x1071, 0x1074),
    (0x1082, 0x108D),
    (0x108F, 0x108F),
    (0x109A, 0x109D),
    (0x135D, 0x135F),
    (0x1712, 0x1714),
    (0x1732, 0x1734),
    (0x1752, 0x1753),
    (0x1772, 0x1773),
    (0x17B4, 0x17D3),
    (0x17DD, 0x17DD),
    (0x180B, 0x180D),
    (0x18A9, 0x18A9),
    (0x1920, 0x192B),
    (0x1930, 0x193B),
    (0x19B0, 0x19C0),
    (0x19C8, 0x19C9),
    (0x1A17, 0x1A1B),
    (0x1A55, 0x1A5E),
    (0x1A60, 0x1A7C),
    (0x1A7F, 0x1A7F),
    (0x1B00, 0x1B04),
    (0x1B34, 0x1B44),
    (0x1B6B, 0x1B73),
    (0x1B80, 0x1B82),
    (0x1BA1, 0x1BAD),
    (0x1BE6, 0x1BF3),
    (0x1C24, 0x1C37),
    (0x1CD0, 0x1CD2),
    (0x1CD4, 0x1CE8),
    (0x1CED, 0x1CED),
    (0x1CF2, 0x1CF4),
    (0x1DC0, 0x1DE6),
    (0x1DFC, 0x1DFF),
    (0x20D0, 0x20F0),
    (0x2CEF, 0x2CF1),
    (0x2D7F, 0x2D7F),
    (0x2DE0, 0x2DFF),
    (0x302A, 0x302F),
    (0x3099, 0x309A),
    (0xA66F, 0xA672),
    (0xA674, 0xA67D),
    (0xA69F, 0xA69F),
    (0xA6F0, 0xA6F1),
    (0xA802, 0xA802),
    (0xA806, 0xA806),
    (0xA80B, 0xA80B),
    (0xA823, 0xA827),
    (0xA880, 0xA881),
    (0xA8B4, 0xA8C4),
    (0xA8E0, 0xA8F1),
    (0xA926, 0xA92D),
    (0xA947, 0xA953),
    (0xA980, 0xA983),
    (0xA9B3, 0xA9C0),
    (0xAA29, 0xAA36),
    (0xAA43, 0xAA43),
    (0xAA4C, 0xAA4D),
    (0xAA7B, 0xAA7B),
    (0xAAB0, 0xAAB0),
    (0xAAB2, 0xAAB4),
    (0xAAB7, 0xAAB8),
    (0xAABE, 0xAABF),
    (0xAAC1, 0xAAC1),
    (0xAAEB, 0xAAEF),
    (0xAAF5, 0xAAF6),
    (0xABE3, 0xABEA),
    (0xABEC, 0xABED),
    (0xFB1E, 0xFB1E),
    (0xFE00, 0xFE0F),
    (0xFE20, 0xFE26),
]


def _u(cp: int) -> str:
    """A regex escape for ``cp``, as written inside an ``E'…'`` literal."""
    return f"\\\\u{cp:04x}"


def _search_text_function() -> str:
    """``parley_search_text(text)``: text as FTS5 sees it, words separated by spaces.

    ``translate`` costs the length of the text times the length of its table, so the
    fold table is cut into blocks of 128 code points, each applied only to text that
    has a character of that block; ASCII text skips all of them."""
    blocks: dict[int, list[tuple[str, str]]] = {}
    for src, dst in zip(_FOLD_FROM, _FOLD_TO, strict=True):
        blocks.setdefault(ord(src) >> 7, []).append((src, dst))
    folds = "".join(
        f"""
        IF t ~ E'[{_u(block << 7)}-{_u((block << 7) + 127)}]' THEN
            t := translate(t, '{"".join(a for a, _ in pairs)}', '{"".join(b for _, b in pairs)}');
        END IF;"""
        for block, pairs in sorted(blocks.items())
    )
    dropped = "".join(_u(ord(c)) for c in _DROPPED)
    marks = "".join(_u(a) if a == b else f"{_u(a)}-{_u(b)}" for a, b in _SEPARATING_MARKS)
    return f"""
CREATE FUNCTION parley_search_text(t text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    AS $fn$
    BEGIN
        IF octet_length(t) <> length(t) THEN  -- not only ASCII{folds}
            t := regexp_replace(t, E'[{dropped}]+', '', 'g');
            t := regexp_replace(t, E'[{marks}]+', ' ', 'g');
        END IF;
        RETURN regexp_replace(t, '[^[:alnum:]]+', ' ', 'g');
    END
    $fn$
"""


MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE users (
            id text PRIMARY KEY,
            active boolean NOT NULL DEFAULT true
        );
        CREATE TABLE conversations (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind text NOT NULL CHECK (kind IN ('direct', 'group')),
            title text,
            created_at double precision NOT NULL,
            last_activity double precision NOT NULL,
            last_seq bigint NOT NULL DEFAULT 0,
            -- the sorted member pair of a direct conversation; NULL for groups
            direct_a text,
            direct_b text,
            UNIQUE (direct_a, direct_b)
        );
        CREATE TABLE members (
            conversation_id bigint NOT NULL REFERENCES conversations ON DELETE CASCADE,
            user_id text NOT NULL,
            PRIMARY KEY (conversation_id, user_id)
        );
        CREATE INDEX members_by_user ON members (user_id);
        CREATE TABLE messages (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            conversation_id bigint NOT NULL REFERENCES conversations ON DELETE CASCADE,
            seq bigint NOT NULL,
            sender_id text NOT NULL,
            local_id text NOT NULL,
            content text NOT NULL,
            sent_at double precision NOT NULL,
            reply_to bigint REFERENCES messages,
            UNIQUE (conversation_id, seq),
            UNIQUE (sender_id, local_id)
        );
        CREATE TABLE attachments (
            id text PRIMARY KEY,
            type text NOT NULL,
            filename text NOT NULL,
            size bigint NOT NULL,
            content_type text NOT NULL,
            uploader_id text NOT NULL,
            created_at double precision NOT NULL,
            data bytea NOT NULL
        );
        CREATE TABLE message_attachments (
            message_id bigint NOT NULL REFERENCES messages ON DELETE CASCADE,
            position int NOT NULL,
            attachment_id text NOT NULL REFERENCES attachments,
            PRIMARY KEY (message_id, position)
        );
        -- kept apart from members so that leaving and rejoining never moves a cursor back
        CREATE TABLE cursors (
            conversation_id bigint NOT NULL REFERENCES conversations ON DELETE CASCADE,
            user_id text NOT NULL,
            read_seq bigint NOT NULL DEFAULT 0,
            delivered_seq bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (conversation_id, user_id),
            CHECK (delivered_seq >= read_seq)
        );
        """,
    ),
    (
        2,
        # Group owners, join order and the creator. A direct conversation that ever had
        # other than two members becomes a group; a group's first member (by user id)
        # becomes its owner.
        """
        ALTER TABLE conversations ADD COLUMN creator_id text;
        ALTER TABLE members ADD COLUMN joined_at double precision NOT NULL DEFAULT 0;
        ALTER TABLE members ADD COLUMN owner_since double precision;
        CREATE INDEX conversations_by_creator ON conversations (creator_id, created_at);
        UPDATE conversations c SET kind = 'group', direct_a = NULL, direct_b = NULL
            WHERE kind = 'direct'
              AND (SELECT count(*) FROM members m WHERE m.conversation_id = c.id) <> 2;
        UPDATE members m SET owner_since = 0
            FROM (SELECT conversation_id, min(user_id COLLATE "C") AS user_id
                  FROM members GROUP BY conversation_id) f
            JOIN conversations c ON c.id = f.conversation_id AND c.kind = 'group'
            WHERE m.conversation_id = f.conversation_id AND m.user_id = f.user_id;
        """,
    ),
    (
        3,
        # Changes to messages are log entries sharing the conversation's seq; messages
        # keep their current state (edited, deleted, mentions) and their reactions.
        """
        ALTER TABLE messages ADD COLUMN mentions text[],
            ADD COLUMN edited_at double precision,
            ADD COLUMN deleted_at double precision,
            ADD COLUMN changed_seq bigint NOT NULL DEFAULT 0;
        CREATE TABLE log_entries (
            conversation_id bigint NOT NULL REFERENCES conversations ON DELETE CASCADE,
            seq bigint NOT NULL,
            kind text NOT NULL,
            message_id bigint NOT NULL REFERENCES messages ON DELETE CASCADE,
            user_id text NOT NULL,
            emoji text,
            at double precision NOT NULL,
            PRIMARY KEY (conversation_id, seq)
        );
        CREATE TABLE reactions (
            message_id bigint NOT NULL REFERENCES messages ON DELETE CASCADE,
            emoji text NOT NULL,
            user_id text NOT NULL,
            seq bigint NOT NULL,
            PRIMARY KEY (message_id, emoji, user_id)
        );
        """,
    ),
    (
        4,
        # The webhook outbox (docs/webhooks.md): events written in the transaction of
        # their change, leased to one node at a time (``lease_until``).
        """
        CREATE TABLE webhook_outbox (
            position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id text NOT NULL UNIQUE,
            type text NOT NULL,
            conversation_id text NOT NULL,
            created_at double precision NOT NULL,
            data bytea NOT NULL,
            stamped boolean NOT NULL,
            attempts int NOT NULL DEFAULT 0,
            next_at double precision NOT NULL,
            lease_until double precision
        );
        CREATE INDEX webhook_outbox_by_conversation ON webhook_outbox (conversation_id, position);
        CREATE INDEX webhook_outbox_unstamped ON webhook_outbox (position) WHERE NOT stamped;
        """,
    ),
    (
        5,
        # Full-text search over the current content: a generated tsvector column follows
        # every insert and every UPDATE of content (an edit re-indexes, a blanked
        # deletion leaves nothing to find); adding it indexes the existing messages.
        _search_text_function()
        + """;
        ALTER TABLE messages ADD COLUMN search tsvector GENERATED ALWAYS AS
            (to_tsvector('simple'::regconfig, parley_search_text(content))) STORED;
        CREATE INDEX messages_search ON messages USING gin (search);
        """,
    ),
    (
        6,
        # The search index takes each message's words as it is inserted. With GIN's
        # pending list (``fastupdate``, the default) inserts are cheaper until the list
        # is full (4 MB); then the insert that finds it full merges all of it into the
        # index inside its own transaction: on the test machine a batch of sends stalled
        # 100-200 ms there, holding its conversations' row locks, every few seconds at
        # 15,000 messages/s (autovacuum, which also empties the list, cannot keep up at
        # that rate). Off, each insert costs a little more, evenly.
        """
        ALTER INDEX messages_search SET (fastupdate = off);
        SELECT gin_clean_pending_list('messages_search'::regclass);
        """,
    ),
    (
        7,
        # Which uploads are already linked to a message: read by every batch that sends
        # an uploaded attachment, and checked by the foreign key when a deletion drops a
        # message's attachments. Without an index both scanned all of message_attachments.
        """
        CREATE INDEX message_attachments_by_attachment ON message_attachments (attachment_id);
        """,
    ),
]

_MESSAGE_COLUMNS = (
    "id, conversation_id, seq, sender_id, local_id, content, sent_at, reply_to,"
    " mentions, edited_at, deleted_at, changed_seq"
)
# Unread messages of member row ``m`` (from others, after its read cursor ``r``, not
# deleted), and those of them that mention the user; each count stays in the unread
# tail thanks to the (conversation_id, seq) index.
_UNREAD = """(SELECT count(*) FROM messages u
               WHERE u.conversation_id = c.id AND u.seq > COALESCE(r.read_seq, 0)
                 AND u.sender_id <> $1 AND u.deleted_at IS NULL)"""
_MENTIONED = """(SELECT count(*) FROM messages u
                  WHERE u.conversation_id = c.id AND u.seq > COALESCE(r.read_seq, 0)
                    AND u.sender_id <> $1 AND u.deleted_at IS NULL
                    AND $1 = ANY(u.mentions))"""
_ATTACHMENT_COLUMNS = "id, type, filename, size, content_type, uploader_id, created_at"

# Errors after which a whole batch is simply tried again: another node inserted one of
# its (sender_id, local_id) pairs first, or PostgreSQL chose it as a deadlock victim.
_RETRYABLE = (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError)
_BATCH_ATTEMPTS = 5


def tsquery_sql(query: SearchQuery, args: list[object]) -> str:
    """``query`` as a tsquery expression whose words are bind parameters (appended to
    ``args``): each term a ``phraseto_tsquery`` of its words, included ones ANDed,
    exclusions negated. No word is ever read as tsquery syntax."""

    def phrase(term: SearchTerm) -> str:
        args.append(" ".join(term.words))
        return f"phraseto_tsquery('simple'::regconfig, parley_search_text(${len(args)}::text))"

    parts = [f"({phrase(t)})" for t in query.include]
    parts += [f"(!!({phrase(t)}))" for t in query.exclude]
    return " && ".join(parts)


class _Connection(Protocol):
    """The part of ``asyncpg.Connection`` this module uses, typed."""

    async def fetch(self, query: str, *args: object) -> list[Row]: ...
    async def fetchrow(self, query: str, *args: object) -> Row | None: ...
    async def fetchval(self, query: str, *args: object) -> Any: ...
    async def execute(self, query: str, *args: object) -> str: ...
    def transaction(self) -> contextlib.AbstractAsyncContextManager[object]: ...
    def is_closed(self) -> bool: ...
    def is_in_transaction(self) -> bool: ...


def _attachment(row: Row) -> AttachmentRecord:
    return AttachmentRecord(
        id=row["id"],
        type=row["type"],
        filename=row["filename"],
        size=int(row["size"]),
        content_type=row["content_type"],
        uploader_id=row["uploader_id"],
        created_at=float(row["created_at"]),
    )


def _message(
    row: Row,
    attachments: list[AttachmentRecord],
    reactions: dict[str, list[str]] | None = None,
) -> MessageRecord:
    reply_to = row["reply_to"]
    edited_at, deleted_at = row["edited_at"], row["deleted_at"]
    return MessageRecord(
        id=str(row["id"]),
        conversation_id=str(row["conversation_id"]),
        seq=int(row["seq"]),
        sender_id=row["sender_id"],
        local_id=row["local_id"],
        content=row["content"],
        sent_at=float(row["sent_at"]),
        reply_to=None if reply_to is None else str(reply_to),
        attachments=attachments,
        mentions=list(row["mentions"] or ()),
        edited_at=None if edited_at is None else float(edited_at),
        deleted_at=None if deleted_at is None else float(deleted_at),
        reactions=reactions or {},
        changed_seq=max(int(row["seq"]), int(row["changed_seq"])),
    )


def _conversation(row: Row, member_ids: Iterable[str]) -> Conversation:
    return Conversation(
        id=str(row["id"]),
        kind=row["kind"],
        title=row["title"],
        member_ids=sorted(member_ids),  # in Python: the database collation may differ
        created_at=float(row["created_at"]),
        last_seq=int(row["last_seq"]),
        owner_ids=list(row["owner_ids"] or ()),
    )


# The owners of conversation ``c``, in the order they became owners.
_OWNERS = """ARRAY(SELECT o.user_id FROM members o
                   WHERE o.conversation_id = c.id AND o.owner_since IS NOT NULL
                   ORDER BY o.owner_since, o.user_id COLLATE "C") AS owner_ids"""


async def _attachments_of(
    conn: _Connection, message_ids: list[int]
) -> dict[int, list[AttachmentRecord]]:
    """``{message_id: [AttachmentRecord, …]}`` in position order, for messages that have any."""
    out: dict[int, list[AttachmentRecord]] = {}
    if not message_ids:
        return out
    rows = await conn.fetch(
        f"""SELECT ma.message_id, {", ".join("a." + c for c in _ATTACHMENT_COLUMNS.split(", "))}
            FROM message_attachments ma JOIN attachments a ON a.id = ma.attachment_id
            WHERE ma.message_id = ANY($1::bigint[])
            ORDER BY ma.message_id, ma.position""",
        message_ids,
    )
    for row in rows:
        out.setdefault(int(row["message_id"]), []).append(_attachment(row))
    return out


async def _reactions_of(
    conn: _Connection, message_ids: list[int]
) -> dict[int, dict[str, list[str]]]:
    """``{message_id: {emoji: [user ids]}}``: emoji by first use, users in the
    order they reacted (both by the seq of the reaction)."""
    out: dict[int, dict[str, list[str]]] = {}
    if not message_ids:
        return out
    rows = await conn.fetch(
        """SELECT message_id, emoji, user_id,
                  min(seq) OVER (PARTITION BY message_id, emoji) AS first, seq
           FROM reactions WHERE message_id = ANY($1::bigint[])
           ORDER BY message_id, first, seq""",
        message_ids,
    )
    for r in rows:
        out.setdefault(int(r["message_id"]), {}).setdefault(r["emoji"], []).append(r["user_id"])
    return out


async def _messages(conn: _Connection, rows: list[Row]) -> list[MessageRecord]:
    atts = await _attachments_of(conn, [int(r["id"]) for r in rows])
    reactions = await _reactions_of(conn, [int(r["id"]) for r in rows if r["deleted_at"] is None])
    return [_message(r, atts.get(int(r["id"]), []), reactions.get(int(r["id"]))) for r in rows]


Change = tuple[LogEntry, bool]
# A change's function, given the connection of the batch transaction it runs in.
_ChangeOp = Callable[..., Awaitable[Change]]


class _PendingChange:
    __slots__ = ("apply", "cid", "future")

    def __init__(
        self,
        cid: int,
        apply: Callable[[_Connection], Awaitable[Change]],
        future: asyncio.Future[Change],
    ) -> None:
        self.cid = cid
        self.apply = apply
        self.future = future


_OUTBOX_COLUMNS = (
    "position, event_id, type, conversation_id, created_at, data, stamped, attempts, next_at"
)


def _outbox_row(r: Row) -> OutboxRow:
    return OutboxRow(
        position=int(r["position"]),
        event=OutboxEvent(
            id=r["event_id"],
            type=r["type"],
            conversation_id=r["conversation_id"],
            created_at=float(r["created_at"]),
            data=bytes(r["data"]),
            stamped=bool(r["stamped"]),
        ),
        attempts=int(r["attempts"]),
        next_at=float(r["next_at"]),
    )


async def _insert_events(conn: _Connection, events: Sequence[OutboxEvent]) -> None:
    """Write webhook events inside the caller's transaction (transaction rule 6)."""
    if not events:
        return
    await conn.execute(
        """INSERT INTO webhook_outbox
               (event_id, type, conversation_id, created_at, data, stamped, next_at)
           SELECT e, t, c, a, d, s, a FROM unnest($1::text[], $2::text[], $3::text[],
                                                 $4::float8[], $5::bytea[], $6::bool[])
               AS v(e, t, c, a, d, s)""",
        [e.id for e in events],
        [e.type for e in events],
        [e.conversation_id for e in events],
        [e.created_at for e in events],
        [e.data for e in events],
        [e.stamped for e in events],
    )


class _Pending:
    __slots__ = ("emit", "future", "message")

    def __init__(
        self,
        message: NewMessage,
        future: asyncio.Future[AppendResult],
        emit: MessageEmit | None = None,
    ) -> None:
        self.message = message
        self.future = future
        self.emit = emit


class _Lane:
    """One message writer: the queue of the conversations given to it (id modulo the
    number of writers) and the connection it keeps between batches (no pool round trip
    to reset it after each one)."""

    __slots__ = ("conn", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.conn: Any = None  # asyncpg.Connection while held


def _settle(future: asyncio.Future[AppendResult], result: AppendResult | BaseException) -> None:
    """Answer an append, unless its caller already gave up on it (cancelled)."""
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


# -- the statements of a batch of appends (``PostgresStore._append_batch``) ------------
# The read and the write are built from parts: only the parts a batch needs (replies,
# uploads, inline attachments, events), each variant a prepared statement of its own.
# Lookups by key go through ``LATERAL (… OFFSET 0)``: a nested loop of index lookups
# whatever the table's statistics, so a plan cached while ``messages`` was small (or
# never analysed) cannot turn into a scan of the whole table as it grows.


def _lock_sql(conversation_ids: Sequence[int]) -> str:
    """``BEGIN`` and the row locks of the batch's conversations, ascending, in one round
    trip: a simple query, so the ids (integers, never text) are written into it."""
    if not conversation_ids:
        return "BEGIN"
    ids = ",".join(str(int(c)) for c in conversation_ids)
    return (
        f"BEGIN; SELECT FROM conversations WHERE id = ANY('{{{ids}}}'::bigint[])"
        " ORDER BY id FOR NO KEY UPDATE"
    )


_LOCK_UPLOADS = f"""SELECT {_ATTACHMENT_COLUMNS} FROM attachments
                    WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"""


@functools.cache
def _read_sql(replies: bool, uploads: bool) -> str:
    """The read of a batch, after its locks (a statement of its own, so its snapshot
    sees every commit the locks waited for): one row of parallel arrays, one group per
    part. $1 the locked conversations; $2, $3 the (conversation, sender) pairs; $4, $5
    the (sender, local_id) pairs; $6 the messages id sequence, $7 how many ids to take
    from it; then $8 the reply_to ids, then the upload ids."""
    parts = [
        """(SELECT array_agg(c.id) AS conv_ids, array_agg(c.last_seq) AS conv_seqs
            FROM conversations c WHERE c.id = ANY($1::bigint[])) k""",
        # membership and the active flag: a user deactivated on another node (whose
        # broker could not tell this one) is refused here all the same
        """(SELECT array_agg(q.c) AS member_convs, array_agg(q.u) AS member_users,
                   array_agg(x.active) AS member_active
            FROM unnest($2::bigint[], $3::text[]) AS q(c, u)
            CROSS JOIN LATERAL (
                SELECT coalesce(u.active, true) AS active
                FROM members m LEFT JOIN users u ON u.id = m.user_id
                WHERE m.conversation_id = q.c AND m.user_id = q.u OFFSET 0) x) mb""",
        """(SELECT array_agg(x.id) AS existing
            FROM unnest($4::text[], $5::text[]) AS q(u, l)
            CROSS JOIN LATERAL (
                SELECT id FROM messages WHERE sender_id = q.u AND local_id = q.l
                OFFSET 0) x) e""",
        """(SELECT array_agg(nextval($6::oid::regclass)) AS new_ids
            FROM generate_series(1, $7::int)) n""",
    ]
    n = 7
    if replies:
        n += 1
        parts.append(
            f"""(SELECT array_agg(x.id) AS reply_ids, array_agg(x.conversation_id) AS reply_convs
                FROM unnest(${n}::bigint[]) AS q(id)
                CROSS JOIN LATERAL (
                    SELECT id, conversation_id FROM messages WHERE id = q.id OFFSET 0) x) r"""
        )
    if uploads:
        n += 1
        parts.append(
            f"""(SELECT array_agg(DISTINCT ma.attachment_id) AS linked
                FROM message_attachments ma WHERE ma.attachment_id = ANY(${n}::text[])) l"""
        )
    return "SELECT * FROM " + ",\n".join(parts)


@functools.cache
def _write_sql(inline: bool, links: bool, events: bool) -> str:
    """The write of a batch, one statement: the conversations' new ``last_seq``, the
    messages (their ids and seqs given), then the parts the batch needs: inline
    attachments, attachment links, webhook events."""
    ctes = [
        """bump AS (
            UPDATE conversations c
            SET last_seq = v.s, last_activity = GREATEST(c.last_activity, v.t)
            FROM unnest($1::bigint[], $2::bigint[], $3::float8[]) AS v(id, s, t)
            WHERE c.id = v.id)""",
        """ins AS (
            INSERT INTO messages
                (id, conversation_id, seq, sender_id, local_id, content, sent_at, reply_to,
                 mentions)
            OVERRIDING SYSTEM VALUE
            SELECT v.i, v.c, v.s, v.u, v.l, v.t, v.a, v.r,
                   CASE WHEN v.m IS NULL THEN NULL
                        ELSE ARRAY(SELECT json_array_elements_text(v.m::json)) END
            FROM unnest($4::bigint[], $5::bigint[], $6::bigint[], $7::text[], $8::text[],
                        $9::text[], $10::float8[], $11::bigint[], $12::text[])
                 AS v(i, c, s, u, l, t, a, r, m))""",
    ]
    n = 12

    def params(*types: str) -> str:
        nonlocal n
        first, n = n + 1, n + len(types)
        return ", ".join(f"${first + k}::{t}[]" for k, t in enumerate(types))

    if inline:
        arrays = params("text", "text", "text", "bigint", "text", "text", "float8", "bytea")
        ctes.append(
            f"""inline AS (
                INSERT INTO attachments ({_ATTACHMENT_COLUMNS}, data)
                SELECT * FROM unnest({arrays}))"""
        )
    if links:
        arrays = params("bigint", "int", "text")
        ctes.append(
            f"""links AS (
                INSERT INTO message_attachments (message_id, position, attachment_id)
                SELECT * FROM unnest({arrays}))"""
        )
    if events:
        arrays = params("text", "text", "text", "float8", "bytea", "bool")
        ctes.append(
            f"""events AS (
                INSERT INTO webhook_outbox
                    (event_id, type, conversation_id, created_at, data, stamped, next_at)
                SELECT e, t, c, a, d, s, a FROM unnest({arrays}) AS v(e, t, c, a, d, s))"""
        )
    return "WITH " + ",\n".join(ctes) + "\nSELECT 1"


class PostgresStore:
    """``Store`` on PostgreSQL. Safe to run on many nodes against one database.

    ``batch_max`` bounds the messages committed per transaction and ``writers`` the
    message transactions in flight at once (each writer keeps one of the pool's
    ``pool_size`` connections); ``batch_max=1`` turns group commit off.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        writers: int = 2,
        batch_max: int = 256,
    ) -> None:
        if not 1 <= writers < pool_size:
            raise ValueError("writers must be at least 1 and fewer than pool_size")
        self._url = url
        self._pool_size = pool_size
        self._batch_max = batch_max
        self._pool: Any = None  # asyncpg.Pool, set by start()
        self._lanes = [_Lane() for _ in range(writers)]
        self._changes: asyncio.Queue[_PendingChange] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._message_ids = 0  # oid of the sequence of messages.id, set by start()

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._url, min_size=1, max_size=self._pool_size, command_timeout=60
        )
        try:
            async with self._acquire() as conn:
                await self._migrate(conn)
                self._message_ids = int(
                    await conn.fetchval(
                        "SELECT pg_get_serial_sequence('messages', 'id')::regclass::oid"
                    )
                )
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise
        self._tasks = [
            asyncio.create_task(self._writer(lane), name=f"parley-pg-writer-{i}")
            for i, lane in enumerate(self._lanes)
        ]
        self._tasks.append(asyncio.create_task(self._change_writer(), name="parley-pg-changes"))

    async def close(self) -> None:
        self._closing = True
        if self._tasks:
            for lane in self._lanes:
                await lane.queue.join()
            await self._changes.join()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        for lane in self._lanes:
            await self._drop_connection(lane)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> None:
        async with self._acquire() as conn:
            # A real write, however small: assigning a transaction id makes the commit
            # write (and flush) a WAL record, which fails while the disk is full.
            await conn.fetchval("SELECT txid_current()")

    @contextlib.asynccontextmanager
    async def _acquire(self) -> AsyncIterator[_Connection]:
        if self._pool is None:
            raise RuntimeError("PostgresStore is not started")
        async with self._pool.acquire() as conn:
            yield cast(_Connection, conn)

    @staticmethod
    async def _migrate(conn: _Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version int PRIMARY KEY,
                       applied_at timestamptz NOT NULL DEFAULT now()
                   )"""
            )
            done = {
                int(r["version"]) for r in await conn.fetch("SELECT version FROM schema_migrations")
            }
            from parley.store.admin import check_not_newer

            check_not_newer(done, max(v for v, _ in MIGRATIONS))  # a newer Parley's schema
            for version, sql in MIGRATIONS:
                if version in done:
                    continue
                log.info("applying schema migration %d", version)
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            ctype = await conn.fetchval(
                "SELECT datctype FROM pg_database WHERE datname = current_database()"
            )
            if ctype in ("C", "POSIX"):
                log.warning(
                    "database LC_CTYPE is %s: search finds ASCII words only (use a UTF-8"
                    " locale such as C.UTF-8)",
                    ctype,
                )

    # -- users ---------------------------------------------------------------
    async def set_user_active(self, user_id: str, active: bool) -> None:
        async with self._acquire() as conn:
            await conn.execute(
                """INSERT INTO users (id, active) VALUES ($1, $2)
                   ON CONFLICT (id) DO UPDATE SET active = EXCLUDED.active""",
                user_id,
                active,
            )

    async def is_user_active(self, user_id: str) -> bool:
        async with self._acquire() as conn:
            active = await conn.fetchval("SELECT active FROM users WHERE id = $1", user_id)
        return active is None or bool(active)

    async def users_state(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        ids = list(dict.fromkeys(user_ids))
        async with self._acquire() as conn:
            rows = await conn.fetch(
                """SELECT q.id, coalesce(u.active, true) AS active, m.conversation_id
                   FROM unnest($1::text[]) AS q(id)
                   LEFT JOIN users u ON u.id = q.id
                   LEFT JOIN members m ON m.user_id = q.id
                   ORDER BY m.conversation_id""",
                ids,
            )
        convs: dict[str, list[str]] = {user: [] for user in ids}
        active: dict[str, bool] = {}
        for r in rows:
            active[r["id"]] = bool(r["active"])
            if r["conversation_id"] is not None:
                convs[r["id"]].append(str(r["conversation_id"]))
        return {user: UserState(active.get(user, True), convs[user]) for user in ids}

    # -- conversations -------------------------------------------------------
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
        pair: tuple[str | None, str | None] = (None, None)
        if kind == "direct":
            if len(members) != 2:
                raise ValueError(DIRECT_IS_TWO)
            pair = (members[0], members[1])
        owners = [creator_id] if kind == "group" and creator_id in members else []
        async with self._acquire() as conn, conn.transaction():
            # A concurrent insert of the same pair waits here for the other transaction,
            # then does nothing; the SELECT below (a new snapshot) then sees its row.
            row = await conn.fetchrow(
                """INSERT INTO conversations
                       (kind, title, created_at, last_activity, direct_a, direct_b, creator_id)
                   VALUES ($1, $2, $3, $3, $4, $5, $6)
                   ON CONFLICT (direct_a, direct_b) DO NOTHING
                   RETURNING id, kind, title, created_at, last_seq, $7::text[] AS owner_ids""",
                kind,
                title,
                created_at,
                *pair,
                creator_id,
                owners,
            )
            if row is None:
                existing = await conn.fetchval(
                    "SELECT id FROM conversations WHERE direct_a = $1 AND direct_b = $2", *pair
                )
                conversation = await self._conversation(conn, int(existing))
                assert conversation is not None
                return conversation, False
            await conn.execute(
                """INSERT INTO members (conversation_id, user_id, joined_at, owner_since)
                   SELECT $1, u, $3::float8, CASE WHEN u = ANY($4::text[]) THEN $3::float8 END
                   FROM unnest($2::text[]) AS u""",
                row["id"],
                members,
                created_at,
                owners,
            )
            conv = _conversation(row, members)
            if emit is not None:
                await _insert_events(conn, emit(conv, members))
        return conv, True

    async def conversations_created_since(self, user_id: str, since: float) -> int:
        async with self._acquire() as conn:
            n = await conn.fetchval(
                "SELECT count(*) FROM conversations WHERE creator_id = $1 AND created_at >= $2",
                user_id,
                since,
            )
        return int(n)

    @staticmethod
    async def _conversation(conn: _Connection, conversation_id: int) -> Conversation | None:
        row = await conn.fetchrow(
            f"""SELECT c.id, c.kind, c.title, c.created_at, c.last_seq,
                      ARRAY(SELECT user_id FROM members m WHERE m.conversation_id = c.id)
                          AS member_ids, {_OWNERS}
               FROM conversations c WHERE c.id = $1""",
            conversation_id,
        )
        return None if row is None else _conversation(row, row["member_ids"])

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        cid = row_id(conversation_id)
        if cid is None:
            return None
        async with self._acquire() as conn:
            return await self._conversation(conn, cid)

    async def list_conversations(self, user_id: str) -> list[ConversationSummary]:
        async with self._acquire() as conn:
            # One query for every conversation (members, owners, counts, the newest
            # message's id), then one for those messages: no query per conversation.
            rows = await conn.fetch(
                f"""SELECT c.id, c.kind, c.title, c.created_at, c.last_seq,
                          ARRAY(SELECT user_id FROM members m2 WHERE m2.conversation_id = c.id)
                              AS member_ids, {_OWNERS},
                          COALESCE(r.read_seq, 0) AS read_seq,
                          {_UNREAD} AS unread_count, {_MENTIONED} AS mention_count,
                          (SELECT id FROM messages l WHERE l.conversation_id = c.id
                            ORDER BY l.seq DESC LIMIT 1) AS last_id
                   FROM members m
                   JOIN conversations c ON c.id = m.conversation_id
                   LEFT JOIN cursors r ON r.conversation_id = c.id AND r.user_id = $1
                   WHERE m.user_id = $1
                   ORDER BY c.last_activity DESC, c.id DESC""",
                user_id,
            )
            last_ids = [int(r["last_id"]) for r in rows if r["last_id"] is not None]
            found = await conn.fetch(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ANY($1::bigint[])", last_ids
            )
            last = {int(m.id): m for m in await _messages(conn, found)}
        return [
            ConversationSummary(
                conversation=_conversation(r, r["member_ids"]),
                last_message=None if r["last_id"] is None else last.get(int(r["last_id"])),
                unread_count=int(r["unread_count"]),
                read_seq=int(r["read_seq"]),
                mention_count=int(r["mention_count"]),
            )
            for r in rows
        ]

    async def user_conversations(self, user_id: str) -> dict[str, int]:
        async with self._acquire() as conn:
            rows = await conn.fetch(
                """SELECT c.id, c.last_seq FROM members m
                   JOIN conversations c ON c.id = m.conversation_id
                   WHERE m.user_id = $1""",
                user_id,
            )
        return {str(r["id"]): int(r["last_seq"]) for r in rows}

    @staticmethod
    async def _lock_conversation(conn: _Connection, cid: int) -> str:
        """Take the conversation's row lock (the one appends take: transaction rule 1);
        its kind. Raises ``NotFoundError``."""
        kind = await conn.fetchval(
            "SELECT kind FROM conversations WHERE id = $1 FOR NO KEY UPDATE", cid
        )
        if kind is None:
            raise NotFoundError(CONVERSATION_NOT_FOUND)
        return str(kind)

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
        wanted = sorted(set(user_ids))
        async with self._acquire() as conn, conn.transaction():
            kind = await self._lock_conversation(conn, cid)
            current = {
                r["user_id"]
                for r in await conn.fetch(
                    "SELECT user_id FROM members WHERE conversation_id = $1", cid
                )
            }
            new = [u for u in wanted if u not in current]
            if new and kind == "direct":
                raise ForbiddenError(DIRECT_IS_TWO)
            if len(current) + len(new) > max_members:
                raise LimitError(too_many_members(max_members))
            # Cursors live in their own table: a member coming back finds its own.
            await conn.execute(
                """INSERT INTO members (conversation_id, user_id, joined_at)
                   SELECT $1, unnest($2::text[]), $3
                   ON CONFLICT DO NOTHING""",
                cid,
                new,
                time.time(),
            )
            conversation = await self._conversation(conn, cid)
            assert conversation is not None
            if emit is not None and new:
                await _insert_events(conn, emit(conversation, new))
        return conversation

    async def remove_member(
        self, conversation_id: str, user_id: str, *, emit: MembershipEmit | None = None
    ) -> Conversation:
        cid = row_id(conversation_id)
        if cid is None:
            raise NotFoundError(CONVERSATION_NOT_FOUND)
        async with self._acquire() as conn, conn.transaction():
            kind = await self._lock_conversation(conn, cid)
            removed = await conn.fetchval(
                "DELETE FROM members WHERE conversation_id = $1 AND user_id = $2 RETURNING 1",
                cid,
                user_id,
            )
            if removed is None:
                raise NotFoundError(MEMBERSHIP_NOT_FOUND)
            if kind == "direct":  # the pair is free to open a new direct conversation
                await conn.execute(
                    "UPDATE conversations SET direct_a = NULL, direct_b = NULL WHERE id = $1",
                    cid,
                )
            else:  # the last owner left: the longest-standing member becomes owner
                await conn.execute(
                    """UPDATE members SET owner_since = $2
                       WHERE conversation_id = $1
                         AND NOT EXISTS (SELECT 1 FROM members o WHERE o.conversation_id = $1
                                         AND o.owner_since IS NOT NULL)
                         AND user_id = (SELECT user_id FROM members WHERE conversation_id = $1
                                        ORDER BY joined_at, user_id COLLATE "C" LIMIT 1)""",
                    cid,
                    time.time(),
                )
            conversation = await self._conversation(conn, cid)
            assert conversation is not None
            if emit is not None:
                await _insert_events(conn, emit(conversation, [user_id]))
        return conversation

    async def set_title(self, conversation_id: str, title: str | None) -> Conversation:
        cid = row_id(conversation_id)
        if cid is None:
            raise NotFoundError(CONVERSATION_NOT_FOUND)
        async with self._acquire() as conn, conn.transaction():
            await self._lock_conversation(conn, cid)
            await conn.execute("UPDATE conversations SET title = $2 WHERE id = $1", cid, title)
            conversation = await self._conversation(conn, cid)
        assert conversation is not None
        return conversation

    # -- messages ------------------------------------------------------------
    def append_message(
        self, message: NewMessage, emit: MessageEmit | None = None
    ) -> asyncio.Future[AppendResult]:
        # Queued synchronously, on the writer of the conversation: the caller's order
        # is the commit order (per conversation), and no task is made per message. A
        # caller that stops waiting does not pull the message out of its batch.
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        if self._closing or not self._tasks:
            future.set_exception(RuntimeError("PostgresStore is not running"))
            return future
        cid = row_id(message.conversation_id) or 0
        self._lanes[cid % len(self._lanes)].queue.put_nowait(_Pending(message, future, emit))
        return future

    async def _writer(self, lane: _Lane) -> None:
        queue = lane.queue
        while True:
            batch = [await queue.get()]
            while len(batch) < self._batch_max and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                try:
                    await self._commit_batch(lane, batch)
                except Exception as exc:
                    if len(batch) == 1:
                        raise
                    # Poison isolation: one message the database cannot take must not
                    # fail its neighbours; each is committed again on its own, in order.
                    log.warning(
                        "message batch of %d failed (%r); retrying one by one", len(batch), exc
                    )
                    for p in batch:
                        try:
                            await self._commit_batch(lane, [p])
                        except Exception as one:
                            log.warning("message failed: %r", one)
                            _settle(p.future, one)
            except Exception as exc:  # the database failed
                log.warning("message batch of %d failed: %r", len(batch), exc)
                for p in batch:
                    _settle(p.future, exc)
            finally:
                for _ in batch:
                    queue.task_done()

    async def _connection(self, lane: _Lane) -> _Connection:
        """The lane's own connection, taken from the pool when it has none."""
        if lane.conn is None:
            if self._pool is None:
                raise RuntimeError("PostgresStore is not started")
            lane.conn = await self._pool.acquire()
        return cast(_Connection, lane.conn)

    async def _drop_connection(self, lane: _Lane) -> None:
        """Give the lane's connection back to the pool (which resets it, or discards it
        when it is broken); the next batch takes another."""
        conn, lane.conn = lane.conn, None
        if conn is not None and self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    async def _commit_batch(self, lane: _Lane, batch: list[_Pending]) -> None:
        # One (sender_id, local_id) twice in the batch: the later copies get the result
        # of the first, marked not created.
        firsts: dict[tuple[str, str], _Pending] = {}
        copies: list[tuple[_Pending, _Pending]] = []
        for p in batch:
            key = (p.message.sender_id, p.message.local_id)
            if key in firsts:
                copies.append((p, firsts[key]))
            else:
                firsts[key] = p
        unique = list(firsts.values())
        results: list[AppendResult | StoreError] = []
        for attempt in range(_BATCH_ATTEMPTS):
            conn = await self._connection(lane)
            try:
                results = await self._append_batch(
                    conn, [p.message for p in unique], [p.emit for p in unique]
                )
                break
            except _RETRYABLE:
                if attempt == _BATCH_ATTEMPTS - 1:
                    raise
            finally:
                if conn.is_closed() or conn.is_in_transaction():  # not rolled back
                    await self._drop_connection(lane)
        for p, result in zip(unique, results, strict=True):
            _settle(p.future, result)
        position = {id(p): n for n, p in enumerate(unique)}
        for p, first in copies:
            result = results[position[id(first)]]
            if isinstance(result, StoreError):
                _settle(p.future, type(result)(*result.args))
            else:
                _settle(p.future, (result[0], False))

    @staticmethod
    @contextlib.asynccontextmanager
    async def _transaction(conn: _Connection, lock_ids: Sequence[int]) -> AsyncIterator[None]:
        """A transaction begun together with the row locks of ``lock_ids`` (one round
        trip), committed on success, rolled back on any failure."""
        try:
            await conn.execute(_lock_sql(lock_ids))
            yield
        except BaseException:
            with contextlib.suppress(Exception):  # a broken connection: dropped after
                await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")

    async def _append_batch(
        self, conn: _Connection, msgs: list[NewMessage], emits: Sequence[MessageEmit | None]
    ) -> list[AppendResult | StoreError]:
        """Commit the valid messages of ``msgs`` (distinct pairs) in one transaction.

        Four round trips whatever the batch holds: ``BEGIN`` with the conversations' row
        locks; one read of everything the checks need (``_read_sql``: the pairs already
        stored, membership and active flags, ``last_seq``, ``reply_to`` targets, uploads
        already linked, and the new messages' ids); then, the checks made here in Python
        (``_refusal``) and the records built, one write (``_write_sql``); ``COMMIT``.
        A batch with uploads locks them first (one more round trip), so their single use
        is read after the lock; a batch with repeats reads their records (two or three
        more)."""
        results: list[AppendResult | StoreError | None] = [None] * len(msgs)
        cids = [row_id(m.conversation_id) for m in msgs]
        lock_ids = sorted({c for c in cids if c is not None})
        pairs = sorted({(c, m.sender_id) for c, m in zip(cids, msgs, strict=True) if c is not None})
        reply_ids = sorted({r for m in msgs if (r := row_id(m.reply_to)) is not None})
        ref_ids = sorted({a.meta.id for m in msgs for a in m.attachments if a.data is None})
        async with self._transaction(conn, lock_ids):
            uploads: dict[str, AttachmentRecord] = {}
            if ref_ids:
                uploads = {
                    r["id"]: _attachment(r) for r in await conn.fetch(_LOCK_UPLOADS, ref_ids)
                }
            args: list[object] = [
                lock_ids,
                [c for c, _ in pairs],
                [u for _, u in pairs],
                [m.sender_id for m in msgs],
                [m.local_id for m in msgs],
                self._message_ids,
                len(msgs),
            ]
            if reply_ids:
                args.append(reply_ids)
            if ref_ids:
                args.append(ref_ids)
            row = await conn.fetchrow(_read_sql(bool(reply_ids), bool(ref_ids)), *args)
            assert row is not None
            last_seq = dict(zip(row["conv_ids"] or (), row["conv_seqs"] or (), strict=True))
            member_users = row["member_users"] or ()
            membership = set(zip(row["member_convs"] or (), member_users, strict=True))
            inactive = {
                u
                for u, active in zip(member_users, row["member_active"] or (), strict=True)
                if not active
            }
            reply_conv: dict[int, int] = {}
            if reply_ids:
                reply_conv = dict(
                    zip(row["reply_ids"] or (), row["reply_convs"] or (), strict=True)
                )
            linked: set[str] = set(row["linked"] or ()) if ref_ids else set()
            new_ids: list[int] = list(row["new_ids"] or ())

            # Pairs already stored (retries, replays): answered with the original.
            if row["existing"]:
                found = await conn.fetch(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ANY($1::bigint[])",
                    list(row["existing"]),
                )
                existing = {(r.sender_id, r.local_id): r for r in await _messages(conn, found)}
                for i, m in enumerate(msgs):
                    record = existing.get((m.sender_id, m.local_id))
                    if record is not None:
                        results[i] = (record, False)

            # Each remaining message checked on its own (transaction rule 1).
            known = set(last_seq)
            valid: list[int] = []
            for i, m in enumerate(msgs):
                if results[i] is None:
                    results[i] = refusal = self._refusal(
                        m, cids[i], known, membership, inactive, reply_conv, uploads, linked
                    )
                    if refusal is None:
                        valid.append(i)
            if valid:
                records = self._number(msgs, valid, cids, last_seq, new_ids, uploads)
                events: list[OutboxEvent] = []
                for i, record in zip(valid, records, strict=True):
                    results[i] = (record, True)
                    emit = emits[i]
                    if emit is not None:
                        events.extend(emit(record))
                await self._write(conn, msgs, valid, records, last_seq, events)
        return [cast(AppendResult | StoreError, r) for r in results]

    @staticmethod
    def _number(
        msgs: list[NewMessage],
        valid: list[int],
        cids: list[int | None],
        last_seq: dict[int, int],
        new_ids: list[int],
        uploads: dict[str, AttachmentRecord],
    ) -> list[MessageRecord]:
        """The records of the valid messages, numbered under the row locks: each
        conversation's next seqs in batch order (so ``last_seq`` is advanced, in
        place), each message the next of the ids read with the batch."""
        records: list[MessageRecord] = []
        for k, i in enumerate(valid):
            m, cid = msgs[i], cast(int, cids[i])
            seq = last_seq[cid] = last_seq[cid] + 1
            reply = row_id(m.reply_to)
            records.append(
                MessageRecord(
                    id=str(new_ids[k]),
                    conversation_id=str(cid),
                    seq=seq,
                    sender_id=m.sender_id,
                    local_id=m.local_id,
                    content=m.content,
                    sent_at=m.sent_at,
                    reply_to=None if reply is None else str(reply),
                    attachments=[
                        a.meta if a.data is not None else uploads[a.meta.id] for a in m.attachments
                    ],
                    mentions=list(m.mentions),
                    changed_seq=seq,
                )
            )
        return records

    @staticmethod
    async def _write(
        conn: _Connection,
        msgs: list[NewMessage],
        valid: list[int],
        records: list[MessageRecord],
        last_seq: dict[int, int],
        events: Sequence[OutboxEvent],
    ) -> None:
        """Write the batch in one statement (``_write_sql``), inside its transaction."""
        activity: dict[int, float] = {}
        for i, r in zip(valid, records, strict=True):
            cid = int(r.conversation_id)
            activity[cid] = max(activity.get(cid, 0.0), msgs[i].sent_at)
        bumped = sorted(activity)
        args: list[object] = [
            bumped,
            [last_seq[c] for c in bumped],
            [activity[c] for c in bumped],
            [int(r.id) for r in records],
            [int(r.conversation_id) for r in records],
            [r.seq for r in records],
            [r.sender_id for r in records],
            [r.local_id for r in records],
            [r.content for r in records],
            [r.sent_at for r in records],
            [None if r.reply_to is None else int(r.reply_to) for r in records],
            [json.dumps(r.mentions) if r.mentions else None for r in records],
        ]
        inline = [a for i in valid for a in msgs[i].attachments if a.data is not None]
        if inline:
            args += [
                [a.meta.id for a in inline],
                [a.meta.type for a in inline],
                [a.meta.filename for a in inline],
                [a.meta.size for a in inline],
                [a.meta.content_type for a in inline],
                [a.meta.uploader_id for a in inline],
                [a.meta.created_at for a in inline],
                [a.data for a in inline],
            ]
        links = [
            (int(r.id), pos, a.meta.id)
            for i, r in zip(valid, records, strict=True)
            for pos, a in enumerate(msgs[i].attachments)
        ]
        if links:
            args += [[x[0] for x in links], [x[1] for x in links], [x[2] for x in links]]
        if events:
            args += [
                [e.id for e in events],
                [e.type for e in events],
                [e.conversation_id for e in events],
                [e.created_at for e in events],
                [e.data for e in events],
                [e.stamped for e in events],
            ]
        await conn.execute(_write_sql(bool(inline), bool(links), bool(events)), *args)

    @staticmethod
    def _refusal(
        m: NewMessage,
        cid: int | None,
        known: set[int],
        membership: set[tuple[int, str]],
        inactive: set[str],
        reply_conv: dict[int, int],
        uploads: dict[str, AttachmentRecord],
        linked: set[str],
    ) -> StoreError | None:
        """Why ``m`` is refused, or None; a message not refused claims its uploads
        (adds them to ``linked``), so one upload links to at most one message."""
        if cid is None or cid not in known:
            return NotFoundError(CONVERSATION_NOT_FOUND)
        if (cid, m.sender_id) not in membership:
            return ForbiddenError(NOT_MEMBER)
        if m.sender_id in inactive:
            return DeactivatedError(USER_DEACTIVATED)
        if m.reply_to is not None:
            rid = row_id(m.reply_to)
            if rid is None or reply_conv.get(rid) != cid:
                return NotFoundError(REPLY_NOT_FOUND)
        claimed: set[str] = set()
        for a in m.attachments:
            if a.data is not None:
                continue
            upload = uploads.get(a.meta.id)
            if upload is None:
                return NotFoundError(attachment_not_found(a.meta.id))
            if upload.uploader_id != m.sender_id or a.meta.id in linked or a.meta.id in claimed:
                return ForbiddenError(attachment_unusable(a.meta.id))
            claimed.add(a.meta.id)
        linked.update(claimed)
        return None

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
        forward = after_seq is not None
        async with self._acquire() as conn:
            rows = await conn.fetch(
                f"""SELECT {_MESSAGE_COLUMNS} FROM messages
                    WHERE conversation_id = $1
                      AND ($2::bigint IS NULL OR seq > $2)
                      AND ($3::bigint IS NULL OR seq < $3)
                    ORDER BY seq {"ASC" if forward else "DESC"}
                    LIMIT $4""",
                cid,
                after_seq,
                before_seq,
                limit + 1,
            )
            has_more = len(rows) > limit
            rows = rows[:limit]
            if not forward:
                rows.reverse()
            return await _messages(conn, rows), has_more

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
        args: list[object] = [user_id]
        cid: int | None = None
        if conversation_id is not None:
            cid = row_id(conversation_id)
            if cid is None:
                return [], False
        tsquery = tsquery_sql(query, args)
        args += [cid, limit + 1, offset]
        n = len(args)
        # Membership is part of the statement: a user removed a moment ago finds nothing.
        # The query is built once (an uncorrelated sub-select: an init plan), not once per
        # row it is tested on, and the GIN index can use it.
        sql = f"""SELECT {", ".join("m." + c for c in _MESSAGE_COLUMNS.split(", "))}
                  FROM messages m
                  JOIN members mb ON mb.conversation_id = m.conversation_id
                                 AND mb.user_id = $1
                  WHERE m.search @@ (SELECT {tsquery})
                    AND (${n - 2}::bigint IS NULL OR m.conversation_id = ${n - 2})
                  ORDER BY ts_rank(m.search, (SELECT {tsquery}), 1) DESC, m.id DESC
                  LIMIT ${n - 1} OFFSET ${n}"""
        async with self._acquire() as conn:
            # A statement of its own each time, so PostgreSQL plans it for this query's
            # words (a custom plan, using the index's statistics): a cached statement's
            # generic plan, made without them, can be slower by orders of magnitude.
            statement = await cast(Any, conn).prepare(sql)
            rows = await statement.fetch(*args)
            return await _messages(conn, rows[:limit]), len(rows) > limit

    # -- receipts ------------------------------------------------------------
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
        wanted = list(dict.fromkeys(i for m in message_ids if (i := row_id(m)) is not None))
        async with self._acquire() as conn, conn.transaction():
            exists = await conn.fetchval("SELECT 1 FROM conversations WHERE id = $1", cid)
            if exists is None:
                raise NotFoundError(CONVERSATION_NOT_FOUND)
            # The member row's lock: a removal waits for this receipt (transaction rule 1).
            member = await conn.fetchval(
                "SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2 FOR SHARE",
                cid,
                user_id,
            )
            if member is None:
                raise ForbiddenError(NOT_MEMBER)
            rows = await conn.fetch(
                """SELECT id, seq FROM messages
                   WHERE conversation_id = $1 AND id = ANY($2::bigint[])""",
                cid,
                wanted,
            )
            if not rows:
                return []
            seq_of = {int(r["id"]): int(r["seq"]) for r in rows}
            top = max(seq_of.values())
            await conn.execute(
                """INSERT INTO cursors (conversation_id, user_id, read_seq, delivered_seq)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (conversation_id, user_id) DO UPDATE SET
                       read_seq = GREATEST(cursors.read_seq, EXCLUDED.read_seq),
                       delivered_seq = GREATEST(cursors.delivered_seq, EXCLUDED.delivered_seq)""",
                cid,
                user_id,
                top if kind == "read" else 0,
                top,
            )
        return [str(i) for i in wanted if i in seq_of]

    async def get_cursors(self, conversation_id: str) -> list[Cursor]:
        cid = row_id(conversation_id)
        if cid is None:
            return []
        async with self._acquire() as conn:
            rows = await conn.fetch(
                """SELECT m.user_id, COALESCE(r.read_seq, 0) AS read_seq,
                          COALESCE(r.delivered_seq, 0) AS delivered_seq
                   FROM members m LEFT JOIN cursors r
                        ON r.conversation_id = m.conversation_id AND r.user_id = m.user_id
                   WHERE m.conversation_id = $1""",
                cid,
            )
        cursors = [
            Cursor(
                user_id=r["user_id"],
                read_seq=int(r["read_seq"]),
                delivered_seq=int(r["delivered_seq"]),
            )
            for r in rows
        ]
        return sorted(cursors, key=lambda c: c.user_id)

    async def get_cursors_of(self, conversation_ids: Sequence[str]) -> dict[str, list[Cursor]]:
        out: dict[str, list[Cursor]] = {cid: [] for cid in conversation_ids}
        ids = [i for i in (row_id(c) for c in conversation_ids) if i is not None]
        if not ids:
            return out
        async with self._acquire() as conn:
            rows = await conn.fetch(
                """SELECT m.conversation_id, m.user_id, COALESCE(r.read_seq, 0) AS read_seq,
                          COALESCE(r.delivered_seq, 0) AS delivered_seq
                   FROM members m LEFT JOIN cursors r
                        ON r.conversation_id = m.conversation_id AND r.user_id = m.user_id
                   WHERE m.conversation_id = ANY($1::bigint[])""",
                ids,
            )
        for r in sorted(rows, key=lambda r: r["user_id"]):
            out.setdefault(str(r["conversation_id"]), []).append(
                Cursor(r["user_id"], int(r["read_seq"]), int(r["delivered_seq"]))
            )
        return out

    # -- unread --------------------------------------------------------------
    async def conversation_states(self, user_id: str) -> dict[str, ConversationState]:
        async with self._acquire() as conn:
            rows = await conn.fetch(
                f"""SELECT c.id, c.last_seq, COALESCE(r.read_seq, 0) AS read_seq,
                           {_UNREAD} AS unread_count, {_MENTIONED} AS mention_count
                    FROM members m
                    JOIN conversations c ON c.id = m.conversation_id
                    LEFT JOIN cursors r ON r.conversation_id = c.id AND r.user_id = $1
                    WHERE m.user_id = $1""",
                user_id,
            )
        return {
            str(r["id"]): ConversationState(
                int(r["last_seq"]),
                int(r["read_seq"]),
                int(r["unread_count"]),
                int(r["mention_count"]),
            )
            for r in rows
        }

    # -- changes -------------------------------------------------------------
    async def get_message(self, message_id: str) -> MessageRecord | None:
        mid = row_id(message_id)
        if mid is None:
            return None
        async with self._acquire() as conn:
            row = await conn.fetchrow(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = $1", mid)
            return None if row is None else (await _messages(conn, [row]))[0]

    async def get_log(
        self, conversation_id: str, *, after_seq: int, limit: int
    ) -> tuple[list[LogEntry], bool]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        cid = row_id(conversation_id)
        if cid is None:
            return [], False
        async with self._acquire() as conn:
            rows = await conn.fetch(
                """(SELECT seq, 'message' AS kind, id AS message_id, sender_id AS user_id,
                           sent_at AS at, NULL::text AS emoji
                    FROM messages WHERE conversation_id = $1 AND seq > $2
                    ORDER BY seq LIMIT $3)
                   UNION ALL
                   (SELECT seq, kind, message_id, user_id, at, emoji FROM log_entries
                    WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3)
                   ORDER BY seq LIMIT $3""",
                cid,
                after_seq,
                limit + 1,
            )
            more = len(rows) > limit
            rows = rows[:limit]
            found = await conn.fetch(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ANY($1::bigint[])",
                sorted({int(r["message_id"]) for r in rows}),
            )
            by_id = {int(m.id): m for m in await _messages(conn, found)}
        entries = [
            LogEntry(
                conversation_id=str(cid),
                seq=int(r["seq"]),
                kind=r["kind"],
                message=by_id[int(r["message_id"])],
                user_id=r["user_id"],
                at=float(r["at"]),
                emoji=r["emoji"],
            )
            for r in rows
        ]
        return entries, more

    # Changes are committed like messages, in groups: a writer task takes every queued
    # change (up to ``batch_max``), locks their conversations (ascending id, as appends
    # do, so the two never deadlock), runs each change's function and commits once. A
    # refused change (``StoreError``, raised before it writes anything) fails alone; when
    # the transaction itself fails, each change is committed again on its own, so only
    # the one the database cannot take fails. Each ``_op_*`` function below is the whole
    # of its change inside that transaction: a webhook outbox row written there commits
    # (or not) with the change itself.
    async def _change(
        self, conversation_id: str, message_id: str, op: _ChangeOp, *args: Any
    ) -> Change:
        cid, mid = row_id(conversation_id), row_id(message_id)
        if cid is None:
            raise NotFoundError(CONVERSATION_NOT_FOUND)
        if mid is None:
            raise NotFoundError(MESSAGE_NOT_FOUND)
        if self._closing or not self._tasks:
            raise RuntimeError("PostgresStore is not running")
        future: asyncio.Future[Change] = asyncio.get_running_loop().create_future()
        self._changes.put_nowait(
            _PendingChange(cid, functools.partial(op, cid, mid, *args), future)
        )
        return await asyncio.shield(future)

    async def _change_writer(self) -> None:
        while True:
            batch = [await self._changes.get()]
            while len(batch) < self._batch_max and not self._changes.empty():
                batch.append(self._changes.get_nowait())
            try:
                try:
                    await self._commit_changes(batch)
                except Exception as exc:
                    if len(batch) == 1:
                        raise
                    log.warning("change batch of %d failed (%r); one by one", len(batch), exc)
                    for p in batch:
                        if not p.future.done():
                            try:
                                await self._commit_changes([p])
                            except Exception as one:
                                p.future.set_exception(one)
            except Exception as exc:  # the database failed
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
            finally:
                for _ in batch:
                    self._changes.task_done()

    async def _commit_changes(self, batch: list[_PendingChange]) -> None:
        results: list[Change | StoreError] = []
        for attempt in range(_BATCH_ATTEMPTS):
            results = []
            try:
                async with self._acquire() as conn, conn.transaction():
                    await conn.execute(
                        "SELECT id FROM conversations WHERE id = ANY($1::bigint[])"
                        " ORDER BY id FOR NO KEY UPDATE",
                        sorted({p.cid for p in batch}),
                    )
                    for p in batch:
                        try:
                            results.append(await p.apply(conn))
                        except StoreError as refused:
                            results.append(refused)
                break
            except _RETRYABLE:
                if attempt == _BATCH_ATTEMPTS - 1:
                    raise
        for p, result in zip(batch, results, strict=True):  # committed: answer each
            if isinstance(result, StoreError):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)

    @staticmethod
    async def _target(
        conn: _Connection, cid: int, mid: int, user_id: str, *, member: bool = True
    ) -> MessageRecord:
        """The message a change applies to, under the conversation's lock, checked
        (transaction rule 5)."""
        found = await conn.fetchrow(
            """SELECT EXISTS (SELECT 1 FROM members m
                              WHERE m.conversation_id = c.id AND m.user_id = $2) AS member
               FROM conversations c WHERE c.id = $1""",
            cid,
            user_id,
        )
        if found is None:
            raise NotFoundError(CONVERSATION_NOT_FOUND)
        if member and not found["member"]:
            raise ForbiddenError(NOT_MEMBER)
        row = await conn.fetchrow(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = $1 AND conversation_id = $2",
            mid,
            cid,
        )
        if row is None:
            raise NotFoundError(MESSAGE_NOT_FOUND)
        return (await _messages(conn, [row]))[0]

    @staticmethod
    async def _log(
        conn: _Connection,
        msg: MessageRecord,
        kind: EntryKind,
        user_id: str,
        at: float,
        emoji: str | None = None,
    ) -> int:
        """Append a change to the log under the row lock (the conversation's next seq,
        the entry, the message's last change), in one statement; its seq."""
        return int(
            await conn.fetchval(
                """WITH s AS (UPDATE conversations SET last_seq = last_seq + 1 WHERE id = $1
                              RETURNING last_seq),
                        e AS (INSERT INTO log_entries
                                  (conversation_id, seq, kind, message_id, user_id, emoji, at)
                              SELECT $1, s.last_seq, $3, $2, $4, $5, $6 FROM s),
                        m AS (UPDATE messages SET changed_seq = s.last_seq FROM s
                              WHERE messages.id = $2)
                   SELECT last_seq FROM s""",
                int(msg.conversation_id),
                int(msg.id),
                kind,
                user_id,
                emoji,
                at,
            )
        )

    async def edit_message(
        self,
        conversation_id: str,
        message_id: str,
        user_id: str,
        content: str,
        at: float,
        emit: ChangeEmit | None = None,
    ) -> Change:
        return await self._change(
            conversation_id, message_id, self._op_edit, user_id, content, at, emit
        )

    async def _op_edit(
        self,
        cid: int,
        mid: int,
        user_id: str,
        content: str,
        at: float,
        emit: ChangeEmit | None,
        conn: _Connection,
    ) -> Change:
        msg = await self._target(conn, cid, mid, user_id)
        if msg.deleted:
            raise NotFoundError(MESSAGE_DELETED)
        if msg.content == content:
            return LogEntry(
                msg.conversation_id, msg.last_change_seq, "message.updated", msg, user_id, at
            ), False
        await conn.execute(
            "UPDATE messages SET content = $2, edited_at = $3 WHERE id = $1", mid, content, at
        )
        seq = await self._log(conn, msg, "message.updated", user_id, at)
        now = edited(msg, content, at, seq)
        entry = LogEntry(msg.conversation_id, seq, "message.updated", now, user_id, at)
        if emit is not None:
            await _insert_events(conn, emit(entry))
        return entry, True

    async def delete_message(
        self,
        conversation_id: str,
        message_id: str,
        user_id: str,
        at: float,
        *,
        admin: bool,
        emit: ChangeEmit | None = None,
    ) -> Change:
        return await self._change(
            conversation_id, message_id, self._op_delete, user_id, at, admin, emit
        )

    async def _op_delete(
        self,
        cid: int,
        mid: int,
        user_id: str,
        at: float,
        admin: bool,
        emit: ChangeEmit | None,
        conn: _Connection,
    ) -> Change:
        msg = await self._target(conn, cid, mid, user_id, member=not admin)
        if msg.deleted:
            when = msg.deleted_at or at
            return LogEntry(
                msg.conversation_id, msg.last_change_seq, "message.deleted", msg, user_id, when
            ), False
        await conn.execute(
            "UPDATE messages SET content = '', deleted_at = $2, mentions = NULL WHERE id = $1",
            mid,
            at,
        )
        gone = await conn.fetch(
            "DELETE FROM message_attachments WHERE message_id = $1 RETURNING attachment_id", mid
        )
        if gone:
            await conn.execute(
                "DELETE FROM attachments WHERE id = ANY($1::text[])",
                [r["attachment_id"] for r in gone],
            )
        await conn.execute("DELETE FROM reactions WHERE message_id = $1", mid)
        seq = await self._log(conn, msg, "message.deleted", user_id, at)
        now = tombstone(msg, at, seq)
        entry = LogEntry(msg.conversation_id, seq, "message.deleted", now, user_id, at)
        if emit is not None:
            await _insert_events(conn, emit(entry))
        return entry, True

    async def add_reaction(
        self,
        conversation_id: str,
        message_id: str,
        user_id: str,
        emoji: str,
        at: float,
        *,
        max_reactions: int,
    ) -> Change:
        return await self._change(
            conversation_id, message_id, self._op_react, user_id, emoji, at, max_reactions
        )

    async def _op_react(
        self,
        cid: int,
        mid: int,
        user_id: str,
        emoji: str,
        at: float,
        max_reactions: int,
        conn: _Connection,
    ) -> Change:
        msg = await self._target(conn, cid, mid, user_id)
        if msg.deleted:
            raise NotFoundError(MESSAGE_DELETED)
        if user_id in msg.reactions.get(emoji, ()):
            entry = LogEntry(
                msg.conversation_id, msg.last_change_seq, "reaction.added", msg, user_id, at, emoji
            )
            return entry, False
        if emoji not in msg.reactions and len(msg.reactions) >= max_reactions:
            raise LimitError(too_many_reactions(max_reactions))
        seq = await self._log(conn, msg, "reaction.added", user_id, at, emoji)
        await conn.execute(
            "INSERT INTO reactions (message_id, emoji, user_id, seq) VALUES ($1, $2, $3, $4)",
            mid,
            emoji,
            user_id,
            seq,
        )
        now = with_reaction(msg, emoji, user_id, seq)
        return LogEntry(msg.conversation_id, seq, "reaction.added", now, user_id, at, emoji), True

    async def remove_reaction(
        self, conversation_id: str, message_id: str, user_id: str, emoji: str, at: float
    ) -> Change:
        return await self._change(conversation_id, message_id, self._op_unreact, user_id, emoji, at)

    async def _op_unreact(
        self, cid: int, mid: int, user_id: str, emoji: str, at: float, conn: _Connection
    ) -> Change:
        msg = await self._target(conn, cid, mid, user_id)
        if user_id not in msg.reactions.get(emoji, ()):  # a deleted message has none
            entry = LogEntry(
                msg.conversation_id,
                msg.last_change_seq,
                "reaction.removed",
                msg,
                user_id,
                at,
                emoji,
            )
            return entry, False
        await conn.execute(
            "DELETE FROM reactions WHERE message_id = $1 AND emoji = $2 AND user_id = $3",
            mid,
            emoji,
            user_id,
        )
        seq = await self._log(conn, msg, "reaction.removed", user_id, at, emoji)
        now = without_reaction(msg, emoji, user_id, seq)
        return LogEntry(msg.conversation_id, seq, "reaction.removed", now, user_id, at, emoji), True

    # -- attachments ---------------------------------------------------------
    async def put_attachment(self, meta: AttachmentRecord, data: bytes) -> None:
        async with self._acquire() as conn:
            await conn.execute(
                f"""INSERT INTO attachments ({_ATTACHMENT_COLUMNS}, data)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
                meta.id,
                meta.type,
                meta.filename,
                meta.size,
                meta.content_type,
                meta.uploader_id,
                meta.created_at,
                data,
            )

    async def get_attachment(self, attachment_id: str) -> tuple[AttachmentRecord, bytes] | None:
        async with self._acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {_ATTACHMENT_COLUMNS}, data FROM attachments WHERE id = $1",
                attachment_id,
            )
        if row is None:
            return None
        return _attachment(row), bytes(row["data"])

    # -- webhook outbox (transaction rule 6) ---------------------------------
    @contextlib.asynccontextmanager
    async def _bookkeeping(self) -> AsyncIterator[_Connection]:
        """A transaction of delivery bookkeeping, committed without waiting for the WAL
        flush: if PostgreSQL itself crashes and loses it, an event is sent again (or
        its lease ends early), which at-least-once delivery allows. The events are
        written durably, in the transaction of their change."""
        async with self._acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit TO OFF")
            yield conn

    async def outbox_claim(
        self, *, now: float, lease: float, limit: int, run: int = 1
    ) -> list[OutboxRow]:
        # Only a conversation's head (its oldest undelivered event) decides: a head
        # leased or locked by another node is skipped, and, being the head, it keeps the
        # rest of its conversation waiting. The events behind a head taken here are
        # leased with it.
        async with self._bookkeeping() as conn:
            rows = await conn.fetch(
                f"""WITH heads AS (
                        SELECT DISTINCT ON (conversation_id) position FROM webhook_outbox
                        ORDER BY conversation_id, position
                    ), due AS (
                        SELECT o.position, o.conversation_id FROM webhook_outbox o
                        JOIN heads h ON h.position = o.position
                        WHERE o.next_at <= $1 AND (o.lease_until IS NULL OR o.lease_until <= $1)
                        ORDER BY o.position LIMIT $3
                        FOR UPDATE OF o SKIP LOCKED
                    ), runs AS (
                        SELECT r.position FROM due d CROSS JOIN LATERAL (
                            SELECT x.position FROM webhook_outbox x
                            WHERE x.conversation_id = d.conversation_id
                              AND x.position >= d.position
                            ORDER BY x.position LIMIT $4
                        ) r
                    )
                    UPDATE webhook_outbox o SET lease_until = $1 + $2
                    FROM runs WHERE o.position = runs.position
                    RETURNING {", ".join("o." + c for c in _OUTBOX_COLUMNS.split(", "))}""",
                now,
                lease,
                limit,
                max(1, run),
            )
        return sorted((_outbox_row(r) for r in rows), key=lambda r: r.position)

    async def outbox_delivered(self, positions: Sequence[int]) -> None:
        async with self._bookkeeping() as conn:
            await conn.execute(
                "DELETE FROM webhook_outbox WHERE position = ANY($1::bigint[])", list(positions)
            )

    async def outbox_retry(self, position: int, *, attempts: int, next_at: float) -> None:
        async with self._bookkeeping() as conn:
            await conn.execute(
                """UPDATE webhook_outbox SET attempts = $2, next_at = $3, lease_until = NULL
                   WHERE position = $1""",
                position,
                attempts,
                next_at,
            )

    async def outbox_release(self, positions: Sequence[int]) -> None:
        async with self._bookkeeping() as conn:
            await conn.execute(
                "UPDATE webhook_outbox SET lease_until = NULL WHERE position = ANY($1::bigint[])",
                list(positions),
            )

    async def outbox_unstamped(self, limit: int) -> list[OutboxRow]:
        async with self._acquire() as conn:
            rows = await conn.fetch(
                f"""SELECT {_OUTBOX_COLUMNS} FROM webhook_outbox WHERE NOT stamped
                    ORDER BY position LIMIT $1""",
                limit,
            )
        return [_outbox_row(r) for r in rows]

    async def outbox_stamp(self, stamps: Sequence[tuple[int, bytes]]) -> None:
        if not stamps:
            return
        async with self._bookkeeping() as conn:
            await conn.execute(
                """UPDATE webhook_outbox o SET data = v.d, stamped = true
                   FROM unnest($1::bigint[], $2::bytea[]) AS v(p, d) WHERE o.position = v.p""",
                [position for position, _ in stamps],
                [data for _, data in stamps],
            )

    async def outbox_stats(self) -> tuple[int, float | None]:
        async with self._acquire() as conn:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, min(created_at) AS t FROM webhook_outbox"
            )
        assert row is not None
        oldest = row["t"]
        return int(row["n"]), None if oldest is None else float(oldest)
