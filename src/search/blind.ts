// Blind indexes for search over sealed PHI (design.md "PHI at rest"; https://hl7.org/fhir/R4/search.html):
// the search parameters whose expressions reach an element of the PHI policy keep no value in the clear.
// Their index rows become keyed HMACs (crypto/blind-index.ts) in idx_blind: every prefix of each
// normalised string (starts-with search) and the exact string (:exact), tokens as system|code, code and
// system, dates as the calendar year, month and day they lie within. A search computes the HMACs of its
// values and matches them; what cannot be answered that way is refused, never approximated. Results are
// confirmed on the opened resources (confirmBlindMatches), so a truncated-HMAC collision is dropped.
import type { Resource } from 'fhir/r4.js';
import { BlindIndexer, MAX_PREFIX } from '../crypto/blind-index.js';
import type { PhiCodec } from '../crypto/phi-codec.js';
import { resourceTypeInfo } from '../fhir/definitions.js';
import { FhirError } from '../fhir/errors.js';
import { drainPaced, drainSync } from '../fhir/pacer.js';
import { splitUnescaped, unescapeValue } from './escape.js';
import { emptyRows, type DateRow, type IndexRows, type StringRow, type TokenRow } from './index-rows.js';
import { eqKey, normalise } from './keys.js';
import type { ParamClause, SearchRequest } from './parse.js';
import { baseParam, type PhiIndexMode } from './phi-seam.js';
import { evaluatorOf, paramsOf, type ParamSpec } from './registry.js';
import { frag, or, type Aliases, type SqlFragment } from './sql.js';
import { extractDate, parseDateQuery } from './types/date.js';
import { extractString, soundex } from './types/string.js';
import { extractToken, parseTokenQuery } from './types/token.js';

/** One blind index row: the parameter (or derived row name, e.g. identifier:of-type) and a MAC (hex). */
export interface BlindRow {
  param: string;
  mac: string;
}

/** Element paths the policy seals for a type. */
export interface PolicyPaths {
  pathsFor(type: string): readonly string[];
}

type Treatment = 'blind' | 'withheld';

/** Kinds a blind index serves; other kinds over sealed elements are withheld (fail closed). */
const BLIND_KINDS: ReadonlySet<string> = new Set(['string', 'token', 'date']);

/**
 * The element paths an expression selects from `type` (`Patient.telecom.where(system='phone')` ->
 * `telecom`, `(Patient.deceased as dateTime)` -> `deceased`). A path stops at the first function call;
 * a type name after `is`/`as`/`ofType(` is a type test, not a path.
 */
export function expressionPaths(type: string, expression: string): string[] {
  const out: string[] = [];
  const re = /(?<![\w.'])(?<!\bis\s)(?<!\bas\s)(?<!ofType\()([A-Z][A-Za-z]*)((?:\.[A-Za-z_][A-Za-z0-9_]*)*)/g;
  for (const m of expression.matchAll(re)) {
    if (m[1] !== type && m[1] !== 'Resource' && m[1] !== 'DomainResource') continue;
    const segs: string[] = [];
    let pos = (m.index ?? 0) + m[1].length;
    for (const seg of m[2].split('.').slice(1)) {
      pos += 1 + seg.length;
      if (expression[pos] === '(') break;
      segs.push(seg);
    }
    out.push(segs.join('.'));
  }
  return out;
}

/** The element paths a composite component's relative expression selects (`value.as(Quantity)` -> `value`). */
function relativePaths(expression: string): string[] | undefined {
  const out: string[] = [];
  for (const branch of expression.split('|')) {
    const m = /^\s*\(?\s*([a-z][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)/.exec(branch);
    if (!m) return undefined;
    const segs: string[] = [];
    let pos = branch.indexOf(m[1]);
    for (const seg of m[1].split('.')) {
      pos += seg.length;
      if (branch[pos] === '(') break;
      segs.push(seg);
      pos += 1;
    }
    out.push(segs.join('.'));
  }
  return out;
}

/** The element paths a parameter reads: its expression's, or for a composite its components' under the base. */
function paramPaths(type: string, spec: ParamSpec): string[] {
  const base = expressionPaths(type, spec.def.expression!);
  if (!spec.components) return base;
  const out: string[] = [];
  for (const c of spec.components) {
    const rel = relativePaths(c.expression);
    if (!rel) return base;
    for (const b of base) for (const r of rel) out.push(b && r ? `${b}.${r}` : b || r);
  }
  return out;
}

/** Whether selecting `path` reads `sealed` (the same element, one inside it, or one that contains it). */
function touches(path: string, sealed: string): boolean {
  return path === '' || path === sealed || path.startsWith(`${sealed}.`) || sealed.startsWith(`${path}.`);
}

const UNITS = ['year', 'month', 'day'] as const;
type Unit = (typeof UNITS)[number];

/** [start, end) of the UTC calendar unit containing `ms`, and its text (YYYY, YYYY-MM, YYYY-MM-DD). */
function unitAt(ms: number, unit: Unit): { start: number; end: number; text: string } {
  const d = new Date(ms);
  const y = d.getUTCFullYear();
  const mo = unit === 'year' ? 0 : d.getUTCMonth();
  const day = unit === 'day' ? d.getUTCDate() : 1;
  const at = (yy: number, mm: number, dd: number) => {
    const t = new Date(0);
    t.setUTCFullYear(yy, mm, dd);
    t.setUTCHours(0, 0, 0, 0);
    return t.getTime();
  };
  const start = at(y, mo, day);
  const end = unit === 'year' ? at(y + 1, 0, 1) : unit === 'month' ? at(y, mo + 1, 1) : at(y, mo, day + 1);
  const yt = y < 0 ? `-${String(-y).padStart(4, '0')}` : String(y).padStart(4, '0');
  const text = unit === 'year' ? yt : unit === 'month' ? `${yt}-${String(mo + 1).padStart(2, '0')}` : `${yt}-${String(mo + 1).padStart(2, '0')}-${String(day).padStart(2, '0')}`;
  return { start, end, text };
}

/** The calendar units (as text) an interval [low, high) lies within. */
export function unitsWithin(low: number, high: number): string[] {
  return UNITS.map((u) => unitAt(low, u)).filter((u) => high <= u.end && low >= u.start).map((u) => u.text);
}

/** The calendar unit an interval is exactly, if any (a search value of YYYY, YYYY-MM or YYYY-MM-DD). */
export function exactUnit(low: number, high: number): string | undefined {
  return UNITS.map((u) => unitAt(low, u)).find((u) => u.start === low && u.end === high)?.text;
}

/** A search value the blind index cannot answer: always 400, whatever the handling preference. */
function refuse(code: string, what: string): FhirError {
  return new FhirError('unsupported-search', `search parameter "${code}" is on sealed PHI and searched through a blind index: ${what}`);
}

/** What a clause asks of the blind index of one type: rows with one of these MACs, or (:missing) rows at all. */
type BlindQuery = { param: string; macs: string[] } | { param: string; missing: boolean };

export class BlindIndex {
  private readonly tables = new Map<string, ReadonlyMap<string, Treatment>>();
  private types?: ReadonlySet<string>;

  constructor(
    readonly indexer: BlindIndexer,
    /** Key id of the blind key, recorded per resource so a key change re-indexes. */
    readonly kid: string,
    private readonly policy: PolicyPaths,
  ) {}

  /** Protected parameters of a type and how each is kept, derived from the policy and the official expressions. */
  private table(type: string): ReadonlyMap<string, Treatment> {
    let t = this.tables.get(type);
    if (t) return t;
    const sealed = this.policy.pathsFor(type);
    const out = new Map<string, Treatment>();
    if (sealed.length) {
      for (const spec of paramsOf(type).supported.values()) {
        if (spec.column || !spec.def.expression) continue;
        const paths = paramPaths(type, spec);
        if (!paths.some((p) => sealed.some((s) => touches(p, s)))) continue;
        out.set(spec.code, !spec.components && BLIND_KINDS.has(spec.kind) ? 'blind' : 'withheld');
      }
    }
    this.tables.set(type, out);
    return (t = out);
  }

  /** The element paths the policy seals for a type (full text leaves them out: phi-seam.ts protectTextRow). */
  sealedPaths(type: string): readonly string[] {
    return this.policy.pathsFor(type);
  }

  /** Whether `_text` has nothing left to search: the policy seals the narrative of the type. */
  sealsNarrative(type: string): boolean {
    return this.policy.pathsFor(type).some((s) => touches('text.div', s));
  }

  /** Whether the values of a parameter (or of a row derived from it) are PHI under the policy. */
  isProtected(type: string, param: string): boolean {
    return this.table(type).has(baseParam(param));
  }

  /** Whether a parameter is searchable through this blind index. */
  isBlind(type: string, param: string): boolean {
    return this.table(type).get(baseParam(param)) === 'blind';
  }

  /** Protected parameters of a type, by treatment (for the CapabilityStatement and tests). */
  protectedParams(type: string): { blind: string[]; withheld: string[] } {
    const t = [...this.table(type)];
    return { blind: t.filter(([, v]) => v === 'blind').map(([k]) => k), withheld: t.filter(([, v]) => v === 'withheld').map(([k]) => k) };
  }

  /** Resource types with at least one protected parameter. */
  protectedTypes(): ReadonlySet<string> {
    this.types ??= new Set(
      resourceTypeInfo()
        .map((t) => t.type)
        .filter((t) => this.table(t).size > 0),
    );
    return this.types;
  }

  // ---- writing -----------------------------------------------------------------------------------

  /** The blind rows of one resource's index rows (the protected ones; the others stay as they are). */
  rowsOf(type: string, rows: IndexRows): BlindRow[] {
    return drainSync(this.rowSteps(type, rows));
  }

  /** rowsOf for a request: yields to the event loop between rows (fhir/pacer.ts). */
  rowsOfPaced(type: string, rows: IndexRows): Promise<BlindRow[]> {
    return drainPaced(this.rowSteps(type, rows));
  }

  private *rowSteps(type: string, rows: IndexRows): Generator<void, BlindRow[], void> {
    const bi = this.indexer;
    const out = new Map<string, BlindRow>();
    const add = (param: string, mac: string) => out.set(`${param}\u0000${mac}`, { param, mac });
    // Many names share their prefixes (every family starting "Sm"): each distinct prefix is MACed once.
    const prefixMacs = new Map<string, string>();
    const prefixes = (param: string, norm: string) => {
      for (let i = 1; i <= Math.min(norm.length, MAX_PREFIX); i++) {
        const key = `${param}\u0000${norm.slice(0, i)}`;
        let m = prefixMacs.get(key);
        if (m === undefined) prefixMacs.set(key, (m = bi.prefix(type, param, norm.slice(0, i))));
        add(param, m);
      }
    };
    for (const r of rows.string ?? []) {
      yield;
      if (!this.isBlind(type, r.param) || r.param.includes('$')) continue;
      if (baseParam(r.param) === 'phonetic') {
        add(r.param, bi.exact(type, r.param, r.norm));
        continue;
      }
      prefixes(r.param, r.norm);
      add(r.param, bi.exact(type, r.param, r.exact));
    }
    for (const r of rows.token) {
      yield;
      if (!this.isBlind(type, r.param) || r.param.includes('$')) continue;
      if (r.param.endsWith(':of-type')) {
        if (r.code !== null) add(r.param, bi.tokenSystemCode(type, r.param, r.system, r.code));
        continue;
      }
      if (r.code !== null) {
        add(r.param, bi.tokenSystemCode(type, r.param, r.system, r.code));
        add(r.param, bi.tokenCode(type, r.param, r.code));
      }
      if (r.system !== null) add(r.param, bi.tokenSystem(type, r.param, r.system));
      if (r.code === null && r.system === null) add(r.param, bi.presence(type, r.param));
    }
    for (const r of rows.date ?? []) {
      yield;
      if (!this.isBlind(type, r.param) || r.param.includes('$')) continue;
      const units = unitsWithin(r.low, r.high);
      for (const u of units) add(r.param, bi.dateUnit(type, r.param, u));
      if (!units.length) add(r.param, bi.presence(type, r.param));
    }
    yield;
    // Sorted: the order rows are stored in says nothing about which prefix is which.
    return [...out.values()].sort((a, b) => (a.param === b.param ? (a.mac < b.mac ? -1 : 1) : a.param < b.param ? -1 : 1));
  }

  // ---- searching ---------------------------------------------------------------------------------

  /** The MACs one clause looks for on one type, or a refusal for what a blind index cannot answer. */
  private query(type: string, spec: ParamSpec, clause: ParamClause): BlindQuery {
    const code = spec.code;
    const bi = this.indexer;
    const { modifier, values } = clause;
    if (modifier === 'missing') return { param: code, missing: values[0] === 'true' };
    const macs = new Set<string>();
    let param = code;
    for (const raw of values) {
      if (spec.kind === 'string') {
        const n = normalise(unescapeValue(raw));
        if (n === '') throw new FhirError('invalid-search', `parameter ${code} has an empty value`);
        if (code === 'phonetic') {
          // As on plaintext: phonetic compares Soundex codes whatever the modifier.
          const codes = [...new Set(n.split(/[\s-]+/).map(soundex).filter(Boolean))];
          if (!codes.length) throw new FhirError('invalid-search', 'parameter phonetic needs letters');
          for (const c of codes) macs.add(bi.exact(type, code, c));
        } else if (modifier === 'exact') macs.add(bi.exact(type, code, unescapeValue(raw)));
        else if (modifier === 'contains') throw refuse(code, ':contains is not served (only starts-with and :exact)');
        else if (n.length > MAX_PREFIX) throw refuse(code, `a starts-with value is served up to ${MAX_PREFIX} characters (use :exact for the whole value)`);
        else macs.add(bi.prefix(type, code, n));
      } else if (spec.kind === 'token') {
        if (modifier === 'text' || modifier === 'not' || modifier === 'in' || modifier === 'not-in') throw refuse(code, `:${modifier} is not served (only [system]|[code], [code], [system]| and :of-type)`);
        if (modifier === 'of-type') {
          const parts = splitUnescaped(raw, '|').map(unescapeValue);
          if (parts.length !== 3 || parts.some((p) => p === '')) throw new FhirError('invalid-search', `parameter ${code}:of-type needs system|code|value`);
          param = `${code}:of-type`;
          macs.add(bi.tokenSystemCode(type, param, eqKey(parts[0]), eqKey(`${parts[1]}|${parts[2]}`)));
          continue;
        }
        const t = parseTokenQuery(raw);
        if (t.code === undefined && t.system === undefined) throw new FhirError('invalid-search', `parameter ${code} has an empty value`);
        if (t.code !== undefined && t.system !== undefined) macs.add(bi.tokenSystemCode(type, code, eqKey(t.system), eqKey(t.code)));
        else if (t.code !== undefined && t.hasBar) macs.add(bi.tokenSystemCode(type, code, null, eqKey(t.code)));
        else if (t.code !== undefined) macs.add(bi.tokenCode(type, code, eqKey(t.code)));
        else macs.add(bi.tokenSystem(type, code, eqKey(t.system!)));
      } else if (spec.kind === 'date') {
        const q = parseDateQuery(unescapeValue(raw), code);
        const unit = exactUnit(q.low, q.high);
        if (q.prefix !== 'eq' || unit === undefined) {
          throw refuse(code, 'only an exact year, month or day is served (YYYY, YYYY-MM or YYYY-MM-DD, no prefix, no time)');
        }
        macs.add(bi.dateUnit(type, code, unit));
      } else throw refuse(code, `parameters of type ${spec.kind} are not served`);
    }
    return { param, macs: [...macs] };
  }

  /** The condition of a clause on one owner of type `type` (owner type and id as SQL). */
  private condition(type: string, spec: ParamSpec, clause: ParamClause, ownerType: SqlFragment, ownerId: string, aliases: Aliases): SqlFragment {
    const q = this.query(type, spec, clause);
    const b = aliases.next('b');
    const head = `${ownerType.sql} = ? and`;
    const rows = `select 1 from idx_blind ${b} where ${b}.resource_type = ? and ${b}.resource_id = ${ownerId} and ${b}.param = ?`;
    if ('missing' in q) return frag(`${head} ${q.missing ? 'not ' : ''}exists (${rows})`, ...ownerType.bindings, type, type, q.param);
    const list = q.macs.map(() => "decode(?, 'hex')").join(', ');
    return frag(`${head} exists (${rows} and ${b}.mac in (${list}))`, ...ownerType.bindings, type, type, q.param, ...q.macs);
  }

  /**
   * The condition of the final parameter of a clause on its owner, over the blind index of each type
   * in scope that keeps it there, OR the plaintext condition for the types in scope that do not.
   * Undefined when no type in scope has the parameter in a blind index.
   */
  clauseCondition(scopeTypes: readonly string[], clause: ParamClause, ownerType: SqlFragment, ownerId: string, aliases: Aliases, plain: () => SqlFragment): SqlFragment | undefined {
    const types = scopeTypes.length ? scopeTypes : resourceTypeInfo().map((t) => t.type);
    const blindTypes = types.filter((t) => this.isBlind(t, clause.code));
    if (!blindTypes.length) return undefined;
    const parts = blindTypes.map((t) => this.condition(t, paramsOf(t).supported.get(clause.code)!, clause, ownerType, ownerId, aliases));
    if (blindTypes.length < types.length) {
      const p = plain();
      parts.push(frag(`${ownerType.sql} not in (${blindTypes.map(() => '?').join(', ')}) and (${p.sql})`, ...ownerType.bindings, ...blindTypes, ...p.bindings));
    }
    return or(parts);
  }

  // ---- confirming --------------------------------------------------------------------------------

  /** Whether an opened resource satisfies a (top-level) clause on a blind parameter, as plaintext search would decide. */
  matches(resource: Resource, clause: ParamClause): boolean {
    const type = resource.resourceType;
    const spec = paramsOf(type).supported.get(clause.code);
    if (!spec || !this.isBlind(type, clause.code)) return true;
    const rows = rowsOfParam(resource, spec);
    const { modifier, values } = clause;
    const own = (list: { param: string }[] | undefined, param = spec.code) => (list ?? []).filter((r) => r.param === param);
    if (modifier === 'missing') {
      const present = own(rows.string).length + own(rows.token).length + own(rows.date).length > 0;
      return present !== (values[0] === 'true');
    }
    return values.some((raw) => {
      if (spec.kind === 'string') return stringMatches(own(rows.string) as StringRow[], raw, modifier, spec.code);
      if (spec.kind === 'token') return tokenMatches(rows.token, raw, modifier, spec.code);
      const q = parseDateQuery(unescapeValue(raw), spec.code);
      return (own(rows.date) as DateRow[]).some((r) => r.low >= q.low && r.high <= q.high);
    });
  }
}

/** The index rows of one parameter of a resource (what extraction stores for it). */
function rowsOfParam(resource: Resource, spec: ParamSpec): Required<IndexRows> {
  const out = emptyRows();
  let values: unknown[];
  try {
    values = evaluatorOf(spec)(resource, { resource });
  } catch {
    return out;
  }
  for (const v of values) {
    if (spec.kind === 'string') extractString(spec.code, v, null, out.string);
    else if (spec.kind === 'token') extractToken(spec.code, v, null, out.token);
    else if (spec.kind === 'date') extractDate(spec.code, v, null, out.date);
  }
  return out;
}

function stringMatches(rows: StringRow[], raw: string, modifier: string | undefined, code: string): boolean {
  const value = unescapeValue(raw);
  const n = normalise(value);
  if (code === 'phonetic') {
    const codes = new Set(n.split(/[\s-]+/).map(soundex).filter(Boolean));
    return rows.some((r) => codes.has(r.norm));
  }
  if (modifier === 'exact') return rows.some((r) => r.exact === value);
  return rows.some((r) => r.norm.startsWith(n));
}

function tokenMatches(rows: TokenRow[], raw: string, modifier: string | undefined, code: string): boolean {
  if (modifier === 'of-type') {
    const p = splitUnescaped(raw, '|').map(unescapeValue);
    return rows.some((r) => r.param === `${code}:of-type` && r.system === eqKey(p[0]) && r.code === eqKey(`${p[1]}|${p[2]}`));
  }
  // The same tests as tokenCondition (types/token.ts) makes in SQL.
  const t = parseTokenQuery(raw);
  return rows.some((r) => {
    if (r.param !== code) return false;
    if (t.code !== undefined && r.code !== eqKey(t.code)) return false;
    if (t.system !== undefined) return r.system === eqKey(t.system);
    return t.hasBar ? r.system === null : true;
  });
}

/**
 * Drops the resources that do not satisfy the request's blind clauses once opened (a truncated-HMAC
 * collision). Only top-level clauses are checked: chained ones concern other resources.
 */
export function confirmBlindMatches<T extends { resource?: Resource }>(req: SearchRequest, found: T[]): T[] {
  const blind = req.phi?.sealed ? req.phi.blind : undefined;
  if (!blind) return found;
  const clauses = req.clauses.filter((c) => c.path.length === 0);
  if (!clauses.length) return found;
  return found.filter((v) => !v.resource || clauses.every((c) => blind.matches(v.resource!, c)));
}

const modes = new WeakMap<PhiCodec, PhiIndexMode>();

/** How a codec's store keeps PHI in the search index: sealed with a blind index, or plaintext. */
export function phiIndexModeOf(codec: PhiCodec): PhiIndexMode {
  let m = modes.get(codec);
  if (!m) {
    m = codec.activeKid !== null && codec.blind && codec.policy ? { sealed: true, blind: new BlindIndex(codec.blind.indexer, codec.blind.kid, codec.policy) } : { sealed: codec.activeKid !== null };
    modes.set(codec, m);
  }
  return m;
}

