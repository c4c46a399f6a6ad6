/** The REST calls a chat page needs, with the current token (refreshed once on 401). */

/** A REST call that answered with an error status. */
export class ParleyApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || `HTTP ${status}`);
    this.name = 'ParleyApiError';
    this.status = status;
    this.code = (error && error.code) || null;
  }
}

export class RestClient {
  /** { apiUrl, fetch, getToken: () => token, refreshToken: async () => token | null } */
  constructor({ apiUrl = '', fetch = (...args) => globalThis.fetch(...args), getToken, refreshToken = null }) {
    this.apiUrl = apiUrl;
    this._fetch = fetch;
    this._getToken = getToken;
    this._refreshToken = refreshToken;
  }

  /** A JSON REST call; throws ParleyApiError on an error status. */
  async api(path, options = {}) {
    return (await this._call(path, options)).data;
  }

  async _call(path, { method = 'GET', body } = {}) {
    const call = () =>
      this._fetch(`${this.apiUrl}${path}`, {
        method,
        headers: {
          Authorization: `Bearer ${this._getToken()}`,
          ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}),
        },
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
    let res = await call();
    if (res.status === 401 && this._refreshToken) {
      await this._refreshToken();
      res = await call();
    }
    const data = await res.json().catch(() => null);
    if (!res.ok) throw new ParleyApiError(res.status, data && data.error);
    return { status: res.status, data };
  }

  async conversations() {
    const data = await this.api('/api/conversations');
    return (data && data.conversations) || [];
  }

  /** GET /api/search?q=&conversation_id=&limit=&offset= → {messages, ...}, best first. */
  search(q, { conversationId = null, limit = null, offset = null } = {}) {
    const params = new URLSearchParams({ q: String(q) });
    if (conversationId != null) params.set('conversation_id', String(conversationId));
    if (limit != null) params.set('limit', String(limit));
    if (offset != null) params.set('offset', String(offset));
    return this.api(`/api/search?${params}`);
  }

  /**
   * POST /api/conversations/{id}/messages (a backend's send, no WebSocket): resolves to
   * {message, created}; created is false when this localId was sent before (the original
   * comes back, nothing is sent again). senderId needs an admin token.
   */
  async sendMessage(conversationId, content, { localId, replyTo = null, mentions = null, attachments = null, senderId = null } = {}) {
    if (typeof localId !== 'string' || !localId) throw new TypeError('sendMessage needs a localId (its idempotency key)');
    const body = { content, local_id: localId };
    if (replyTo != null) body.reply_to = String(replyTo);
    if (mentions) body.mentions = mentions.map(String);
    if (attachments) body.attachments = attachments.map((a) => (typeof a === 'string' ? { id: a } : { id: a.id }));
    if (senderId != null) body.sender_id = String(senderId);
    const { status, data } = await this._call(`/api/conversations/${encodeURIComponent(conversationId)}/messages`, { method: 'POST', body });
    return { message: data, created: status === 201 };
  }

  /** GET /api/presence?user_ids= → [{user_id, status, last_seen}] of those who share a conversation with me. */
  async presence(userIds) {
    const ids = (userIds || []).map(String);
    if (!ids.length) return [];
    const data = await this.api(`/api/presence?${new URLSearchParams({ user_ids: ids.join(',') })}`);
    return (data && data.presence) || [];
  }

  createConversation(memberIds, title = undefined) {
    const body = { member_ids: memberIds.map(String) };
    if (title) body.title = title;
    return this.api('/api/conversations', { method: 'POST', body });
  }
}
