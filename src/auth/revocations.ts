// Revoked token ids, shared by every node through the revoked_token table. Each node keeps the
// list of unexpired revocations in memory and reads the rows recorded since its last look every
// `refreshMs`, so a check costs no query and a revocation made on another node applies within one
// refresh interval (and at once on the node that made it).
import type { Queryable } from '../storage/db.js';
import { insertRevocation, pruneRevocations, revocationsSince } from '../storage/revocation-store.js';

const PRUNE_EVERY_MS = 3600_000;

export class RevocationList {
  private readonly revoked = new Map<string, number>();
  private lastRead: Date | undefined;
  private timer: NodeJS.Timeout | undefined;
  private refreshing: Promise<void> | undefined;
  private lastPrune = 0;

  constructor(
    private readonly q: Queryable,
    private readonly refreshMs: number,
    private readonly clock: () => Date = () => new Date(),
  ) {}

  /** Loads the list and starts the periodic refresh. */
  async start(): Promise<void> {
    await this.refresh();
    if (this.refreshMs > 0) {
      this.timer = setInterval(() => {
        this.refresh().catch(() => undefined);
      }, this.refreshMs);
      this.timer.unref();
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Reads revocations recorded since the last read (with a margin for clock skew between nodes and commit delays). */
  refresh(): Promise<void> {
    this.refreshing ??= (async () => {
      try {
        const now = this.clock();
        const since = this.lastRead ? new Date(this.lastRead.getTime() - 60_000) : undefined;
        for (const r of await revocationsSince(this.q, since, now)) this.revoked.set(r.jti, r.expiresAt.getTime());
        for (const [jti, exp] of this.revoked) if (exp < now.getTime()) this.revoked.delete(jti);
        // Rows of tokens that have expired anyway are removed now and then (any node may do it).
        if (now.getTime() - this.lastPrune > PRUNE_EVERY_MS) {
          this.lastPrune = now.getTime();
          await this.prune();
        }
        this.lastRead = now;
      } finally {
        this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }

  has(jti: string): boolean {
    return this.revoked.has(jti);
  }

  /** Revokes a token id until `expiresAt` (when the token would stop working anyway). */
  async revoke(jti: string, expiresAt: Date): Promise<void> {
    await insertRevocation(this.q, jti, expiresAt);
    this.revoked.set(jti, expiresAt.getTime());
  }

  async prune(): Promise<number> {
    return pruneRevocations(this.q, this.clock());
  }
}
