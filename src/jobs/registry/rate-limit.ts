// A token bucket for the requests one registry client sends (issue 17: "rate limit"): a burst of up to
// `requests`, then `requests` per `perSeconds`. A caller over the limit waits for its turn; nothing fails.
import { setTimeout as sleep } from 'node:timers/promises';

export interface RateLimit {
  requests: number;
  perSeconds: number;
}

export class TokenBucket {
  private readonly capacity: number;
  /** Tokens per millisecond. */
  private readonly rate: number;
  private tokens: number;
  private updatedAt: number;

  constructor(
    limit: RateLimit,
    private readonly now: () => number = () => performance.now(),
  ) {
    if (!(limit.requests >= 1) || !(limit.perSeconds > 0)) throw new RangeError('a rate limit needs requests >= 1 and perSeconds > 0');
    this.capacity = limit.requests;
    this.rate = limit.requests / (limit.perSeconds * 1000);
    this.tokens = this.capacity;
    this.updatedAt = this.now();
  }

  /** Resolves when the caller may send one request; rejects only when `signal` aborts the wait. */
  async take(signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    const t = this.now();
    this.tokens = Math.min(this.capacity, this.tokens + (t - this.updatedAt) * this.rate);
    this.updatedAt = t;
    // Taking below zero reserves the next token: waiters queue in arrival order without a list.
    this.tokens -= 1;
    if (this.tokens >= 0) return;
    try {
      await sleep(Math.ceil(-this.tokens / this.rate), undefined, signal ? { signal } : {});
    } catch (e) {
      // An abandoned wait gives its reservation back.
      this.tokens += 1;
      throw signal?.reason ?? e;
    }
  }
}
