/**
 * The rules both SDKs share, on the generated protocol constants (protocol.gen.js, from
 * parley/codes.py): reconnect backoff and jitter, receipt batches, the status rule.
 * tests/fixtures/behaviour/*.json check them here and in the Python SDK alike.
 */
import {
  BACKOFF_BASE_MS,
  BACKOFF_CAP_MS,
  BACKOFF_JITTER,
  CloseCode,
  ErrorCode,
  HEARTBEAT_INTERVAL_MS,
  MAX_RETRIES as MAX_RETRIES_,
  RECEIPT_BATCH,
  RETRY_DELAY_MS,
  RETRYABLE_ERRORS as RETRYABLE_LIST,
  SEND_BURST,
  SEND_RATE,
  TERMINAL_CLOSE_CODES,
} from './protocol.gen.js';

export * from './protocol.gen.js';

// Names of earlier versions of this SDK, kept for applications that import them.
export const HEARTBEAT_INTERVAL = HEARTBEAT_INTERVAL_MS;
export const MAX_RETRIES = MAX_RETRIES_;
export const RETRY_DELAY = RETRY_DELAY_MS;
export const MAX_RECEIPT_IDS = RECEIPT_BATCH;

export const RETRYABLE_ERRORS = new Set(RETRYABLE_LIST);

/** Whether a close code means "do not reconnect on your own". */
export function isTerminalClose(code) {
  return TERMINAL_CLOSE_CODES.includes(code);
}

/** The seed's backoff: min(1000 · 2^attempt, 30000) ms. */
export function getBackoffDelay(attempt) {
  return Math.min(BACKOFF_BASE_MS * Math.pow(2, Math.min(attempt, 64)), BACKOFF_CAP_MS);
}

/** The seed's backoff plus up to BACKOFF_JITTER of itself, so clients do not stampede. */
export function reconnectDelay(attempt, random = Math.random) {
  const raw = getBackoffDelay(attempt);
  return raw + raw * BACKOFF_JITTER * random();
}

/** The ids a receipt frame carries: the newest RECEIPT_BATCH (receipts are cursors). */
export function receiptBatch(ids) {
  return ids.length > RECEIPT_BATCH ? ids.slice(-RECEIPT_BATCH) : ids.slice();
}

/**
 * [read_upto, delivered_upto] over the cursors [read_seq, delivered_seq] of every member
 * but the sender (a member who read has received), or null when there is none.
 */
export function receiptFloors(others) {
  if (!others.length) return null;
  let read = Infinity;
  let delivered = Infinity;
  for (const [r, d] of others) {
    read = Math.min(read, r);
    delivered = Math.min(delivered, Math.max(r, d));
  }
  return [read, delivered];
}

/** 'read' when every other member read `seq`, else 'delivered' when every other has it, else 'sent'. */
export function aggregateStatus(seq, others) {
  const floors = receiptFloors(others);
  if (floors === null) return 'sent';
  if (seq <= floors[0]) return 'read';
  if (seq <= floors[1]) return 'delivered';
  return 'sent';
}

/** How long to wait before resending a send refused with `error`. */
export function retryDelayFor(error, retryDelay = RETRY_DELAY_MS) {
  if (error && error.code === ErrorCode.RATE_LIMITED && error.retry_after_ms) {
    return Math.max(Number(error.retry_after_ms) || 0, retryDelay);
  }
  return retryDelay;
}

/**
 * Send pacing, a token bucket (the clock is passed in, in ms): `burst` sends at once, then
 * `rate` per second, below the server's default rate limit. Rate 0: no pacing. The same
 * as parley/client/pacing.py; tests/fixtures/sdk checks both.
 */
export class Pacer {
  constructor(rate = SEND_RATE, burst = SEND_BURST, now = 0) {
    this.rate = rate;
    this.burst = burst;
    this._tokens = burst;
    this._at = now;
  }

  _refill(now) {
    if (now > this._at) {
      this._tokens = Math.min(this.burst, this._tokens + ((now - this._at) / 1000) * this.rate);
      this._at = now;
    }
  }

  /** Milliseconds from `now` until the next send may go (0: at once). */
  wait(now) {
    if (this.rate === 0) return 0;
    this._refill(now);
    return this._tokens >= 1 ? 0 : ((1 - this._tokens) / this.rate) * 1000;
  }

  /** Count one send made at `now`. */
  take(now) {
    if (this.rate === 0) return;
    this._refill(now);
    this._tokens -= 1;
  }
}

export { CloseCode, ErrorCode };
