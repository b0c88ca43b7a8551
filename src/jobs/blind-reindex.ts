// Blind re-index (design.md "PHI at rest"): computes the blind index rows of current resources whose
// rows are missing (written before blind indexes existed, when identifier was still indexed in the
// clear) or were computed with another blind key. Each resource is opened, its index rows extracted
// again and written through the same path as a write (sealed values to idx_blind, the rest in the
// clear), under a row lock so a concurrent write of the same resource waits. Idempotent and resumable:
// it only looks for resources not on the active blind key (safe under at-least-once delivery).
import { PhiIntegrityError } from '../crypto/jwe-codec.js';
import type { Services } from '../interactions/context.js';
import { extractIndexRows } from '../search/index-extract.js';
import { claimBlindStale, countBlindStale } from '../storage/blind-index-store.js';
import { randomUUID } from 'node:crypto';
import { withTransaction } from '../storage/db.js';
import { recordJobStep } from '../interactions/audit.js';
import { writeIndexRows, type IndexWrite } from '../storage/search-store.js';
import type { ResealProgress } from './reseal.js';

export type ReindexProgress = ResealProgress & { failed: number };

/** Resources still to re-index (0 without sealing). */
export async function countBlindReindex(svc: Pick<Services, 'db' | 'store'>): Promise<number> {
  const mode = svc.store.phiIndexMode;
  if (!mode.sealed || !mode.blind) return 0;
  return countBlindStale(svc.db.knex, [...mode.blind.protectedTypes()], mode.blind.kid);
}

export async function runBlindReindex(
  svc: Pick<Services, 'db' | 'store' | 'log' | 'audit'>,
  opts: { batchSize?: number; onProgress?: (p: ReindexProgress) => void; shouldStop?: () => boolean } = {},
): Promise<ReindexProgress> {
  const mode = svc.store.phiIndexMode;
  const blind = mode.sealed ? mode.blind : undefined;
  if (!blind) return { done: 0, total: 0, failed: 0 };
  const types = [...blind.protectedTypes()];
  const batch = opts.batchSize ?? 100;
  const total = await countBlindStale(svc.db.knex, types, blind.kid);
  let done = 0;
  let failed = 0;
  // Resources that do not open are skipped for this run (logged); the cursor moves past them.
  let after: { type: string; id: string } | undefined;
  let wrotePass = false;
  const job = { name: 'blind-reindex', runId: randomUUID(), scope: 'system/*.u' };
  opts.onProgress?.({ done, total, failed });
  while (!opts.shouldStop?.()) {
    const n = await withTransaction(svc.db.knex, async (tx) => {
      const claimed = await claimBlindStale(tx, types, blind.kid, batch, after);
      const writes: IndexWrite[] = [];
      let bad = 0;
      for (const ref of claimed) {
        try {
          const v = await svc.store.readCurrent(tx, ref.type, ref.id);
          if (v?.resource) writes.push({ resourceType: ref.type, id: ref.id, rows: extractIndexRows(v.resource), replace: true });
        } catch (e) {
          if (!(e instanceof PhiIntegrityError)) throw e;
          bad += 1;
          svc.log.error({ resourceType: ref.type, id: ref.id, kid: e.kid }, 'blind re-index: sealed PHI failed its integrity check; resource skipped');
        }
      }
      await writeIndexRows(tx, writes, mode);
      if (writes.length) await recordJobStep(svc, tx, job, writes.map((w) => ({ type: w.resourceType, id: w.id })), `re-indexed the blind index rows of ${writes.length} resources`);
      return { claimed, written: writes.length, bad };
    });
    if (!n.claimed.length) {
      // End of a pass: rows a writer held (SKIP LOCKED) were re-indexed by that write, unless it rolled
      // back; another pass picks those up, and stops once a pass writes nothing.
      if (after === undefined || !wrotePass) break;
      after = undefined;
      wrotePass = false;
      continue;
    }
    after = n.claimed[n.claimed.length - 1];
    wrotePass ||= n.written > 0;
    done += n.written;
    failed += n.bad;
    opts.onProgress?.({ done, total: Math.max(total, done + failed), failed });
  }
  return { done, total: Math.max(total, done + failed), failed };
}
