// Criteria matching for conditional create/update/delete/patch
// (https://hl7.org/fhir/R4/http.html#ccreate, #cond-update, #3.1.0.7.1). Interactions on the same
// criteria are serialized by a transaction-scoped advisory lock, so "search then write" cannot race.
import { canonicalCriteria, parseCriteria } from '../search/parse.js';
import { planWhere } from '../search/plan.js';
import type { PhiIndexMode } from '../search/phi-seam.js';
import { lockCriteria, searchIds } from '../storage/search-store.js';
import type { Tx } from '../storage/db.js';
import { lockKey } from './common.js';

/**
 * Locks the criteria and returns up to two matching ids (enough to tell 0, 1 and many apart). `phi`
 * is how the store keeps PHI (criteria on sealed PHI match through its blind index; without it they
 * are refused).
 */
export async function lockAndMatch(tx: Tx, type: string, criteria: string, phi?: PhiIndexMode): Promise<string[]> {
  const req = parseCriteria(type, criteria, phi ? { phi } : {});
  await lockCriteria(tx, lockKey(canonicalCriteria(req)));
  return searchIds(tx, planWhere(req), { limit: 2 });
}
