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
    return (await this._request(path, options)).data;
  }

  /** { status, data } of a JSON REST call; throws ParleyApiError on an error status. */
  async _request(path, { method = 'GET', body } = {}) {
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

  /**
   * Search the caller's conversations (docs/protocol.md, "Search"): words, "phrases" and
   * -exclusions. Resolves to { messages, has_more, next_offset }, best match first; pass
   * next_offset as offset for the next page.
   */
  search(q, { conversationId, limit, offset } = {}) {
    const params = new URLSearchParams({ q: String(q) });
    if (conversationId !== undefined) params.set('conversation_id', String(conversationId));
    if (limit !== undefined) params.set('limit', String(limit));
    if (offset !== undefined) params.set('offset', String(offset));
    return this.api(`/api/search?${params}`);
  }

  /**
   * Send over REST, for a backend or a bot with no socket open (docs/protocol.md,
   * "Sending from a backend"). localId is the idempotency key: a repeat resolves to the
   * original with created false. senderId needs an admin token. Resolves to
   * { message, created } once the message is committed and fanned out.
   */
  async sendMessage(conversationId, content, { localId, replyTo, attachmentIds, mentions, senderId } = {}) {
    if (!localId) throw new TypeError('sendMessage over REST needs a localId (the idempotency key)');
    const body = { content: String(content), local_id: String(localId) };
    if (replyTo !== undefined && replyTo !== null) body.reply_to = String(replyTo);
    if (attachmentIds && attachmentIds.length) body.attachments = attachmentIds.map((id) => ({ id: String(id) }));
    if (mentions !== undefined) body.mentions = mentions.map(String);
    if (senderId !== undefined) body.sender_id = String(senderId);
    const path = `/api/conversations/${encodeURIComponent(String(conversationId))}/messages`;
    const { status, data } = await this._request(path, { method: 'POST', body });
    return { message: data, created: status === 201 };
  }

  createConversation(memberIds, title = undefined) {
    const body = { member_ids: memberIds.map(String) };
    if (title) body.title = title;
    return this.api('/api/conversations', { method: 'POST', body });
  }
}
