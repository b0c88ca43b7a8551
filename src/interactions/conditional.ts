// Criteria matching for conditional create/update/delete/patch
// (https://hl7.org/fhir/R4/http.html#ccreate, #cond-update, #3.1.0.7.1). Interactions on the same
// criteria are serialized by a transaction-scoped advisory lock, so "search then write" cannot race.
import { canonicalCriteria, parseCriteria } from '../search/parse.js';
import { planWhere } from '../search/plan.js';
import type { PhiIndexMode } from '../search/phi-seam.js';
import { lockCriteria, searchIds } from '../storage/search-store.js';
import type { Tx } from '../storage/db.js';
import { lockKey } from './common.js';
import type { SqlFragment } from '../search/sql.js';
import type { RequestContext, Services } from './context.js';
import { allow, hopScope, narrowing } from './authorize.js';

/**
 * What the criteria of a conditional interaction may match: only what the token may search
 * (it needs "s" on the type), so that criteria cannot probe resources outside its reach. Undefined
 * when the token searches every resource of the type.
 */
export function matchScope(svc: Services, ctx: RequestContext, type: string, what: string): MatchScope {
  allow(ctx, type, 's', `${what} (its criteria are a search)`);
  const where = narrowing(svc, ctx, [type], what);
  return { ...(where ? { where } : {}), hops: hopScope(svc, ctx) };
}

/** What conditional criteria may match (conditions on `r`) and the narrowing of their chain and _has hops. */
export interface MatchScope {
  where?: SqlFragment;
  hops: (type: string) => SqlFragment | undefined;
}

/**
 * Locks the criteria and returns up to two matching ids (enough to tell 0, 1 and many apart). `phi`
 * is how the store keeps PHI (criteria on sealed PHI match through its blind index; without it they
 * are refused).
 */
export async function lockAndMatch(tx: Tx, type: string, criteria: string, phi?: PhiIndexMode, scope?: MatchScope): Promise<string[]> {
  const req = parseCriteria(type, criteria, phi ? { phi } : {});
  await lockCriteria(tx, lockKey(canonicalCriteria(req)));
  return searchIds(tx, planWhere(req, { ...(scope?.where ? { extra: [scope.where] } : {}), ...(scope ? { hopScope: scope.hops } : {}) }), { limit: 2 });
}
