// history: instance, type and system level (https://hl7.org/fhir/R4/http.html#history), with
// _since, _at and _count, newest first, paged by a signed keyset cursor (stable under writes). _summary
// and _elements shape each entry's resource as on search (search.html#summary, #elements); deletions
// have no resource and stay as they are. _summary=count gives the total of an instance history only.
import { patientsOfResource } from '../audit/patients.js';
import type { Bundle, BundleEntry, BundleLink } from 'fhir/r4.js';
import { FhirError } from '../fhir/errors.js';
import { parseShaping, parseSummary, shapeResource, type Shaping } from '../search/shape.js';
import { checkHistoryBudget } from '../search/budget.js';
import type { StoredVersion } from '../storage/resource-store.js';
import { etag, requireId, requireType } from './common.js';
import type { InteractionResult, RequestContext, Services } from './context.js';
import { allow, currentWithinReach, reachesAll, searchableTypes, visible } from './authorize.js';
import { resourceTypeInfo } from '../fhir/definitions.js';
import { parseDateRange, parseInstant } from './dates.js';

export interface HistoryInput {
  type?: string;
  id?: string;
  query: [string, string][];
}

const ALLOWED = new Set(['_since', '_at', '_count', '_page', '_summary', '_elements', '_format', '_pretty']);

function entry(ctx: RequestContext, v: StoredVersion, shaping: Shaping): BundleEntry {
  const url = `${v.resourceType}/${v.id}`;
  const method = v.method === 'PATCH' ? 'PATCH' : v.method;
  return {
    fullUrl: `${ctx.baseUrl}/${url}`,
    ...(v.resource ? { resource: shapeResource(v.resource, shaping) } : {}),
    request: { method, url: method === 'POST' ? v.resourceType : url },
    response: {
      status: v.deleted ? '204' : v.versionId === 1 || v.method === 'POST' ? '201' : '200',
      etag: etag(v.versionId),
      lastModified: v.lastUpdated.toISOString(),
    },
  };
}

export async function history(svc: Services, ctx: RequestContext, input: HistoryInput): Promise<InteractionResult> {
  ctx.audit.search(input.type, input.query);
  if (input.type && input.id) ctx.audit.resource(input.type, input.id, undefined, input.type === 'Patient' ? [input.id] : []);
  // A ledger entry has one version and no history of its own.
  if (input.type === 'AuditEvent') throw new FhirError('method-not-allowed', 'AuditEvents have no history: each is one append-only ledger entry (read or search them instead)', { headers: { Allow: 'GET, HEAD' } });
  checkHistoryBudget(input.query, svc.config.searchBudgets);
  if (input.type) requireType(input.type);
  if (input.id) requireId(input.id);
  // Instance history is a read (r); type and system history are searches (s). Entries are then
  // filtered to the token's reach, each version by its own content.
  const letter = input.id ? 'r' : 's';
  if (input.type) allow(ctx, input.type, letter, input.id ? 'instance history' : 'type history');
  else if (!searchableTypes(svc, ctx, resourceTypeInfo().map((t) => t.type)).length) allow(ctx, '*', 's', 'system history');
  const narrowed = input.type ? !reachesAll(svc, ctx, input.type, [letter]) : !resourceTypeInfo().every((t) => reachesAll(svc, ctx, t.type, ['s']));
  if (input.id && narrowed) {
    // The instance must be within reach now (a deleted one only for a token reaching every resource of the type).
    const cur = await svc.store.readCurrent(svc.db.knex, input.type!, input.id);
    if (!cur || cur.deleted || !(await currentWithinReach(svc, ctx, svc.db.knex, 'r', input.type!, input.id, cur.resource, cur.lastUpdated))) {
      throw new FhirError('not-found', `${input.type}/${input.id} is not known`);
    }
  }
  const params: Record<string, string> = {};
  for (const [k, v] of input.query) {
    if (!ALLOWED.has(k)) throw new FhirError('invalid-request', `parameter ${k.slice(0, 40)} is not supported by history`);
    if (k in params) throw new FhirError('invalid-request', `parameter ${k} may appear only once`);
    params[k] = v;
  }
  let count = svc.config.searchDefaultCount;
  if (params._count !== undefined) {
    if (!/^\d{1,6}$/.test(params._count)) throw new FhirError('invalid-request', '_count must be a non-negative integer');
    count = Math.min(Number(params._count), svc.config.searchMaxCount);
  }
  const since = params._since !== undefined ? parseInstant(params._since, '_since') : undefined;
  const at = params._at !== undefined ? parseDateRange(params._at, '_at') : undefined;
  const summary = parseSummary(params._summary);
  const shaping = parseShaping(summary, params._elements);
  if (summary === 'count' && (!input.id || since || at)) {
    // Only an instance history keeps a count (its Bundle.total); type and system history have none to give.
    throw new FhirError('invalid-request', '_summary=count is served on instance history ([type]/[id]/_history) without _since or _at only');
  }

  const scope = `history:${input.type ?? ''}/${input.id ?? ''}?${params._since ?? ''}&${params._at ?? ''}&${count}`;
  let beforeSeq: number | undefined;
  if (params._page !== undefined) {
    const c = svc.pageTokens.verify(scope, params._page);
    if (typeof c.before !== 'number') throw new FhirError('invalid-request', 'the paging token is invalid');
    beforeSeq = c.before;
  }
  const path = [input.type, input.id, '_history'].filter(Boolean).join('/');
  const selfQuery = new URLSearchParams();
  if (params._since !== undefined) selfQuery.set('_since', params._since);
  if (params._at !== undefined) selfQuery.set('_at', params._at);
  selfQuery.set('_count', String(count));
  // links carry the shaping on, as search's do
  if (params._summary !== undefined) selfQuery.set('_summary', params._summary);
  if (params._elements !== undefined) selfQuery.set('_elements', params._elements);
  if (summary === 'count') {
    if (narrowed) throw new FhirError('forbidden', "_summary=count on history needs a token whose scopes reach every resource of the type (a count would include versions outside this token's reach)");
    const total = await svc.store.countHistory(svc.db.knex, input.type!, input.id!);
    if (total === 0) throw new FhirError('not-found', `${input.type}/${input.id} is not known`);
    const bundle: Bundle = { resourceType: 'Bundle', type: 'history', total, link: [{ relation: 'self', url: `${ctx.baseUrl}/${path}?${selfQuery}` }] };
    return { status: 200, body: bundle };
  }
  const rows = await svc.store.history(svc.db.knex, {
    ...(input.type ? { resourceType: input.type } : {}),
    ...(input.id ? { id: input.id } : {}),
    ...(since ? { since } : {}),
    ...(at ? { at } : {}),
    ...(beforeSeq !== undefined ? { beforeSeq } : {}),
    limit: count + 1,
  });
  if (input.id && rows.length === 0 && beforeSeq === undefined && !since && !at) {
    const exists = await svc.store.readCurrent(svc.db.knex, input.type!, input.id);
    if (!exists) throw new FhirError('not-found', `${input.type}/${input.id} is not known`);
  }
  const unfiltered = rows.slice(0, count);
  let page = unfiltered;
  if (narrowed) {
    // Paging stays on the unfiltered keyset: a page may hold fewer entries than _count.
    const seen = await visible(svc, ctx, svc.db.knex, [letter], unfiltered.map((v) => ({ resourceType: v.resourceType, id: v.id, resource: v.resource, lastUpdated: v.lastUpdated, current: false })));
    page = unfiltered.filter((_v, k) => seen.has(k));
  }
  // Instance history reads one resource: its record names the patients of the versions returned.
  if (input.id) for (const v of page) if (v.resource) for (const p of patientsOfResource(v.resource)) ctx.audit.patient(p);
  const link: BundleLink[] = [];
  const self = new URLSearchParams(selfQuery);
  if (params._page !== undefined) self.set('_page', params._page);
  link.push({ relation: 'self', url: `${ctx.baseUrl}/${path}?${self}` });
  if (rows.length > count && unfiltered.length) {
    const next = new URLSearchParams(selfQuery);
    next.set('_page', svc.pageTokens.sign(scope, { before: unfiltered[unfiltered.length - 1].seq! }));
    link.push({ relation: 'next', url: `${ctx.baseUrl}/${path}?${next}` });
  }
  const bundle: Bundle = {
    resourceType: 'Bundle',
    type: 'history',
    ...(input.id && !narrowed ? { total: await svc.store.countHistory(svc.db.knex, input.type!, input.id) } : {}),
    link,
    entry: page.map((v) => entry(ctx, v, shaping)),
  };
  return { status: 200, body: bundle };
}
