// What the demo page follows beside the SDK's store: changes to messages (edits,
// deletions, reactions) as they arrive, presence, and per-conversation counts from the
// server (read_seq, mention_count).
//
// Changes are log entries with their own seq (docs/protocol.md, "Edits, deletions and
// reactions"). A client whose store already applies them shows the same thing: every
// step here is idempotent (an edit replaces, a deletion tombstones, a reaction adds or
// removes one user), and an entry older than one already applied to the same thing is
// ignored, so a replay by `sync` never undoes a later change.

export class LiveState {
  constructor() {
    this.patches = new Map(); // message id → {seq, message?, deleted?, deleted_at?}
    this.reactionSeq = new Map(); // "message\0emoji\0user" → seq of the last entry applied
    this.reactionOps = new Map(); // message id → Map("emoji\0user" → present?)
    this.presence = new Map(); // user id → {status, last_seen}
    this.counts = new Map(); // conversation id → {read_seq, mention_count, last_seq}
    this.version = 0; // bumped on every change, so renders can tell
  }

  clear() {
    this.patches.clear();
    this.reactionSeq.clear();
    this.reactionOps.clear();
    this.presence.clear();
    this.counts.clear();
    this.version++;
  }

  /** Apply one server frame; true when it changed something shown. */
  onFrame(frame) {
    const d = frame?.data;
    if (!d) return false;
    switch (frame.type) {
      case 'message.updated':
        return this._update(d);
      case 'message.deleted':
        return this._delete(d);
      case 'reaction.added':
      case 'reaction.removed':
        return this._react(d, frame.type === 'reaction.added');
      case 'presence':
        return this.setPresence([d]);
      default:
        return false;
    }
  }

  _update(d) {
    const m = d.message;
    if (!m || m.id == null) return false;
    const id = String(m.id);
    const old = this.patches.get(id);
    if (old && (old.deleted || old.seq >= Number(d.seq))) return false;
    this.patches.set(id, { ...old, seq: Number(d.seq) || 0, message: m, deleted: !!m.deleted });
    this.reactionOps.delete(id); // the message carries its reactions as of this entry
    this.version++;
    return true;
  }

  _delete(d) {
    if (d.message_id == null) return false;
    const id = String(d.message_id);
    const old = this.patches.get(id);
    if (old?.deleted) return false;
    this.patches.set(id, { ...old, seq: Number(d.seq) || 0, deleted: true, deleted_at: d.deleted_at ?? null });
    this.version++;
    return true;
  }

  _react(d, added) {
    if (d.message_id == null || d.user_id == null || !d.emoji) return false;
    const id = String(d.message_id);
    const key = `${id}\u0000${d.emoji}\u0000${d.user_id}`;
    const seq = Number(d.seq) || 0;
    if ((this.reactionSeq.get(key) ?? -1) > seq) return false;
    const patch = this.patches.get(id);
    if (patch?.message && patch.seq > seq) return false; // that update already holds it
    this.reactionSeq.set(key, seq);
    if (!this.reactionOps.has(id)) this.reactionOps.set(id, new Map());
    this.reactionOps.get(id).set(`${d.emoji}\u0000${d.user_id}`, added);
    this.version++;
    return true;
  }

  /** `list`: [{user_id, status, last_seen}], from `presence` events or GET /api/presence. */
  setPresence(list) {
    let changed = false;
    for (const p of list || []) {
      if (!p || p.user_id == null) continue;
      const old = this.presence.get(String(p.user_id));
      if (old && old.status === p.status && old.last_seen === p.last_seen) continue;
      this.presence.set(String(p.user_id), { status: p.status, last_seen: p.last_seen ?? null });
      changed = true;
    }
    if (changed) this.version++;
    return changed;
  }

  /** Counts of a GET /api/conversations answer or a connection.established frame. */
  setCounts(id, info) {
    if (!info) return;
    const old = this.counts.get(id);
    const next = {
      read_seq: Math.max(Number(info.read_seq) || 0, old?.read_seq || 0),
      mention_count: Number(info.mention_count) || 0,
      last_seq: Number(info.last_seq) || 0,
    };
    if (old && next.last_seq < old.last_seq) return; // an older answer than one held
    this.counts.set(id, next);
    this.version++;
  }

  /** `m` as it is now: the store's message with the changes that arrived since. */
  apply(m) {
    if (!m || m.id == null) return m;
    const id = String(m.id);
    const patch = this.patches.get(id);
    const ops = this.reactionOps.get(id);
    if (!patch && !ops) return m;
    let out = { ...m };
    if (patch?.message) {
      const pm = patch.message;
      out = { ...out, content: pm.content, edited_at: pm.edited_at ?? null, reactions: pm.reactions ?? {},
        mentions: pm.mentions ?? out.mentions, attachments: pm.attachments ?? out.attachments };
    }
    if (ops) {
      const reactions = {};
      for (const [emoji, users] of Object.entries(out.reactions || {})) reactions[emoji] = [...users];
      for (const [key, present] of ops) {
        const [emoji, user] = key.split('\u0000');
        const users = reactions[emoji] || [];
        if (present && !users.includes(user)) reactions[emoji] = [...users, user];
        if (!present && users.includes(user)) reactions[emoji] = users.filter((u) => u !== user);
        if (reactions[emoji] && !reactions[emoji].length) delete reactions[emoji];
      }
      out.reactions = reactions;
    }
    if (patch?.deleted || out.deleted) {
      out = { ...out, deleted: true, content: '', attachments: [], reactions: {}, mentions: [] };
    }
    return out;
  }
}
