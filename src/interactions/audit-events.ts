// /AuditEvent over the audit ledger (issue 16 item 7): read, vread and search of the AuditEvents the
// ledger holds (https://hl7.org/fhir/R4/auditevent.html#search). They are not in the resource tables:
// each is one ledger entry, found by its search columns (audit/search-columns.ts, migration 0012) and
// returned as its stored event opened (sealed elements restored), with meta.versionId 1 (an entry is
// never updated) and meta.lastUpdated its `recorded`.
//
// Parameters: date (prefixes), agent, entity, patient, source (references; :identifier on agent and
// entity, :[type]), type, subtype, action, outcome (tokens), _id; comma ORs, repetition ANDs. _count,
// _sort (date, -date; newest first by default), _total, _summary, _elements, keyset paging with signed
// links. _include, _revinclude, chains and _has are refused: no resource refers to a ledger entry
// through the search index, and an entry's references are not followed. Unknown parameters are
// ignored and reported (400 with Prefer: handling=strict), as on every other type (docs/search.md).
//
// Reach (design.md "The interaction chokepoint"): the scope letter is checked first (403 naming it).
// A patient/ grant reaches the events in its patient's compartment (the R4 `patient` parameter); a
// user/ or system/ grant without constraints reaches every event; a grant with constraints reaches
// none (Vesta does not apply search constraints to ledger entries). Outside reach reads as unknown
// (404); a search whose grants reach nothing is a 403, as for any type.
import type { AuditEvent, Bundle, BundleEntry, BundleLink } from 'fhir/r4.js';
import { requireGrants } from '../auth/access.js';
import { isResourceType } from '../fhir/definitions.js';
import { FhirError } from '../fhir/errors.js';
import { operationOutcome } from '../fhir/outcome.js';
import type { LedgerEvent } from '../audit/ledger.js';
import { referenceQueryKeys, searchColumns, tokenQueryKey } from '../audit/search-columns.js';
import { checkSearchBudget } from '../search/budget.js';
import { splitUnescaped, unescapeValue } from '../search/escape.js';
import { parseReadSummary, parseShaping, parseSummary, shapeResource, type Shaping } from '../search/shape.js';
import { parseDateQuery } from '../search/types/date.js';
import { parseTokenQuery } from '../search/types/token.js';
import { countEvents, estimateEvents, eventById, searchEvents, type AuditArrayColumn, type AuditCondition, type AuditEventRow, type AuditPosition } from '../storage/audit-store.js';
import { parseVersionEtag, requireId, versionHeaders } from './common.js';
import type { InteractionResult, RequestContext, Services } from './context.js';
import type { ReadInput } from './read.js';
import { allow } from './authorize.js';

const TYPE = 'AuditEvent';

// ---- reach ----------------------------------------------------------------------------------------

/** What the token's grants reach of the ledger: every event, the events of some patients, or none. */
type AuditReach = { all: true } | { all: false; patients: string[] };

function auditReach(ctx: RequestContext, letter: 'r' | 's', what: string): AuditReach {
  const p = ctx.principal;
  const patients = new Set<string>();
  for (const g of requireGrants(p, TYPE, letter, what)) {
    // Constraints are search parameters of the resource tables; an entry cannot be checked against them.
    if (g.constraint) continue;
    if (g.context !== 'patient') return { all: true };
    patients.add(p.patient!);
  }
  return { all: false, patients: [...patients] };
}

/** The keys of the reached patients in the `patient` column. */
function patientKeys(ctx: RequestContext, patients: string[]): string[] {
  return patients.flatMap((id) => referenceQueryKeys(id, 'patient', 'Patient', ctx.baseUrl));
}

// ---- read and vread -------------------------------------------------------------------------------

interface Found {
  stored: LedgerEvent;
  lastUpdated: Date;
  patients: string[];
}

/** The stored event of an id within the token's reach, or undefined (unknown and unreachable alike). */
async function findEvent(svc: Services, ctx: RequestContext, id: string, what: string): Promise<Found | undefined> {
  const reach = auditReach(ctx, 'r', what);
  const row = await eventById(svc.db.knex, id);
  if (!row) return undefined;
  const stored = JSON.parse(row.canonical) as LedgerEvent;
  const columns = searchColumns(stored, ctx.baseUrl);
  if (!reach.all) {
    const keys = new Set(patientKeys(ctx, reach.patients));
    if (!columns.patient.some((k) => keys.has(k))) return undefined;
  }
  const patients = columns.patient.map((k) => /^Patient\/([^/]+)$/.exec(k)?.[1]).filter((x): x is string => x !== undefined);
  return { stored, lastUpdated: lastUpdatedOf(stored), patients };
}

/** meta.lastUpdated when the event has one (a client's), else its recorded. */
function lastUpdatedOf(stored: LedgerEvent): Date {
  const meta = stored.meta as { lastUpdated?: unknown } | undefined;
  for (const t of [meta?.lastUpdated, stored.recorded]) {
    const ms = typeof t === 'string' ? Date.parse(t) : NaN;
    if (!Number.isNaN(ms)) return new Date(ms);
  }
  return new Date(0);
}

/** The event as returned: opened, with the version and time of its one and only version. */
async function present(svc: Services, stored: LedgerEvent, lastUpdated: Date): Promise<AuditEvent> {
  const event = await svc.audit.open(stored);
  const { resourceType, id, meta, ...rest } = event;
  return { resourceType, id, meta: { ...(meta ?? {}), versionId: '1', lastUpdated: lastUpdated.toISOString() }, ...rest } as AuditEvent;
}

/** read: GET [base]/AuditEvent/[id], with If-None-Match, If-Modified-Since, _summary and _elements. */
export async function readAuditEvent(svc: Services, ctx: RequestContext, input: ReadInput): Promise<InteractionResult> {
  allow(ctx, TYPE, 'r', 'read');
  requireId(input.id);
  // Named before it is looked for, so a refused or failed read still says what it asked for.
  ctx.audit.resource(TYPE, input.id);
  const shaping = parseShaping(parseReadSummary(input.summary), input.elements);
  const found = await findEvent(svc, ctx, input.id, 'read');
  if (!found) throw new FhirError('not-found', `${TYPE}/${input.id} is not known`);
  ctx.audit.resource(TYPE, input.id, '1', found.patients);
  const headers = versionHeaders(ctx, { resourceType: TYPE, id: input.id, versionId: 1, lastUpdated: found.lastUpdated }, false);
  const inm = input.ifNoneMatch?.trim();
  if (inm) {
    if (inm === '*' || parseVersionEtag(inm, 'If-None-Match') === 1) return { status: 304, headers };
  } else if (input.ifModifiedSince) {
    const since = Date.parse(input.ifModifiedSince);
    if (!Number.isNaN(since) && Math.floor(found.lastUpdated.getTime() / 1000) * 1000 <= since) return { status: 304, headers };
  }
  return { status: 200, headers, body: shapeResource(await present(svc, found.stored, found.lastUpdated), shaping) };
}

/** vread: GET [base]/AuditEvent/[id]/_history/[vid]; an entry has exactly one version, 1. */
export async function vreadAuditEvent(svc: Services, ctx: RequestContext, input: { type: string; id: string; vid: string; summary?: string; elements?: string }): Promise<InteractionResult> {
  allow(ctx, TYPE, 'r', 'vread');
  requireId(input.id);
  // Named before it is looked for, so a refused or failed vread still says what it asked for.
  ctx.audit.resource(TYPE, input.id);
  const shaping = parseShaping(parseReadSummary(input.summary), input.elements);
  const found = await findEvent(svc, ctx, input.id, 'vread');
  if (!found || input.vid !== '1') throw new FhirError('not-found', `${TYPE}/${input.id} has no version ${input.vid.slice(0, 16)}`);
  ctx.audit.resource(TYPE, input.id, '1', found.patients);
  const headers = versionHeaders(ctx, { resourceType: TYPE, id: input.id, versionId: 1, lastUpdated: found.lastUpdated }, false);
  return { status: 200, headers, body: shapeResource(await present(svc, found.stored, found.lastUpdated), shaping) };
}

// ---- search ---------------------------------------------------------------------------------------

type ParamDef =
  | { kind: 'reference'; column: AuditArrayColumn; identifier?: AuditArrayColumn; type?: string }
  | { kind: 'token'; column: AuditArrayColumn }
  | { kind: 'code'; column: 'action' | 'outcome'; system: string; codes: string[] }
  | { kind: 'date' }
  | { kind: 'id' };

/** The parameters served, by name (R4 AuditEvent search parameters, and _id). */
const PARAMS: Record<string, ParamDef> = {
  _id: { kind: 'id' },
  date: { kind: 'date' },
  agent: { kind: 'reference', column: 'agent', identifier: 'agentIdentifier' },
  entity: { kind: 'reference', column: 'entity', identifier: 'entityIdentifier' },
  patient: { kind: 'reference', column: 'patient', type: 'Patient' },
  source: { kind: 'reference', column: 'source', identifier: 'sourceIdentifier' },
  type: { kind: 'token', column: 'type' },
  subtype: { kind: 'token', column: 'subtype' },
  action: { kind: 'code', column: 'action', system: 'http://hl7.org/fhir/audit-event-action', codes: ['C', 'R', 'U', 'D', 'E'] },
  outcome: { kind: 'code', column: 'outcome', system: 'http://hl7.org/fhir/audit-event-outcome', codes: ['0', '4', '8', '12'] },
};

/** The search parameters /AuditEvent serves (the CapabilityStatement lists exactly these). */
export const AUDIT_SEARCH_PARAMS: { name: string; type: 'token' | 'date' | 'reference'; definition: string; documentation: string }[] = (
  [
    ['_id', 'token', 'The AuditEvent id.'],
    ['date', 'date', 'AuditEvent.recorded, with the prefixes eq ne lt gt le ge sa eb ap.'],
    ['agent', 'reference', 'AuditEvent.agent.who: [type]/[id], [id] (any type), an absolute URL; :[type]; :identifier on agent.who.identifier (system|value).'],
    ['entity', 'reference', 'AuditEvent.entity.what: [type]/[id] (with /_history/[vid]: that version only), [id] (any type), an absolute URL; :[type]; :identifier on entity.what.identifier.'],
    ['patient', 'reference', 'The Patients among agent.who and entity.what: [id], Patient/[id] or an absolute URL.'],
    ['source', 'reference', 'AuditEvent.source.observer: [type]/[id], [id], an absolute URL; :identifier on source.observer.identifier (this server\'s own records: urn:ietf:rfc:3986|[base]).'],
    ['type', 'token', 'AuditEvent.type: code, system|code, |code or system|.'],
    ['subtype', 'token', 'AuditEvent.subtype: code, system|code, |code or system|.'],
    ['action', 'token', 'AuditEvent.action (C R U D E).'],
    ['outcome', 'token', 'AuditEvent.outcome (0 4 8 12).'],
  ] as const
).map(([name, type, documentation]) => ({ name, type, documentation, definition: `http://hl7.org/fhir/SearchParameter/${name === '_id' ? 'Resource-id' : `AuditEvent-${name}`}` }));

/** R4 AuditEvent parameters (and common ones) not served: "not supported" rather than "unknown". */
const NOT_SERVED = new Set(['address', 'agent-name', 'agent-role', 'altid', 'entity-name', 'entity-role', 'entity-type', 'policy', 'site', '_lastUpdated', '_tag', '_profile', '_security', '_source', '_text', '_content', '_list', '_query', '_filter']);
const CONTROL = new Set(['_count', '_page', '_format', '_pretty', '_total', '_sort', '_summary', '_elements']);
const REFUSED = /^(_include|_revinclude)(:iterate)?$/;

interface Clause {
  name: string;
  value: string;
  condition: AuditCondition;
}

interface Parsed {
  clauses: Clause[];
  control: Record<string, string>;
  ignored: { name: string; reason: string }[];
}

function values(name: string, raw: string): string[] {
  const vs = splitUnescaped(raw, ',');
  if (vs.some((v) => v === '')) throw new FhirError('invalid-search', `parameter ${name.slice(0, 64)} has an empty value`);
  return vs;
}

function tokenKeysOf(name: string, raw: string): string[] {
  return values(name, raw).map((v) => {
    const k = tokenQueryKey(v);
    if (k === undefined) throw new FhirError('invalid-search', `parameter ${name} has an empty value`);
    return k;
  });
}

/** action and outcome are `code`s of one code system: a system other than it matches nothing. */
function codesOf(def: Extract<ParamDef, { kind: 'code' }>, name: string, raw: string): string[] {
  const out = new Set<string>();
  for (const v of values(name, raw)) {
    const t = parseTokenQuery(v);
    if (t.code === undefined && t.system === undefined) throw new FhirError('invalid-search', `parameter ${name} has an empty value`);
    if (t.system !== undefined && t.system !== def.system) continue;
    if (t.code === undefined) def.codes.forEach((c) => out.add(c));
    else out.add(t.code);
  }
  return [...out];
}

function conditionOf(ctx: RequestContext, def: ParamDef, code: string, modifier: string | undefined, raw: string): AuditCondition {
  switch (def.kind) {
    case 'id':
      return { kind: 'id', ids: values(code, raw).map(unescapeValue) };
    case 'date':
      return { kind: 'recorded', any: values(code, raw).map((v) => parseDateQuery(v, code)), now: ctx.clock().getTime() };
    case 'token':
      return { kind: 'keys', column: def.column, keys: tokenKeysOf(code, raw) };
    case 'code':
      return { kind: 'code', column: def.column, codes: codesOf(def, code, raw) };
    case 'reference': {
      if (modifier === 'identifier') return { kind: 'keys', column: def.identifier!, keys: tokenKeysOf(code, raw) };
      const type = modifier ?? def.type;
      const keys = values(code, raw).flatMap((v) => referenceQueryKeys(v, code, type, ctx.baseUrl));
      return { kind: 'keys', column: def.column, keys: [...new Set(keys)] };
    }
  }
}

/** Whether `modifier` is served on `def` (reference :identifier and :[type]; nothing else). */
function modifierServed(def: ParamDef, modifier: string): boolean {
  if (def.kind !== 'reference') return false;
  if (modifier === 'identifier') return def.identifier !== undefined;
  return isResourceType(modifier) && (def.type === undefined || def.type === modifier);
}

function parseAuditSearch(ctx: RequestContext, pairs: [string, string][], strict: boolean): Parsed {
  const out: Parsed = { clauses: [], control: {}, ignored: [] };
  const skip = (name: string, reason: string, unknown: boolean) => {
    if (strict) throw new FhirError(unknown ? 'invalid-search' : 'unsupported-search', reason);
    out.ignored.push({ name, reason });
  };
  for (const [name, value] of pairs) {
    if (name.includes('\u0000') || value.includes('\u0000')) throw new FhirError('invalid-search', 'a search parameter name or value holds a NUL character (U+0000)');
    if (CONTROL.has(name)) {
      if (name in out.control) throw new FhirError('invalid-search', `parameter ${name} may appear only once`);
      out.control[name] = value;
      continue;
    }
    if (REFUSED.test(name)) throw new FhirError('unsupported-search', `${name} is not supported for AuditEvent (its entries are not linked to other resources through the search index)`);
    if (name.startsWith('_has:') || name === '_has') throw new FhirError('unsupported-search', '_has is not supported for AuditEvent');
    const colon = name.indexOf(':');
    const code = colon < 0 ? name : name.slice(0, colon);
    const modifier = colon < 0 ? undefined : name.slice(colon + 1);
    if (name.includes('.')) {
      throw new FhirError('unsupported-search', `chained parameters are not supported for AuditEvent (${name.slice(0, 64)})`);
    }
    const def = Object.hasOwn(PARAMS, code) ? PARAMS[code] : undefined;
    if (!def) {
      if (NOT_SERVED.has(code)) skip(name, `search parameter "${code}" is not supported for AuditEvent`, false);
      else skip(name, `unknown search parameter "${code.slice(0, 64)}" for AuditEvent`, true);
      continue;
    }
    if (modifier !== undefined && !modifierServed(def, modifier)) {
      skip(name, `modifier ":${modifier.slice(0, 32)}" is not supported on "${code}"`, false);
      continue;
    }
    out.clauses.push({ name, value, condition: conditionOf(ctx, def, code, modifier, value) });
  }
  return out;
}

/** Page cursor (signed into `_page`): direction and the row the page starts after. */
interface Cursor {
  dir: 'n' | 'p';
  at: AuditPosition;
}

function readCursor(c: Record<string, string | number>): Cursor {
  const bad = () => new FhirError('invalid-search', 'the paging token is invalid');
  if ((c.d !== 'n' && c.d !== 'p') || typeof c.s !== 'number' || !Number.isSafeInteger(c.s)) throw bad();
  if (c.r !== undefined && (typeof c.r !== 'string' || Number.isNaN(Date.parse(c.r)))) throw bad();
  return { dir: c.d, at: { seq: c.s, recorded: c.r === undefined ? null : new Date(c.r) } };
}

function cursorOf(dir: 'n' | 'p', row: AuditEventRow): Record<string, string | number> {
  return { d: dir, s: row.seq, ...(row.recorded ? { r: row.recorded.toISOString() } : {}) };
}

interface Page {
  rows: AuditEventRow[];
  next?: AuditEventRow;
  prev?: AuditEventRow;
}

/**
 * One page (as search.ts pages): a forward page has a next link when one more row exists and a
 * previous link when it started from a cursor; a backward page (from a `previous` link) is read in
 * the reverse order, always has a next link, and a previous link when one more row exists before it.
 */
async function fetchPage(svc: Services, conds: AuditCondition[], order: 'asc' | 'desc', count: number, cursor: Cursor | undefined): Promise<Page> {
  if (count === 0) return { rows: [] };
  const backward = cursor?.dir === 'p';
  const reverse = order === 'asc' ? 'desc' : 'asc';
  const rows = await searchEvents(svc.db.knex, conds, { order: backward ? reverse : order, limit: count + 1, ...(cursor ? { after: cursor.at } : {}) });
  const more = rows.length > count;
  const page = backward ? rows.slice(0, count).reverse() : rows.slice(0, count);
  if (!page.length) return { rows: page };
  if (backward) return { rows: page, next: page[page.length - 1], ...(more ? { prev: page[0] } : {}) };
  return { rows: page, ...(more ? { next: page[page.length - 1] } : {}), ...(cursor ? { prev: page[0] } : {}) };
}

/** search-type GET|POST [base]/AuditEvent, and the compartment search [base]/Patient/[id]/AuditEvent (`patient`). */
export async function searchAuditEvents(svc: Services, ctx: RequestContext, input: { query: [string, string][]; patient?: string }): Promise<InteractionResult> {
  allow(ctx, TYPE, 's', 'search');
  // The record names the query, and the patients its `patient=` values name (AuditTrail.search).
  ctx.audit.search(TYPE, input.query);
  if (input.patient !== undefined) {
    if (!/^[A-Za-z0-9\-.]{1,64}$/.test(input.patient)) throw new FhirError('invalid-request', 'invalid id');
    ctx.audit.patient(input.patient);
  }
  checkSearchBudget(input.query, svc.config.searchBudgets);
  const strict = ctx.preferHandling === 'strict';
  const req = parseAuditSearch(ctx, input.query, strict);
  const c = req.control;

  const reach = auditReach(ctx, 's', 'search');
  if (!reach.all && !reach.patients.length) {
    const scopes = requireGrants(ctx.principal, TYPE, 's', 'search').map((g) => g.scope).join(' ');
    throw new FhirError('forbidden', `search on ${TYPE}: the token's scopes for ${TYPE} (${scopes}) reach no ${TYPE} (a constraint Vesta cannot apply to ${TYPE})`);
  }
  const conds = req.clauses.map((cl) => cl.condition);
  if (input.patient !== undefined) conds.push({ kind: 'keys', column: 'patient', keys: patientKeys(ctx, [input.patient]) });
  if (!reach.all) conds.push({ kind: 'keys', column: 'patient', keys: patientKeys(ctx, reach.patients) });

  let count = svc.config.searchDefaultCount;
  if (c._count !== undefined) {
    if (!/^\d{1,6}$/.test(c._count)) throw new FhirError('invalid-search', '_count must be a non-negative integer');
    count = Math.min(Number(c._count), svc.config.searchMaxCount);
  }
  if (c._total !== undefined && !['none', 'estimate', 'accurate'].includes(c._total)) throw new FhirError('invalid-search', '_total must be none, estimate or accurate');
  const summary = parseSummary(c._summary);
  const shaping: Shaping = parseShaping(summary, c._elements);
  let order: 'asc' | 'desc' = 'desc';
  if (c._sort !== undefined) {
    if (c._sort === 'date') order = 'asc';
    else if (c._sort !== '-date') {
      const reason = '_sort on AuditEvent takes date or -date';
      if (strict) throw new FhirError('invalid-search', reason);
      req.ignored.push({ name: '_sort', reason });
      delete c._sort;
    }
  }

  const path = input.patient !== undefined ? `Patient/${input.patient}/${TYPE}` : TYPE;
  const criteria = req.clauses.map((cl) => `${cl.name}=${cl.value}`).sort().join('&');
  const scopeKey = `audit:${path}|${criteria}&_count=${count}&_sort=${c._sort ?? ''}`;
  const cursor = c._page !== undefined ? readCursor(svc.pageTokens.verify(scopeKey, c._page)) : undefined;

  const page: Page = summary === 'count' ? { rows: [] } : await fetchPage(svc, conds, order, count, cursor);
  let total: number | undefined;
  const complete = !cursor && !page.next && count > 0;
  if (summary === 'count') total = await countEvents(svc.db.knex, conds);
  else if (c._total === 'none') total = undefined;
  else if (complete) total = page.rows.length;
  else if (c._total === 'estimate') total = await estimateEvents(svc.db.knex, conds);
  else total = await countEvents(svc.db.knex, conds);

  const events = await Promise.all(
    page.rows.map((row) => {
      const stored = JSON.parse(row.canonical) as LedgerEvent;
      return present(svc, stored, lastUpdatedOf(stored));
    }),
  );
  const entry: BundleEntry[] = events.map((event) => ({ fullUrl: `${ctx.baseUrl}/${TYPE}/${event.id}`, resource: shapeResource(event, shaping), search: { mode: 'match' } }));
  if (req.ignored.length) {
    entry.push({ resource: operationOutcome(req.ignored.map((i) => ({ severity: 'warning' as const, code: 'not-supported', diagnostics: `ignored ${i.name.slice(0, 64)}: ${i.reason}` }))), search: { mode: 'outcome' } });
  }

  const keep = new URLSearchParams(req.clauses.map((cl): [string, string] => [cl.name, cl.value]));
  keep.set('_count', String(count));
  for (const k of ['_total', '_sort', '_summary', '_elements']) if (c[k] !== undefined) keep.set(k, c[k]);
  const linkTo = (token?: string): string => {
    const q = new URLSearchParams(keep);
    if (token !== undefined) q.set('_page', token);
    return `${ctx.baseUrl}/${path}?${q}`;
  };
  const link: BundleLink[] = [{ relation: 'self', url: linkTo(c._page) }];
  if (page.next) link.push({ relation: 'next', url: linkTo(svc.pageTokens.sign(scopeKey, cursorOf('n', page.next))) });
  if (page.prev) link.push({ relation: 'previous', url: linkTo(svc.pageTokens.sign(scopeKey, cursorOf('p', page.prev))) });
  const bundle: Bundle = { resourceType: 'Bundle', type: 'searchset', ...(total !== undefined ? { total } : {}), link, entry };
  return { status: 200, body: bundle };
}
