// search-type, search-system and compartment search (https://hl7.org/fhir/R4/search.html,
// http.html#search): GET [base]/[type]?params, POST [base]/[type]/_search, GET|POST [base]?_type=..,
// GET [base]/[compartment]/[id]/[type]. Every official parameter Vesta indexes (search/registry.ts),
// chains and _has, _sort, _total, _summary, _elements, _include/_revinclude, and signed keyset paging
// with self, next and previous links.
import { searchAuditEvents } from './audit-events.js';
import type { Bundle, BundleEntry, BundleLink, Resource } from 'fhir/r4.js';
import { FhirError } from '../fhir/errors.js';
import { isResourceType, resourceTypeInfo } from '../fhir/definitions.js';
import { operationOutcome } from '../fhir/outcome.js';
import { compartmentCondition, compartmentMembers } from '../search/compartment.js';
import { parseIncludes, resolveIncludes, type IncludeSource } from '../search/include.js';
import { canonicalCriteria, parseSearch, type SearchRequest } from '../search/parse.js';
import { checkSearchBudget } from '../search/budget.js';
import { planSearch, type SearchPlan } from '../search/plan.js';
import { confirmBlindMatches } from '../search/blind.js';
import { parseShaping, parseSummary, shapeResource } from '../search/shape.js';
import { planSort, type SortKey } from '../search/sort.js';
import type { SqlFragment } from '../search/sql.js';
import type { StoredVersion } from '../storage/resource-store.js';
import { countMatches, estimateMatches, referencedTargets, referringSources, searchPage, type PageCursor, type PageRow } from '../storage/search-store.js';
import { requireType } from './common.js';
import type { InteractionResult, RequestContext, Services } from './context.js';
import { allow, hopScope, narrowing, searchableTypes, visible } from './authorize.js';

/** Where a search looks: one type, several (system search) or a compartment. */
interface Scope {
  /** Types searched; the first one parses the parameters. */
  types: string[];
  /** Every type (system search without _type): the type condition is left out. */
  allTypes: boolean;
  compartment?: { type: string; id: string };
  /** Compartment membership over several member types (compartment `*`), instead of `compartment`. */
  membership?: SqlFragment;
  /** Path of the search under the base URL, for links ('' for system search). */
  path: string;
  /** Parameters that belong to the scope and must be kept in links (_type). */
  keep: [string, string][];
}

interface Page {
  rows: PageRow[];
  next?: PageRow;
  prev?: PageRow;
  /** Every match, counted with the page (accurate _total). */
  total?: number;
}

function readCursor(cur: Record<string, unknown>, keys: SortKey[]): { dir: 'n' | 'p'; at: PageCursor } {
  const bad = () => new FhirError('invalid-search', 'the paging token is invalid');
  if ((cur.d !== 'n' && cur.d !== 'p') || typeof cur.i !== 'string' || typeof cur.t !== 'string') throw bad();
  const k = cur.k ?? [];
  if (!Array.isArray(k) || k.length !== keys.length || k.some((v) => v !== null && typeof v !== 'string')) throw bad();
  return { dir: cur.d, at: { type: cur.t, id: cur.i, keys: k as (string | null)[] } };
}

function cursorOf(dir: 'n' | 'p', row: PageRow): Record<string, unknown> {
  return { d: dir, t: row.type, i: row.id, ...(row.keys.length ? { k: row.keys } : {}) };
}

/**
 * One page of matches. A forward page (first page, or a `next` link) has a next link when one more row
 * exists and a previous link when it started from a cursor; a backward page (a `previous` link) always
 * has a next link (its anchor follows it) and a previous link when one more row exists before it.
 */
async function fetchPage(svc: Services, plan: SearchPlan, keys: SortKey[], count: number, cursor: Record<string, unknown> | undefined, total: boolean): Promise<Page> {
  if (count === 0) return { rows: [] };
  const pos = cursor ? readCursor(cursor, keys) : undefined;
  const backward = pos?.dir === 'p';
  const { rows, total: counted } = await searchPage(svc.db.knex, plan, keys, { limit: count + 1, ...(pos ? { [backward ? 'before' : 'after']: pos.at } : {}), total });
  const more = rows.length > count;
  const page = backward ? rows.slice(more ? 1 : 0) : rows.slice(0, count);
  const links = backward
    ? { ...(page.length ? { next: page[page.length - 1] } : {}), ...(more && page.length ? { prev: page[0] } : {}) }
    : { ...(more && page.length ? { next: page[page.length - 1] } : {}), ...(pos && page.length ? { prev: page[0] } : {}) };
  return { rows: page, ...links, ...(counted !== undefined ? { total: counted } : {}) };
}

/** Storage behind _include/_revinclude: index lookups and reads of current versions. */
function includeSource(svc: Services): IncludeSource<StoredVersion & { resourceType: string; id: string }> {
  const q = svc.db.knex;
  return {
    forward: (type, ids, params, target, limit) => referencedTargets(q, type, ids, params, target, limit),
    reverse: (type, params, target, ids, limit) => referringSources(q, type, params, target, ids, limit),
    read: (type, ids) => svc.store.readMany(q, type, ids),
  };
}

/** The current versions of a page in page order, opened from the rows its statement returned. */
async function openPage(svc: Services, rows: PageRow[]): Promise<StoredVersion[]> {
  const out: StoredVersion[] = [];
  for (const r of rows) out.push(await svc.store.openCurrent(r.row));
  return out;
}

/** The query that reproduces this search (for links): parameters Vesta used, in a stable form. */
function linkQuery(scope: Scope, req: SearchRequest, count: number): URLSearchParams {
  const keep = new URLSearchParams(scope.keep);
  for (const cl of req.clauses) keep.append(cl.name, cl.values.join(','));
  for (const inc of req.includes) keep.append(inc.rev ? '_revinclude' : '_include', inc.value);
  keep.set('_count', String(count));
  for (const k of ['_total', '_sort', '_summary', '_elements']) if (req.control[k] !== undefined) keep.set(k, req.control[k]);
  return keep;
}

/**
 * Parses a system search: each parameter must mean the same (same type of parameter) for every type
 * searched. Without _type only the parameters common to all resources qualify (search.html#all).
 */
function parseAcross(scope: Scope, pairs: [string, string][], opts: Parameters<typeof parseSearch>[2]): SearchRequest {
  const [first, ...others] = scope.types;
  if (!others.length) return parseSearch(first, pairs, opts);
  const kept: [string, string][] = [];
  const ignored: { name: string; reason: string }[] = [];
  for (const pair of pairs) {
    const per = (t: string) => parseSearch(t, [pair], { ...opts, strict: false });
    const base = per(first);
    // Result parameters (_count, _sort, _include ...) are not clauses: parsed once below.
    if (!base.clauses.length && !base.ignored.length) {
      kept.push(pair);
      continue;
    }
    const mismatch = [first, ...others].find((t, i) => {
      const r = i === 0 ? base : per(t);
      return r.clauses.length !== 1 || r.clauses[0].spec.kind !== base.clauses[0]?.spec.kind || r.clauses[0].code !== base.clauses[0]?.code;
    });
    if (mismatch === undefined) {
      kept.push(pair);
      continue;
    }
    const reason = scope.allTypes ? 'only parameters common to all resource types apply without _type' : `not a parameter of the same kind for every type in _type (${mismatch})`;
    if (opts.strict) throw new FhirError('invalid-search', `search parameter "${pair[0].slice(0, 64)}": ${reason}`);
    ignored.push({ name: pair[0], reason });
  }
  const req = parseSearch(first, kept, opts);
  req.ignored.unshift(...ignored);
  return req;
}

async function run(svc: Services, ctx: RequestContext, scope: Scope, query: [string, string][]): Promise<InteractionResult> {
  checkSearchBudget(query, svc.config.searchBudgets);
  const strict = ctx.preferHandling === 'strict';
  const phi = svc.store.phiIndexMode;
  const opts = { strict, phi, baseUrl: ctx.baseUrl };
  const req = parseAcross(scope, query, opts);
  const c = req.control;
  let count = svc.config.searchDefaultCount;
  if (c._count !== undefined) {
    if (!/^\d{1,6}$/.test(c._count)) throw new FhirError('invalid-search', '_count must be a non-negative integer');
    count = Math.min(Number(c._count), svc.config.searchMaxCount);
  }
  if (c._total !== undefined && !['none', 'estimate', 'accurate'].includes(c._total)) {
    throw new FhirError('invalid-search', '_total must be none, estimate or accurate');
  }
  const summary = parseSummary(c._summary);
  const shaping = parseShaping(summary, c._elements);
  const sort = planSort(scope.types[0], c._sort, { strict, phi });
  req.ignored.push(...sort.ignored);
  const includes = parseIncludes(scope.types, req.includes, { strict, phi });
  req.ignored.push(...includes.ignored);

  // Authorization: the token searches these types (403 otherwise), chains and _has only through types
  // it may search, and its matches are narrowed to its reach (compartment, scope constraints).
  for (const t of scope.types) allow(ctx, t, 's', 'search');
  for (const cl of req.clauses) {
    for (const link of cl.path) {
      if (link.kind === 'has') allow(ctx, link.type, 's', `_has (${cl.name.slice(0, 64)})`);
      else for (const t of link.targets) allow(ctx, t, 's', `a chained search (${cl.name.slice(0, 64)})`);
    }
  }
  const narrowed = narrowing(svc, ctx, scope.types, 'search');
  const extra = scope.membership ? [scope.membership] : scope.compartment ? [compartmentCondition(scope.compartment.type, scope.compartment.id, scope.types[0])] : [];
  if (narrowed) extra.push(narrowed);
  const plan = planSearch(req, { types: scope.allTypes ? [] : scope.types, extra, hopScope: hopScope(svc, ctx), indexOnly: !sort.keys.length });
  const scopeKey = `search:${scope.path}|${scope.types.join(',')}|${canonicalCriteria(req)}&_count=${count}&_sort=${c._sort ?? ''}`;
  const cursor = c._page !== undefined ? svc.pageTokens.verify(scopeKey, c._page) : undefined;

  // An accurate total (the default) is counted in the page's own statement: the matches are found once.
  const accurate = c._total === undefined || c._total === 'accurate';
  const page: Page = summary === 'count' ? { rows: [] } : await fetchPage(svc, plan, sort.keys, count, cursor, accurate);
  // Matches on sealed PHI came from blind indexes: confirmed on the opened resources (search/blind.ts).
  const found = confirmBlindMatches(req, await openPage(svc, page.rows));
  // A first page that holds every match already knows the total; otherwise _total decides the cost.
  let total: number | undefined;
  const complete = !cursor && !page.next && count > 0;
  if (summary === 'count') total = await countMatches(svc.db.knex, plan);
  else if (c._total === 'none') total = undefined;
  else if (complete) total = page.rows.length;
  else if (c._total === 'estimate') total = await estimateMatches(svc.db.knex, plan.where);
  else total = page.total ?? (await countMatches(svc.db.knex, plan));

  const shape = (r: Resource | undefined): Resource | undefined => r && shapeResource(r, shaping);
  const entry: BundleEntry[] = found.map((v) => ({ fullUrl: `${ctx.baseUrl}/${v.resourceType}/${v.id}`, resource: shape(v.resource), search: { mode: 'match' } }));
  let incomplete = false;
  let depthCut = false;
  let withheld = false;
  if (found.length && includes.list.length) {
    const inc = await resolveIncludes(includeSource(svc), found.map((v) => ({ type: v.resourceType, id: v.id })), includes.list, { iterateDepth: svc.config.searchIncludeIterateDepth });
    incomplete = inc.truncated;
    depthCut = inc.depthCut;
    // Included resources the token may not see are left out (and the Bundle says so, without naming them).
    const seen = await visible(svc, ctx, svc.db.knex, ['r', 's'], inc.resources.map((v) => ({ resourceType: v.resourceType, id: v.id, resource: v.resource, lastUpdated: v.lastUpdated, current: true })));
    withheld = seen.size < inc.resources.length;
    inc.resources.forEach((v, k) => {
      if (seen.has(k)) entry.push({ fullUrl: `${ctx.baseUrl}/${v.resourceType}/${v.id}`, resource: shape(v.resource), search: { mode: 'include' } });
    });
  }
  const issues = req.ignored.map((i) => ({ severity: 'warning' as const, code: 'not-supported', diagnostics: `ignored ${i.name.slice(0, 64)}: ${i.reason}` }));
  if (withheld) issues.push({ severity: 'warning', code: 'suppressed', diagnostics: "included resources outside this token's scopes were left out" });
  if (incomplete) issues.push({ severity: 'warning', code: 'too-costly', diagnostics: 'the included resources were cut at the include limit; the Bundle is incomplete' });
  if (depthCut) {
    const rounds = svc.config.searchIncludeIterateDepth;
    issues.push({ severity: 'warning', code: 'too-costly', diagnostics: `:iterate stopped after ${rounds} rounds (SEARCH_INCLUDE_ITERATE_DEPTH) with more to include; the Bundle is incomplete` });
  }
  if (issues.length) entry.push({ resource: operationOutcome(issues), search: { mode: 'outcome' } });

  const keep = linkQuery(scope, req, count);
  const at = `${ctx.baseUrl}${scope.path ? `/${scope.path}` : ''}`;
  const linkTo = (token?: string): string => {
    const q = new URLSearchParams(keep);
    if (token !== undefined) q.set('_page', token);
    return `${at}?${q}`;
  };
  const link: BundleLink[] = [{ relation: 'self', url: linkTo(c._page) }];
  if (page.next) link.push({ relation: 'next', url: linkTo(svc.pageTokens.sign(scopeKey, cursorOf('n', page.next) as Record<string, string | number>)) });
  if (page.prev) link.push({ relation: 'previous', url: linkTo(svc.pageTokens.sign(scopeKey, cursorOf('p', page.prev) as Record<string, string | number>)) });
  const bundle: Bundle = { resourceType: 'Bundle', type: 'searchset', ...(total !== undefined ? { total } : {}), link, entry };
  return { status: 200, body: bundle };
}

/** search-type: GET [base]/[type]?params and POST [base]/[type]/_search. */
export async function search(svc: Services, ctx: RequestContext, input: { type: string; query: [string, string][] }): Promise<InteractionResult> {
  requireType(input.type);
  ctx.audit.search(input.type, input.query);
  // AuditEvents live in the audit ledger, searched on its own columns.
  if (input.type === 'AuditEvent') return searchAuditEvents(svc, ctx, { query: input.query });
  return run(svc, ctx, { types: [input.type], allTypes: false, path: input.type, keep: [] }, input.query);
}

/** search-system: GET [base]?params and POST [base]/_search, over the types in _type or all types. */
export async function searchSystem(svc: Services, ctx: RequestContext, input: { query: [string, string][] }): Promise<InteractionResult> {
  ctx.audit.search(undefined, input.query);
  const typeParams = input.query.filter(([k]) => k === '_type');
  if (typeParams.length > 1) throw new FhirError('invalid-search', 'parameter _type may appear only once');
  const query = input.query.filter(([k]) => k !== '_type');
  if (!typeParams.length) {
    // Without _type: every type the token may search (all of them for a wildcard grant).
    const all = resourceTypeInfo().map((t) => t.type);
    const permitted = searchableTypes(svc, ctx, all);
    if (!permitted.length) allow(ctx, '*', 's', 'system search');
    if (permitted.length === all.length) return run(svc, ctx, { types: all, allTypes: true, path: '', keep: [] }, query);
    return run(svc, ctx, { types: permitted, allTypes: false, path: '', keep: [] }, query);
  }
  const types = [...new Set(typeParams[0][1].split(',').map((t) => t.trim()))];
  const unknown = types.find((t) => !isResourceType(t));
  if (unknown !== undefined) throw new FhirError('invalid-search', `_type names an unknown resource type (${unknown.slice(0, 64)})`);
  if (types.includes('AuditEvent')) throw new FhirError('unsupported-search', 'AuditEvents are not part of system search; search them at [base]/AuditEvent');
  return run(svc, ctx, { types, allTypes: false, path: '', keep: [['_type', types.join(',')]] }, query);
}

/** Compartment search: GET [base]/[compartment]/[id]/[type]?params and [compartment]/[id]/* for every member type. */
export async function searchCompartment(svc: Services, ctx: RequestContext, input: { compartment: string; id: string; type: string; query: [string, string][] }): Promise<InteractionResult> {
  requireType(input.compartment);
  if (!/^[A-Za-z0-9\-.]{1,64}$/.test(input.id)) throw new FhirError('invalid-request', 'invalid id');
  ctx.audit.search(input.type === '*' ? undefined : input.type, input.query);
  ctx.audit.resource(input.compartment, input.id);
  if (input.compartment === 'Patient') ctx.audit.patient(input.id);
  if (input.type === 'AuditEvent') {
    if (input.compartment !== 'Patient') throw new FhirError('unsupported-search', 'AuditEvents are searched in the Patient compartment only (or at [base]/AuditEvent)');
    return searchAuditEvents(svc, ctx, { query: input.query, patient: input.id });
  }
  const path = `${input.compartment}/${input.id}/${input.type}`;
  if (input.type === '*') {
    // Every member type: the compartment condition differs per type, so each type is a branch.
    // Every member type the token may search (a 403 when it may search none of them).
    const members = searchableTypes(svc, ctx, compartmentMembers(input.compartment).map((m) => m.type));
    if (!members.length) allow(ctx, input.compartment, 's', 'compartment search');
    return runCompartmentAll(svc, ctx, input.compartment, input.id, members, path, input.query);
  }
  requireType(input.type);
  return run(svc, ctx, { types: [input.type], allTypes: false, compartment: { type: input.compartment, id: input.id }, path, keep: [] }, input.query);
}

async function runCompartmentAll(svc: Services, ctx: RequestContext, compartment: string, id: string, members: string[], path: string, query: [string, string][]): Promise<InteractionResult> {
  // Only the parameters common to every resource apply across all member types (as for system search).
  const scope: Scope = { types: members, allTypes: false, path, keep: [] };
  const membership = members.map((t) => compartmentCondition(compartment, id, t));
  const union: SqlFragment = {
    sql: members.map((_t, i) => `(r.resource_type = ? and (${membership[i].sql}))`).join(' or '),
    bindings: members.flatMap((t, i) => [t, ...membership[i].bindings]),
  };
  return run(svc, ctx, { ...scope, membership: union }, query);
}
