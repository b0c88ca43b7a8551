// Search request parsing (https://hl7.org/fhir/R4/search.html#escaping, #combining):
// query -> typed SearchRequest. Comma separates OR values, a repeated parameter ANDs.
import { FhirError } from '../fhir/errors.js';
import { searchParamsFor, type SearchParamDef } from '../fhir/definitions.js';
import { isIndexedTokenParam } from './index-extract.js';

export interface ParamClause {
  code: string;
  modifier?: string;
  def: SearchParamDef | { code: '_id'; type: 'token' };
  /** OR-ed values, unescaped. */
  values: string[];
}

export interface SearchRequest {
  resourceType: string;
  clauses: ParamClause[];
  /** Result parameters (_count, _total, ...) as given. */
  control: Record<string, string>;
  /** Parameters Vesta ignored, with the reason (reported in the Bundle's OperationOutcome). */
  ignored: { name: string; reason: string }[];
}

/** Result-control parameters recognised today. */
const CONTROL = new Set(['_count', '_page', '_format', '_pretty', '_total']);

/** Splits on unescaped commas and removes the escapes \, \| \$ \\ . */
export function splitOr(raw: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < raw.length; i++) {
    const ch = raw[i];
    if (ch === '\\' && i + 1 < raw.length) {
      cur += ch + raw[i + 1];
      i++;
    } else if (ch === ',') {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  out.push(cur);
  return out;
}

/** Splits a token value at its first unescaped '|' and unescapes both halves. */
export function splitToken(v: string): { system?: string; code?: string; hasBar: boolean } {
  let idx = -1;
  for (let i = 0; i < v.length; i++) {
    if (v[i] === '\\') {
      i++;
      continue;
    }
    if (v[i] === '|') {
      idx = i;
      break;
    }
  }
  const unesc = (s: string) => s.replace(/\\([\\,|$])/g, '$1');
  if (idx < 0) return { code: unesc(v), hasBar: false };
  const system = unesc(v.slice(0, idx));
  const code = unesc(v.slice(idx + 1));
  return { ...(system ? { system } : {}), ...(code ? { code } : {}), hasBar: true };
}

export interface ParseOptions {
  /** Unknown or unsupported parameters are errors (Prefer: handling=strict, conditional criteria). */
  strict: boolean;
}

/** Parses query pairs into a SearchRequest for one resource type. */
export function parseSearch(resourceType: string, pairs: [string, string][], opts: ParseOptions): SearchRequest {
  const req: SearchRequest = { resourceType, clauses: [], control: {}, ignored: [] };
  const defs = new Map(searchParamsFor(resourceType).map((d) => [d.code, d]));
  for (const [name, value] of pairs) {
    if (CONTROL.has(name)) {
      if (name in req.control) throw new FhirError('invalid-search', `parameter ${name} may appear only once`);
      req.control[name] = value;
      continue;
    }
    const colon = name.indexOf(':');
    const code = colon < 0 ? name : name.slice(0, colon);
    const modifier = colon < 0 ? undefined : name.slice(colon + 1);
    let reason: string | undefined;
    let def: ParamClause['def'] | undefined;
    if (code === '_id') def = { code: '_id', type: 'token' };
    else if (!defs.has(code)) reason = `unknown search parameter "${code}" for ${resourceType}`;
    else if (!isIndexedTokenParam(resourceType, code)) reason = `search parameter "${code}" is not supported yet`;
    else def = defs.get(code);
    if (!reason && modifier !== undefined) reason = `modifier ":${modifier}" is not supported on "${code}"`;
    if (reason || !def) {
      if (opts.strict) throw new FhirError(reason?.startsWith('unknown') ? 'invalid-search' : 'unsupported-search', reason ?? 'unsupported');
      req.ignored.push({ name, reason: reason ?? 'unsupported' });
      continue;
    }
    const values = splitOr(value);
    if (values.some((v) => v === '')) throw new FhirError('invalid-search', `parameter ${code} has an empty value`);
    req.clauses.push({ code, ...(modifier ? { modifier } : {}), def, values });
  }
  return req;
}

/** Parses criteria for conditional create/update/delete/patch: strict, at least one clause. */
export function parseCriteria(resourceType: string, query: string): SearchRequest {
  let q = query.trim();
  if (q.startsWith(`${resourceType}?`)) q = q.slice(resourceType.length + 1);
  else if (q.startsWith('?')) q = q.slice(1);
  if (/^[A-Za-z]+\?/.test(q)) throw new FhirError('invalid-request', 'conditional criteria name another resource type');
  const pairs = [...new URLSearchParams(q)].filter(([k]) => !['_format', '_pretty'].includes(k));
  const req = parseSearch(resourceType, pairs, { strict: true });
  if (!req.clauses.length) throw new FhirError('invalid-request', 'conditional criteria must contain at least one search parameter');
  if (Object.keys(req.control).some((k) => k !== '_format' && k !== '_pretty')) {
    throw new FhirError('invalid-request', 'conditional criteria may not carry result parameters');
  }
  return req;
}

/** A canonical string for criteria (order-independent), used as the conditional lock key. */
export function canonicalCriteria(req: SearchRequest): string {
  const parts = req.clauses.map((c) => `${c.code}${c.modifier ? ':' + c.modifier : ''}=${[...c.values].sort().join(',')}`);
  return `${req.resourceType}?${parts.sort().join('&')}`;
}
