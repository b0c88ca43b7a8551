// Group commit for the audit records of reads (issue 16, "durable before the response is sent; group
// several requests into one append"): callers wait for their record; records that arrive while an
// append is running go together in the next one, so under load one INSERT carries many requests'
// records and a lone request pays one round trip. A failed append rejects every caller of that group:
// their responses fail instead of leaving unrecorded.
import { detached, type Queryable } from '../storage/db.js';
import { appendEvents, type LedgerEvent } from './ledger.js';

export interface GroupAppendOptions {
  /** Most records per INSERT. */
  maxBatch: number;
  /** This server's base URL (appendEvents indexes its absolute references as relative ones). */
  baseUrl?: string;
}

interface Waiting {
  event: LedgerEvent;
  resolve: () => void;
  reject: (e: unknown) => void;
}

export class GroupAppender {
  private queue: Waiting[] = [];
  private flushing: Promise<void> | undefined;
  /** Appends made (INSERT groups), for the bench and tests. */
  appends = 0;

  constructor(
    private readonly q: Queryable,
    private readonly o: GroupAppendOptions,
  ) {}

  /** Resolves once the record is committed in the ledger. */
  append(event: LedgerEvent): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ event, resolve, reject });
      this.kick();
    });
  }

  private kick(): void {
    // One INSERT at a time: records that arrive meanwhile form the next group (measured: two or four
    // INSERTs in flight made smaller groups and fewer reads per second, 2026-12-05).
    if (this.flushing) return;
    // Outside the caller's request scope: the group carries other requests' records too.
    this.flushing = detached(async () => {
      try {
        while (this.queue.length) {
          const group = this.queue.splice(0, this.o.maxBatch);
          try {
            await appendEvents(this.q, group.map((w) => w.event), this.o.baseUrl ? { baseUrl: this.o.baseUrl } : {});
            this.appends++;
            for (const w of group) w.resolve();
          } catch (e) {
            for (const w of group) w.reject(e);
          }
        }
      } finally {
        this.flushing = undefined;
      }
    });
  }

  /** Waits until every record handed in so far is appended (shutdown). */
  async drain(): Promise<void> {
    while (this.flushing) await this.flushing;
  }
}
