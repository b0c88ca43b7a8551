// search-type: GET [base]/[type]?params and POST [base]/[type]/_search
// (https://hl7.org/fhir/R4/search.html). Today the parameters are _id and the indexed token
// parameters (identifier); the search issue brings every official parameter.
import type { Bundle, BundleEntry, BundleLink } from 'fhir/r4.js';
import { FhirError } from '../fhir/errors.js';
import { operationOutcome } from '../fhir/outcome.js';
import { canonicalCriteria, parseSearch } from '../search/parse.js';
import { planWhere } from '../search/plan.js';
import { countMatches, searchIds } from '../storage/search-store.js';
import { requireType } from './common.js';
import type { InteractionResult, RequestContext, Services } from './context.js';

export async function search(svc: Services, ctx: RequestContext, input: { type: string; query: [string, string][] }): Promise<InteractionResult> {
  requireType(input.type);
  const req = parseSearch(input.type, input.query, { strict: ctx.preferHandling === 'strict' });
  let count = svc.config.searchDefaultCount;
  const c = req.control;
  if (c._count !== undefined) {
    if (!/^\d{1,6}$/.test(c._count)) throw new FhirError('invalid-search', '_count must be a non-negative integer');
    count = Math.min(Number(c._count), svc.config.searchMaxCount);
  }
  if (c._total !== undefined && !['none', 'estimate', 'accurate'].includes(c._total)) {
    throw new FhirError('invalid-search', '_total must be none, estimate or accurate');
  }
  const where = planWhere(req);
  const scope = `search:${canonicalCriteria(req)}&_count=${count}`;
  let afterId: string | undefined;
  if (c._page !== undefined) {
    const cur = svc.pageTokens.verify(scope, c._page);
    if (typeof cur.after !== 'string') throw new FhirError('invalid-search', 'the paging token is invalid');
    afterId = cur.after;
  }
  const ids = count === 0 ? [] : await searchIds(svc.db.knex, where, { limit: count + 1, ...(afterId !== undefined ? { afterId } : {}) });
  const pageIds = ids.slice(0, count);
  const found = await svc.store.readMany(svc.db.knex, input.type, pageIds);
  const total = c._total === 'none' ? undefined : await countMatches(svc.db.knex, where);

  const keep = new URLSearchParams();
  for (const cl of req.clauses) keep.append(cl.modifier ? `${cl.code}:${cl.modifier}` : cl.code, cl.values.map((v) => v.replace(/,/g, '\\,')).join(','));
  keep.set('_count', String(count));
  if (c._total !== undefined) keep.set('_total', c._total);
  const link: BundleLink[] = [];
  const self = new URLSearchParams(keep);
  if (c._page !== undefined) self.set('_page', c._page);
  link.push({ relation: 'self', url: `${ctx.baseUrl}/${input.type}?${self}` });
  if (ids.length > count && pageIds.length) {
    const next = new URLSearchParams(keep);
    next.set('_page', svc.pageTokens.sign(scope, { after: pageIds[pageIds.length - 1] }));
    link.push({ relation: 'next', url: `${ctx.baseUrl}/${input.type}?${next}` });
  }
  const entry: BundleEntry[] = found.map((v) => ({
    fullUrl: `${ctx.baseUrl}/${input.type}/${v.id}`,
    resource: v.resource,
    search: { mode: 'match' },
  }));
  if (req.ignored.length) {
    entry.push({
      resource: operationOutcome(req.ignored.map((i) => ({ severity: 'warning', code: 'not-supported', diagnostics: `ignored ${i.name.slice(0, 64)}: ${i.reason}` }))),
      search: { mode: 'outcome' },
    });
  }
  const bundle: Bundle = { resourceType: 'Bundle', type: 'searchset', ...(total !== undefined ? { total } : {}), link, entry };
  return { status: 200, body: bundle };
}
