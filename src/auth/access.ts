// The three authorization questions of every interaction (SMART App Launch "Scopes and Launch
// Context"; design.md "The interaction chokepoint"), in one place:
//   1. may this principal run this interaction on this type?          -> requireGrants (403 otherwise)
//   2. which criteria narrow its searches?                            -> reachCondition (SQL on `r`)
//   3. may it see (or write) this resource?                           -> filterReach
// A grant reaches the resources of its type that satisfy its criteria: the patient's compartment for
// patient/ grants, and the v2 constraint parameters. Criteria are planned by the search engine itself
// (search/plan.ts) and evaluated by PostgreSQL, against stored index rows for current versions and
// against a version's own index rows otherwise: there is no second matcher that could drift from SQL.
import type { Resource } from 'fhir/r4.js';
import { FhirError } from '../fhir/errors.js';
import { compartmentCondition } from '../search/compartment.js';
import { extractIndexRows, type IndexRows } from '../search/index-extract.js';
import { parseSearch } from '../search/parse.js';
import { planWhere } from '../search/plan.js';
import { isBlindParam, type PhiIndexMode } from '../search/phi-seam.js';
import { and, frag, or, type SqlFragment } from '../search/sql.js';
import { matchCandidates, matchCurrent, type MatchCandidate } from '../storage/search-store.js';
import type { Queryable } from '../storage/db.js';
import type { Principal } from './principal.js';
import type { Grant, Letter } from './scopes.js';

const LETTER_NAMES: Record<Letter, string> = { c: 'create', r: 'read', u: 'update', d: 'delete', s: 'search' };

/** What a principal may reach of one type with some letters: everything, or the resources satisfying `where`. */
export type Reach = { all: true } | { all: false; where: SqlFragment };

export interface AccessOptions {
  phi: PhiIndexMode;
  baseUrl: string;
}

/** Grants usable for the type and any of the letters (patient/ grants need a patient in context). */
function usable(p: Principal, type: string, letters: readonly Letter[]): Grant[] {
  return p.grants.filter((g) => (g.type === '*' || g.type === type) && letters.some((l) => g.letters.has(l)) && (g.context !== 'patient' || p.patient !== undefined));
}

/** The types among `types` the principal has a usable grant for with `letter` (type-level only). */
export function usableTypes(p: Principal, types: readonly string[], letter: Letter): string[] {
  return types.filter((t) => usable(p, t, [letter]).length > 0);
}

function example(type: string, letter: Letter): string {
  return `patient/${type}.${letter}, user/${type}.${letter} or system/${type}.${letter}`;
}

/**
 * Question 1: the grants that allow `letter` on `type`, or a 403 naming the scope that is missing.
 * `what` names the interaction in the denial (never any content).
 */
export function requireGrants(p: Principal, type: string, letter: Letter, what: string): Grant[] {
  const grants = usable(p, type, [letter]);
  if (grants.length) return grants;
  if (p.kind === 'anonymous') throw new FhirError('unauthorized', 'this request needs a bearer token (Authorization: Bearer <token>)', { headers: { 'WWW-Authenticate': 'Bearer' } });
  const patientOnly = p.grants.some((g) => g.context === 'patient' && (g.type === '*' || g.type === type) && g.letters.has(letter));
  const why = patientOnly ? ' (the token has patient/ scopes for it but no patient in context)' : '';
  throw new FhirError('forbidden', `${what} on ${type} needs a scope granting "${letter}" (${LETTER_NAMES[letter]}) on ${type}, such as ${example(type, letter)}; the token has none${why}`);
}

const memo = new WeakMap<Grant, Map<string, SqlFragment | null>>();

/**
 * The condition on `r` for the resources of `type` a grant reaches, `undefined` for all of them, or
 * null when the grant cannot reach any (its constraint does not apply to the type: an unknown or
 * unsupported parameter, a chain, a sealed PHI parameter; or the type is outside the Patient
 * compartment of a patient/ grant). Malformed grants narrow to nothing; they never widen.
 */
function grantCondition(g: Grant, p: Principal, type: string, opts: AccessOptions): SqlFragment | null | undefined {
  if (g.context !== 'patient' && !g.constraint) return undefined;
  const key = `${type}|${p.patient ?? ''}`;
  let byType = memo.get(g);
  if (!byType) memo.set(g, (byType = new Map()));
  if (byType.has(key)) return byType.get(key);
  let out: SqlFragment | null;
  try {
    const parts: SqlFragment[] = [];
    // The patient in context is itself reachable (the R4 CompartmentDefinition lists Patient only by
    // `link`, which describes /Patient/[id]/Patient, not the patient's own record).
    if (g.context === 'patient') parts.push(type === 'Patient' ? or([frag('r.id = ?', p.patient!), compartmentCondition('Patient', p.patient!, type)]) : compartmentCondition('Patient', p.patient!, type));
    if (g.constraint) {
      const req = parseSearch(type, g.constraint, { strict: true, phi: opts.phi, baseUrl: opts.baseUrl });
      const plain = req.clauses.every((c) => c.path.length === 0 && !isBlindParam(type, c.code, opts.phi));
      if (!plain || req.includes.length || Object.keys(req.control).length || req.clauses.length !== g.constraint.length) throw new Error('unsupported constraint');
      parts.push(planWhere(req, { types: [type] }));
    }
    out = and(parts);
  } catch {
    out = null;
  }
  byType.set(key, out);
  return out;
}

/**
 * Question 2: what the principal reaches of `type` with any of `letters`, as one condition (the
 * grants ORed). Throws 403 when no grant reaches anything of the type.
 */
export function reachOf(p: Principal, type: string, letters: readonly Letter[], what: string, opts: AccessOptions): Reach {
  const grants = usable(p, type, letters);
  if (!grants.length) requireGrants(p, type, letters[0], what);
  const conds: SqlFragment[] = [];
  for (const g of grants) {
    const c = grantCondition(g, p, type, opts);
    if (c === undefined) return { all: true };
    if (c !== null) conds.push(c);
  }
  if (!conds.length) {
    throw new FhirError('forbidden', `${what} on ${type}: the token's scopes for ${type} (${grants.map((g) => g.scope).join(' ')}) reach no ${type} resource (outside the Patient compartment, or a constraint Vesta cannot apply to ${type})`);
  }
  return { all: false, where: or(conds) };
}

/** The condition narrowing a search over `types` (ORed per type), or undefined when nothing is narrowed. */
export function searchCondition(p: Principal, types: readonly string[], what: string, opts: AccessOptions): SqlFragment | undefined {
  const parts: SqlFragment[] = [];
  let narrowed = false;
  for (const t of types) {
    const reach = reachOf(p, t, ['s'], what, opts);
    if (reach.all) parts.push(frag('r.resource_type = ?', t));
    else {
      narrowed = true;
      parts.push(reach.where);
    }
  }
  return narrowed ? or(parts) : undefined;
}

/** A resource (version) to check against a reach: the current version (stored index rows) or any other. */
export interface ReachCandidate {
  resourceType: string;
  id: string;
  /** The content; absent for a deletion marker. */
  resource?: Resource;
  lastUpdated: Date;
  /** True when this is the stored current version (its index rows are in the index tables). */
  current: boolean;
  /** The version's index rows when already extracted (a version about to be written). */
  rows?: IndexRows;
}

/**
 * Question 3: the indexes of the candidates within the principal's reach for any of `letters`.
 * Types without a usable grant reach nothing. A current version is checked by its stored index rows
 * (a deleted one has none); another version by its own content. Deletion markers of older versions are
 * reached only through a grant reaching every resource of the type (they carry nothing to check).
 */
export async function filterReach(q: Queryable, p: Principal, letters: readonly Letter[], candidates: ReachCandidate[], opts: AccessOptions): Promise<Set<number>> {
  const out = new Set<number>();
  const reaches = new Map<string, Reach | null>();
  const reachFor = (type: string): Reach | null => {
    if (!reaches.has(type)) {
      let r: Reach | null;
      try {
        r = reachOf(p, type, letters, 'access', opts);
      } catch {
        r = null;
      }
      reaches.set(type, r);
    }
    return reaches.get(type)!;
  };
  const currentByType = new Map<string, { id: string; k: number }[]>();
  const versions: MatchCandidate[] = [];
  const versionIndex: number[] = [];
  const whereByType = new Map<string, SqlFragment>();
  candidates.forEach((c, k) => {
    const reach = reachFor(c.resourceType);
    if (!reach) return;
    if (reach.all) {
      out.add(k);
      return;
    }
    if (c.current) {
      const list = currentByType.get(c.resourceType) ?? [];
      list.push({ id: c.id, k });
      currentByType.set(c.resourceType, list);
    } else if (c.resource) {
      whereByType.set(c.resourceType, reach.where);
      versions.push({ resourceType: c.resourceType, id: c.id, lastUpdated: c.lastUpdated, rows: c.rows ?? extractIndexRows(c.resource) });
      versionIndex.push(k);
    }
  });
  for (const [type, list] of currentByType) {
    const reach = reachFor(type) as { all: false; where: SqlFragment };
    const ids = await matchCurrent(q, type, [...new Set(list.map((l) => l.id))], reach.where);
    for (const l of list) if (ids.has(l.id)) out.add(l.k);
  }
  if (versions.length) for (const i of await matchCandidates(q, versions, whereByType, opts.phi)) out.add(versionIndex[i]);
  return out;
}

/** Whether one resource version is within reach for `letter` (see filterReach). */
export async function withinReach(q: Queryable, p: Principal, letter: Letter, c: ReachCandidate, opts: AccessOptions): Promise<boolean> {
  return (await filterReach(q, p, [letter], [c], opts)).has(0);
}
