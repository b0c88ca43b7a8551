// Re-seal after key rotation (design.md "PHI at rest"): re-encrypts every sealed version still on
// an older key with the active key, in small transactions, reporting progress. Idempotent and
// resumable: it only ever looks for rows not on the active key, so a re-run continues where a
// stopped one ended (safe under at-least-once delivery).
import type { Services } from '../interactions/context.js';
import { randomUUID } from 'node:crypto';
import { withTransaction } from '../storage/db.js';
import { recordJobStep } from '../interactions/audit.js';

export interface ResealProgress {
  done: number;
  total: number;
}

export async function runReseal(
  svc: Pick<Services, 'db' | 'store' | 'log' | 'audit'>,
  opts: { batchSize?: number; onProgress?: (p: ResealProgress) => void; shouldStop?: () => boolean } = {},
): Promise<ResealProgress> {
  const batch = opts.batchSize ?? 200;
  const total = await svc.store.countStale(svc.db.knex);
  let done = 0;
  opts.onProgress?.({ done, total });
  // Passes in seq order; rows another worker or a writer held (SKIP LOCKED) are left behind by a
  // pass and picked up by the next, which starts over; a pass that re-seals nothing ends the job.
  let after = 0;
  const job = { name: 'reseal', runId: randomUUID(), scope: 'system/*.u' };
  while (!opts.shouldStop?.()) {
    const from = after;
    // Each batch's AuditEvent commits with it: the job as agent, the versions it re-sealed.
    const n = await withTransaction(svc.db.knex, async (tx) => {
      const r = await svc.store.resealSome(tx, batch, from);
      if (r.claimed) await recordJobStep(svc, tx, job, r.versions, `re-sealed ${r.claimed} versions with the active key`);
      return r;
    });
    if (n.claimed === 0) {
      if (after === 0) break; // this pass, from the start, found nothing
      after = 0;
      continue;
    }
    after = n.lastSeq;
    done += n.claimed;
    opts.onProgress?.({ done, total: Math.max(total, done) });
  }
  return { done, total: Math.max(total, done) };
}
