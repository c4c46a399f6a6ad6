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
  async api(path, { method = 'GET', body } = {}) {
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
    return data;
  }

  async conversations() {
    const data = await this.api('/api/conversations');
    return (data && data.conversations) || [];
  }

  createConversation(memberIds, title = undefined) {
    const body = { member_ids: memberIds.map(String) };
    if (title) body.title = title;
    return this.api('/api/conversations', { method: 'POST', body });
  }
}
