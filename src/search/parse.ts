// Search request parsing (https://hl7.org/fhir/R4/search.html#escaping, #combining, #modifiers,
// #chaining, #has): query -> typed SearchRequest. Comma separates OR values, a repeated parameter ANDs.
import { FhirError } from '../fhir/errors.js';
import { isResourceType, type SearchParamDef } from '../fhir/definitions.js';
import { splitUnescaped } from './escape.js';
import { phiParamIndexed, phiUnavailableReason, type PhiIndexMode } from './phi-seam.js';
import { paramsOf, type ParamSpec } from './registry.js';
import { parseTokenQuery } from './types/token.js';

/** One hop of a chain (subject:Patient.name): the reference parameter and the target types it may follow. */
export interface ChainLink {
  kind: 'chain';
  spec: ParamSpec;
  /** Resource type holding `spec`. */
  from: string;
  targets: string[];
}

/** One hop of a reverse chain (_has:Observation:patient:...): resources of `type` referring here through `spec`. */
export interface HasLink {
  kind: 'has';
  type: string;
  spec: ParamSpec;
}

export interface ParamClause {
  /** The parameter name as given (e.g. `subject:Patient.name:exact`), for links and reports. */
  name: string;
  /** The final parameter's code. */
  code: string;
  modifier?: string;
  def: SearchParamDef | { code: '_id'; type: 'token' };
  spec: ParamSpec;
  /** Resource type the final parameter belongs to (differs from the request type in chains). */
  type: string;
  /** OR-ed values, escapes kept (token `|` and composite `$` splitting need them). */
  values: string[];
  /** Hops from the searched resource to the final parameter's resource, outermost first. */
  path: (ChainLink | HasLink)[];
}

export interface SearchRequest {
  resourceType: string;
  clauses: ParamClause[];
  /** Result parameters (_count, _total, _sort, ...) as given. */
  control: Record<string, string>;
  /** _include / _revinclude values in order. */
  includes: { rev: boolean; value: string }[];
  /** Parameters Vesta ignored, with the reason (reported in the Bundle's OperationOutcome). */
  ignored: { name: string; reason: string }[];
  /** Base URL of this server, so absolute references to it match relative ones. */
  baseUrl?: string;
  /** How PHI is kept, as parsed under: the planner matches sealed PHI parameters on its blind index. */
  phi?: PhiIndexMode;
}

/** Result parameters recognised (each at most once, except the include family). */
export const CONTROL: ReadonlySet<string> = new Set(['_count', '_page', '_format', '_pretty', '_total', '_sort', '_summary', '_elements']);
export const INCLUDES: ReadonlySet<string> = new Set(['_include', '_revinclude', '_include:iterate', '_revinclude:iterate']);

/** Modifiers served per parameter kind (search.html#modifiers); `missing` is served everywhere. */
const MODIFIERS: Record<string, ReadonlySet<string>> = {
  string: new Set(['exact', 'contains']),
  token: new Set(['not', 'text', 'of-type', 'in', 'not-in']),
  reference: new Set(['identifier']),
  date: new Set(),
  number: new Set(),
  quantity: new Set(),
  uri: new Set(['below', 'above']),
  composite: new Set(),
  position: new Set(),
  text: new Set(),
};

/** Longest chain or _has nesting followed (each hop is a join). */
export const MAX_CHAIN_DEPTH = 4;

/** Splits on unescaped commas, keeping the escapes \, \| \$ \\ in each part. */
export function splitOr(raw: string): string[] {
  return splitUnescaped(raw, ',');
}

/** Splits a token value at its first unescaped '|' and unescapes both halves. */
export function splitToken(v: string): { system?: string; code?: string; hasBar: boolean } {
  return parseTokenQuery(v);
}

export interface ParseOptions {
  /** Unknown or unsupported parameters are errors (Prefer: handling=strict, conditional criteria). */
  strict: boolean;
  /** How PHI is kept; decides whether PHI parameters are searchable. Default: sealed (fail closed). */
  phi?: PhiIndexMode;
  baseUrl?: string;
}

class Unsupported extends Error {
  constructor(readonly reason: string, readonly unknown = false) {
    super(reason);
  }
}

function specOf(type: string, code: string, phi: PhiIndexMode): ParamSpec {
  const params = paramsOf(type);
  const spec = params.supported.get(code);
  if (spec) {
    if (!phiParamIndexed(type, code, phi)) throw new Unsupported(phiUnavailableReason(code));
    return spec;
  }
  const why = params.unsupported.get(code);
  if (why) throw new Unsupported(`search parameter "${code}" is not supported: ${why}`);
  throw new Unsupported(`unknown search parameter "${code.slice(0, 64)}" for ${type}`, true);
}

/** Follows `_has:Type:param:` prefixes and `ref[:Type].` chains to the final parameter. */
function resolveName(type: string, name: string, phi: PhiIndexMode): Omit<ParamClause, 'values' | 'name'> {
  const path: (ChainLink | HasLink)[] = [];
  let cur = type;
  let rest = name;
  while (rest.startsWith('_has:')) {
    const m = /^_has:([A-Za-z]+):([^:.]+):(.+)$/.exec(rest);
    if (!m || !isResourceType(m[1])) throw new Unsupported('_has needs _has:[type]:[reference parameter]:[parameter]');
    const spec = specOf(m[1], m[2], phi);
    if (spec.kind !== 'reference') throw new Unsupported(`_has: "${m[2]}" is not a reference parameter of ${m[1]}`);
    if (spec.def.target.length && !spec.def.target.includes(cur)) throw new Unsupported(`_has: "${m[2]}" of ${m[1]} does not refer to ${cur}`);
    path.push({ kind: 'has', type: m[1], spec });
    cur = m[1];
    rest = m[3];
    if (path.length > MAX_CHAIN_DEPTH) throw new Unsupported(`chains and _has are followed to a depth of ${MAX_CHAIN_DEPTH}`);
  }
  const hops = rest.split('.');
  for (let i = 0; i < hops.length - 1; i++) {
    const [code, typeMod, extra] = hops[i].split(':');
    if (extra !== undefined) throw new Unsupported('a chained parameter takes at most a type modifier');
    const spec = specOf(cur, code, phi);
    if (spec.kind !== 'reference') throw new Unsupported(`"${code}" is not a reference parameter, it cannot be chained`);
    let targets = spec.def.target.filter(isResourceType);
    if (typeMod !== undefined) {
      if (!isResourceType(typeMod) || (targets.length && !targets.includes(typeMod))) throw new Unsupported(`"${code}" cannot refer to that type`);
      targets = [typeMod];
    }
    const next = hops[i + 1].split(':')[0];
    targets = targets.filter((t) => paramsOf(t).supported.has(next) && phiParamIndexed(t, next, phi));
    if (!targets.length) throw new Unsupported(`no target of "${code}" has the chained parameter`);
    path.push({ kind: 'chain', spec, from: cur, targets });
    if (path.length > MAX_CHAIN_DEPTH) throw new Unsupported(`chains and _has are followed to a depth of ${MAX_CHAIN_DEPTH}`);
    // Several possible targets: the final parameter is checked on each (search.html#chaining).
    cur = targets[0];
  }
  const last = hops[hops.length - 1];
  const colon = last.indexOf(':');
  const code = colon < 0 ? last : last.slice(0, colon);
  const modifier = colon < 0 ? undefined : last.slice(colon + 1);
  const spec = specOf(cur, code, phi);
  if (modifier !== undefined && modifier !== 'missing') {
    const ok = MODIFIERS[spec.kind].has(modifier) || (spec.kind === 'reference' && isResourceType(modifier) && (!spec.def.target.length || spec.def.target.includes(modifier)));
    if (!ok || spec.column) throw new Unsupported(`modifier ":${modifier.slice(0, 32)}" is not supported on "${code}"`);
  }
  if (modifier === 'missing' && path.length) throw new Unsupported(':missing is not supported on chained parameters');
  return { code, ...(modifier !== undefined ? { modifier } : {}), def: spec.def, spec, type: cur, path };
}

/** Parses query pairs into a SearchRequest for one resource type. */
export function parseSearch(resourceType: string, pairs: [string, string][], opts: ParseOptions): SearchRequest {
  const phi = opts.phi ?? { sealed: true };
  const req: SearchRequest = { resourceType, clauses: [], control: {}, includes: [], ignored: [], ...(opts.baseUrl ? { baseUrl: opts.baseUrl } : {}), phi };
  for (const [name, value] of pairs) {
    // Also reached without the request budgets (conditional criteria): PostgreSQL refuses NUL in text.
    if (name.includes('\u0000') || value.includes('\u0000')) throw new FhirError('invalid-search', 'a search parameter name or value holds a NUL character (U+0000)');
    if (CONTROL.has(name)) {
      if (name in req.control) throw new FhirError('invalid-search', `parameter ${name} may appear only once`);
      req.control[name] = value;
      continue;
    }
    if (INCLUDES.has(name)) {
      req.includes.push({ rev: name.startsWith('_revinclude'), value: name.endsWith(':iterate') ? `${value}:iterate` : value });
      continue;
    }
    let resolved: Omit<ParamClause, 'values' | 'name'>;
    try {
      resolved = resolveName(resourceType, name, phi);
    } catch (e) {
      if (!(e instanceof Unsupported)) throw e;
      if (opts.strict) throw new FhirError(e.unknown ? 'invalid-search' : 'unsupported-search', e.reason);
      req.ignored.push({ name, reason: e.reason });
      continue;
    }
    const values = splitOr(value);
    if (values.some((v) => v === '')) throw new FhirError('invalid-search', `parameter ${resolved.code} has an empty value`);
    if (resolved.modifier === 'missing' && (values.length !== 1 || !['true', 'false'].includes(values[0]))) {
      throw new FhirError('invalid-search', `parameter ${resolved.code}:missing takes true or false`);
    }
    req.clauses.push({ name, ...resolved, values });
  }
  return req;
}

/** Parses criteria for conditional create/update/delete/patch: strict, at least one clause. */
export function parseCriteria(resourceType: string, query: string, opts: Omit<ParseOptions, 'strict'> = {}): SearchRequest {
  let q = query.trim();
  if (q.startsWith(`${resourceType}?`)) q = q.slice(resourceType.length + 1);
  else if (q.startsWith('?')) q = q.slice(1);
  if (/^[A-Za-z]+\?/.test(q)) throw new FhirError('invalid-request', 'conditional criteria name another resource type');
  const pairs = [...new URLSearchParams(q)].filter(([k]) => !['_format', '_pretty'].includes(k));
  const req = parseSearch(resourceType, pairs, { ...opts, strict: true });
  if (!req.clauses.length) throw new FhirError('invalid-request', 'conditional criteria must contain at least one search parameter');
  if (Object.keys(req.control).some((k) => k !== '_format' && k !== '_pretty') || req.includes.length) {
    throw new FhirError('invalid-request', 'conditional criteria may not carry result parameters');
  }
  return req;
}

/** A canonical string for criteria (order-independent), used as the conditional lock key and paging scope. */
export function canonicalCriteria(req: SearchRequest): string {
  const parts = req.clauses.map((c) => `${c.name}=${[...c.values].sort().join(',')}`);
  return `${req.resourceType}?${parts.sort().join('&')}`;
}
