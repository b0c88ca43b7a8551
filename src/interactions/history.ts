// history: instance, type and system level (https://hl7.org/fhir/R4/http.html#history), with
// _since, _at and _count, newest first, paged by a signed keyset cursor (stable under writes). _summary
// and _elements shape each entry's resource as on search (search.html#summary, #elements); deletions
// have no resource and stay as they are. _summary=count gives the total of an instance history only.
import type { Bundle, BundleEntry, BundleLink } from 'fhir/r4.js';
import { FhirError } from '../fhir/errors.js';
import { parseShaping, parseSummary, shapeResource, type Shaping } from '../search/shape.js';
import type { StoredVersion } from '../storage/resource-store.js';
import { etag, requireId, requireType } from './common.js';
import type { InteractionResult, RequestContext, Services } from './context.js';
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
  if (input.type) requireType(input.type);
  if (input.id) requireId(input.id);
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
  const page = rows.slice(0, count);
  const link: BundleLink[] = [];
  const self = new URLSearchParams(selfQuery);
  if (params._page !== undefined) self.set('_page', params._page);
  link.push({ relation: 'self', url: `${ctx.baseUrl}/${path}?${self}` });
  if (rows.length > count && page.length) {
    const next = new URLSearchParams(selfQuery);
    next.set('_page', svc.pageTokens.sign(scope, { before: page[page.length - 1].seq! }));
    link.push({ relation: 'next', url: `${ctx.baseUrl}/${path}?${next}` });
  }
  const bundle: Bundle = {
    resourceType: 'Bundle',
    type: 'history',
    ...(input.id ? { total: await svc.store.countHistory(svc.db.knex, input.type!, input.id) } : {}),
    link,
    entry: page.map((v) => entry(ctx, v, shaping)),
  };
  return { status: 200, body: bundle };
}
