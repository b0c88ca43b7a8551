// Re-seal after key rotation (design.md "PHI at rest"): re-encrypts every sealed version still on
// an older key with the active key, in small transactions, reporting progress. Idempotent and
// resumable: it only ever looks for rows not on the active key, so a re-run continues where a
// stopped one ended (safe under at-least-once delivery).
import type { Services } from '../interactions/context.js';
import { withTransaction } from '../storage/db.js';

export interface ResealProgress {
  done: number;
  total: number;
}

export async function runReseal(
  svc: Pick<Services, 'db' | 'store' | 'log'>,
  opts: { batchSize?: number; onProgress?: (p: ResealProgress) => void; shouldStop?: () => boolean } = {},
): Promise<ResealProgress> {
  const batch = opts.batchSize ?? 200;
  const total = await svc.store.countStale(svc.db.knex);
  let done = 0;
  opts.onProgress?.({ done, total });
  // Passes in seq order; rows another worker or a writer held (SKIP LOCKED) are left behind by a
  // pass and picked up by the next, which starts over; a pass that re-seals nothing ends the job.
  let after = 0;
  while (!opts.shouldStop?.()) {
    const from = after;
    const n = await withTransaction(svc.db.knex, (tx) => svc.store.resealSome(tx, batch, from));
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
