// Links committed ledger entries into the chain (issue 16). Writers append unlinked entries in their
// own transactions and never wait for the chain head; one sequencer at a time (a transaction-scoped
// advisory lock, so one node of several) takes the committed unlinked entries in append order, gives
// each the next position, the previous hash and its own hash, and commits. It runs every
// `intervalMs`, so the not-yet-linked window is bounded (verify reports it and fails past a limit).
// After linking it writes a signed checkpoint every `checkpointEvery` entries or `checkpointMs`.
import type { Logger } from 'pino';
import type { SigningRingFile } from '../auth/signing-keys.js';
import { withTransaction, type Db, type Queryable } from '../storage/db.js';

import { chainHead, linkEntries, pendingEntries, trySequencerLock } from '../storage/audit-store.js';
import { GENESIS, linkHash } from './chain.js';
import { checkCheckpoint, checkpointKeys, signCheckpoint, type CheckpointSink } from './checkpoint.js';

/** pg_advisory_xact_lock key of the sequencer ("vesta-audit-seq"). */
export const SEQUENCER_LOCK = 0x7665737461_5351n;
const BATCH = 2000;

export interface SequencerOptions {
  ledger: string;
  ring: SigningRingFile;
  sink: CheckpointSink;
  intervalMs: number;
  checkpointEvery: number;
  checkpointMs: number;
  log: Logger;
  clock?: () => Date;
}

export class AuditSequencer {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<number> | undefined;
  private lastCheckpoint: { size: number; at: number } | undefined;
  private readonly clock: () => Date;

  constructor(
    private readonly knex: Db,
    private readonly o: SequencerOptions,
  ) {
    this.clock = o.clock ?? (() => new Date());
  }

  async start(): Promise<void> {
    const last = (await this.o.sink.list()).at(-1);
    if (last) {
      const c = await checkCheckpoint(last, checkpointKeys(this.o.ring));
      if (c.ok) this.lastCheckpoint = { size: c.payload.size, at: Date.parse(c.payload.time) };
    }
    if (this.o.intervalMs > 0) {
      this.timer = setInterval(() => void this.run().catch((e: unknown) => this.o.log.error({ err: { message: (e as Error)?.message } }, 'audit sequencer failed')), this.o.intervalMs);
      this.timer.unref();
    }
  }

  /** Links what is pending now (and checkpoints when due); the number of entries linked. */
  run(): Promise<number> {
    this.running ??= (async () => {
      try {
        let total = 0;
        for (;;) {
          const links = await this.linkBatch();
          total += links.length;
          // At least every `checkpointEvery` entries: a checkpoint at each such size inside the batch.
          for (const l of links) {
            const size = l.position + 1;
            if (size - (this.lastCheckpoint?.size ?? 0) >= this.o.checkpointEvery) await this.checkpoint(size, l.hash);
          }
          if (links.length < BATCH) break;
        }
        await this.maybeCheckpoint(false);
        return total;
      } finally {
        this.running = undefined;
      }
    })();
    return this.running;
  }

  /** Links everything pending and writes a checkpoint of the head if it moved (shutdown, tests, `audit checkpoint`). */
  async flush(): Promise<void> {
    while (this.running) await this.running.catch(() => undefined);
    await this.run();
    await this.maybeCheckpoint(true);
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.flush().catch((e: unknown) => this.o.log.error({ err: { message: (e as Error)?.message } }, 'audit sequencer final flush failed'));
  }

  private async linkBatch(): Promise<{ position: number; hash: Buffer }[]> {
    return withTransaction(this.knex, async (tx) => {
      if (!(await trySequencerLock(tx, SEQUENCER_LOCK))) return [];
      const pending = await pendingEntries(tx, BATCH);
      if (!pending.length) return [];
      const head = await chainHead(tx);
      let position = head ? head.position + 1 : 0;
      let prev = head?.hash ?? GENESIS;
      const links = pending.map((p) => {
        const hash = linkHash(prev, position, p.digest);
        const link = { seq: p.seq, position, prevHash: prev, hash };
        prev = hash;
        position++;
        return link;
      });
      await linkEntries(tx, links);
      return links;
    });
  }

  private async maybeCheckpoint(force: boolean): Promise<void> {
    const head = await chainHead(this.knex as Queryable);
    if (!head) return;
    const size = head.position + 1;
    const last = this.lastCheckpoint;
    if (last && size <= last.size) return;
    const now = this.clock().getTime();
    const due = force || !last || size - last.size >= this.o.checkpointEvery || now - last.at >= this.o.checkpointMs;
    if (due) await this.checkpoint(size, head.hash);
  }

  private async checkpoint(size: number, head: Buffer): Promise<void> {
    const now = this.clock().getTime();
    const jws = await signCheckpoint(this.o.ring, { ledger: this.o.ledger, size, head: head.toString('hex'), time: new Date(now).toISOString() });
    await this.o.sink.append(jws);
    this.lastCheckpoint = { size, at: now };
  }
}
