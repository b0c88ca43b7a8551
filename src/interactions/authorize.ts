// Where interactions ask auth/access.ts its three questions, with the request's principal and the
// store's PHI mode (design.md "The interaction chokepoint"). Every interaction, every Bundle entry
// and every job goes through these, never around them.
//
// 403 or 404 (docs/authorization.md, "403 or 404"): a token without a scope for the interaction on
// the type gets a 403 naming the missing scope. A resource that exists but lies outside the token's
// reach (another patient's compartment, another category), or a deleted one while the token is
// narrowed, answers exactly as a resource that does not exist: 404 on read, vread, instance history
// and patch, "nothing to delete" on delete, If-Match judged as for an absent id, so that a token never
// learns that something it may not read exists. A write whose content would fall outside the token's
// reach is a 403 naming the scope rule, as is an update (PUT) of an id taken by a resource outside
// reach (PUT would otherwise create it; refusing is the only safe answer).
import type { Resource } from 'fhir/r4.js';
import { filterReach, reachOf, requireGrants, searchCondition, type AccessOptions, type ReachCandidate } from '../auth/access.js';
import type { Letter } from '../auth/scopes.js';
import { FhirError } from '../fhir/errors.js';
import type { SqlFragment } from '../search/sql.js';
import type { Queryable } from '../storage/db.js';
import type { NewVersion } from '../storage/resource-store.js';
import type { RequestContext, Services } from './context.js';

export function accessOptions(svc: Services, ctx: RequestContext): AccessOptions {
  return { phi: svc.store.phiIndexMode, baseUrl: ctx.baseUrl };
}

/** Question 1: the principal may run `what` (needing `letter`) on `type`, or a 403 naming the scope. */
export function allow(ctx: RequestContext, type: string, letter: Letter, what: string): void {
  requireGrants(ctx.principal, type, letter, what);
}

/**
 * The types among `types` whose resources the token may search and can reach at least in part (a
 * patient/* grant names every type, but reaches none outside the Patient compartment). For searches
 * over every type (system search without _type, compartment `*`, system history).
 */
export function searchableTypes(svc: Services, ctx: RequestContext, types: readonly string[]): string[] {
  return types.filter((t) => {
    try {
      reachOf(ctx.principal, t, ['s'], 'search', accessOptions(svc, ctx));
      return true;
    } catch {
      return false;
    }
  });
}

/** Question 2: the condition narrowing a search over `types`, undefined when the token reaches all of them. */
export function narrowing(svc: Services, ctx: RequestContext, types: readonly string[], what: string): SqlFragment | undefined {
  return searchCondition(ctx.principal, types, what, accessOptions(svc, ctx));
}

/**
 * The narrowing of the resources a chain or _has hop passes through (search/plan.ts PlanOptions.hopScope):
 * the same reach as the token's searches of that type, so that results never depend on what it may
 * not see. A type it may not search at all reaches nothing (the caller has refused such hops already).
 */
export function hopScope(svc: Services, ctx: RequestContext): (type: string) => SqlFragment | undefined {
  const memo = new Map<string, SqlFragment | undefined>();
  return (type) => {
    if (!memo.has(type)) {
      let cond: SqlFragment | undefined;
      try {
        cond = narrowing(svc, ctx, [type], 'a chain or _has');
      } catch {
        cond = { sql: 'false', bindings: [] };
      }
      memo.set(type, cond);
    }
    return memo.get(type);
  };
}

/** Whether the principal's grants for `type` and `letters` reach every resource of it (no check per resource needed). */
export function reachesAll(svc: Services, ctx: RequestContext, type: string, letters: readonly Letter[]): boolean {
  try {
    return reachOf(ctx.principal, type, letters, 'access', accessOptions(svc, ctx)).all;
  } catch {
    return false;
  }
}

/** Question 3: the indexes of the candidates the principal may see with any of `letters`. */
export function visible(svc: Services, ctx: RequestContext, q: Queryable, letters: readonly Letter[], candidates: ReachCandidate[]): Promise<Set<number>> {
  return filterReach(q, ctx.principal, letters, candidates, accessOptions(svc, ctx));
}

/** A stored current resource within reach for `letter`. */
export async function currentWithinReach(svc: Services, ctx: RequestContext, q: Queryable, letter: Letter, type: string, id: string, resource: Resource | undefined, lastUpdated: Date): Promise<boolean> {
  if (reachesAll(svc, ctx, type, [letter])) return true;
  return (await visible(svc, ctx, q, [letter], [{ resourceType: type, id, resource, lastUpdated, current: true }])).has(0);
}

/**
 * Whether the stored target of an update, patch or delete is within reach for `letter`: 'ok', or
 * 'hidden' when the token may not even read it (the caller answers as for a resource that does not
 * exist), or a 403 when it may read it (it knows the resource exists).
 */
export async function checkTarget(svc: Services, ctx: RequestContext, q: Queryable, letter: Letter, type: string, id: string, lastUpdated: Date): Promise<'ok' | 'hidden'> {
  if (reachesAll(svc, ctx, type, [letter])) return 'ok';
  const c: ReachCandidate = { resourceType: type, id, lastUpdated, current: true };
  if ((await visible(svc, ctx, q, [letter], [c])).has(0)) return 'ok';
  if ((await visible(svc, ctx, q, ['r', 's'], [c])).has(0)) {
    throw new FhirError('forbidden', `${type}/${id} is outside what this token may ${letter === 'd' ? 'delete' : 'update'} (the compartment or constraints of its ${type} scopes)`);
  }
  return 'hidden';
}

/**
 * The head of a write's target as this token may know it: undefined when the target is hidden from it
 * (outside its reach and unreadable to it), or deleted while the token does not reach every resource of
 * the type (a deletion marker has no content to check); a 403 when it may read but not write it.
 */
export async function visibleHead<H extends { deleted: boolean; lastUpdated: Date }>(svc: Services, ctx: RequestContext, q: Queryable, letter: Letter, type: string, id: string, head: H | undefined): Promise<H | undefined> {
  if (!head) return undefined;
  if (head.deleted) return reachesAll(svc, ctx, type, [letter]) ? head : undefined;
  return (await checkTarget(svc, ctx, q, letter, type, id, head.lastUpdated)) === 'hidden' ? undefined : head;
}

/** The letters a new version's content must be within reach for: c for a create, u (and c when it creates) for update and patch. */
export function writeLetters(method: 'POST' | 'PUT' | 'PATCH' | 'DELETE', creates: boolean): Letter[] {
  if (method === 'POST') return ['c'];
  if (method === 'DELETE') return [];
  return creates ? ['c', 'u'] : ['u'];
}

/**
 * New versions (about to be written, index rows extracted) are within reach for the letters each
 * needs; the first that is not fails with a 403 (`label` names it, e.g. a Bundle entry).
 */
export async function requireNewVersions(svc: Services, ctx: RequestContext, q: Queryable, versions: { version: NewVersion; letters: Letter[]; label?: string }[]): Promise<void> {
  const byLetter = new Map<Letter, number[]>();
  versions.forEach((v, i) => {
    if (!v.version.resource) return;
    for (const l of v.letters) {
      if (reachesAll(svc, ctx, v.version.resourceType, [l])) continue;
      byLetter.set(l, [...(byLetter.get(l) ?? []), i]);
    }
  });
  for (const [letter, idx] of byLetter) {
    const candidates = idx.map((i) => {
      const v = versions[i].version;
      return { resourceType: v.resourceType, id: v.id, lastUpdated: v.lastUpdated, current: false, resource: v.resource, rows: v.index };
    });
    const ok = await filterReach(q, ctx.principal, [letter], candidates, accessOptions(svc, ctx));
    const bad = idx.findIndex((_i, k) => !ok.has(k));
    if (bad >= 0) {
      const v = versions[idx[bad]];
      throw new FhirError(
        'forbidden',
        `${v.label ? `${v.label}: ` : ''}the ${v.version.resourceType} would be outside what this token may ${letter === 'c' ? 'create' : 'update'}: no scope granting "${letter}" on ${v.version.resourceType} reaches it (Patient compartment or scope constraints)`,
      );
    }
  }
}
