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
  while (!opts.shouldStop?.()) {
    const n = await withTransaction(svc.db.knex, (tx) => svc.store.resealSome(tx, batch));
    if (n === 0) break;
    done += n;
    opts.onProgress?.({ done, total: Math.max(total, done) });
  }
  return { done, total: Math.max(total, done) };
}
