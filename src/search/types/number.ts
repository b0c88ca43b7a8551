// Number and quantity search (https://hl7.org/fhir/R4/search.html#number, #quantity): a search value
// stands for the interval its implicit precision gives (100 -> [99.5, 100.5), 1e2 -> [50, 150));
// stored values are exact points, or the bounds of a Range. Units are matched on system|code, or on
// code or unit text when no system is given; no UCUM conversion is done.
import { FhirError } from '../../fhir/errors.js';
import type { NumberRow, QuantityRow } from '../index-rows.js';
import { nodeType } from '../expressions.js';
import { eqKey } from '../keys.js';
import { splitUnescaped, unescapeValue } from '../escape.js';
import { frag, type SqlFragment } from '../sql.js';
import type { Prefix } from './date.js';

const NUMBER_RE = /^[+-]?(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/;

function num(v: unknown): string | undefined {
  if (typeof v === 'number' && Number.isFinite(v)) return String(v);
  if (typeof v === 'string' && NUMBER_RE.test(v)) return v;
  return undefined;
}

function rangeBounds(o: Record<string, unknown>): { low: string; high: string; unitOf?: Record<string, unknown> } | undefined {
  const lo = o.low as Record<string, unknown> | undefined;
  const hi = o.high as Record<string, unknown> | undefined;
  const low = num(lo?.value);
  const high = num(hi?.value);
  if (low === undefined && high === undefined) return undefined;
  return { low: low ?? '-Infinity', high: high ?? 'Infinity', ...(lo ?? hi ? { unitOf: (lo ?? hi) as Record<string, unknown> } : {}) };
}

function isRange(o: Record<string, unknown>, t: string | undefined): boolean {
  return t === 'Range' || ((('low' in o) || ('high' in o)) && !('value' in o));
}

/** Index rows for one value of a number parameter (decimal, integer, or a Range). */
export function extractNumber(param: string, value: unknown, grp: number | null, out: NumberRow[]): void {
  const g = grp !== null ? { grp } : {};
  const n = num(value);
  if (n !== undefined) {
    out.push({ param, ...g, low: n, high: n });
    return;
  }
  if (value && typeof value === 'object') {
    const o = value as Record<string, unknown>;
    if (isRange(o, nodeType(value))) {
      const r = rangeBounds(o);
      if (r) out.push({ param, ...g, low: r.low, high: r.high });
    } else {
      const v = num(o.value);
      if (v !== undefined) out.push({ param, ...g, low: v, high: v });
    }
  }
}

function str(v: unknown): string | null {
  return typeof v === 'string' && v !== '' ? v : null;
}

/** Index rows for one value of a quantity parameter (Quantity and its profiles, Money, Range). */
export function extractQuantity(param: string, value: unknown, grp: number | null, out: QuantityRow[]): void {
  if (!value || typeof value !== 'object') return;
  const o = value as Record<string, unknown>;
  const t = nodeType(value);
  const g = grp !== null ? { grp } : {};
  if (t === 'SampledData' || 'origin' in o) return;
  if (isRange(o, t)) {
    const r = rangeBounds(o);
    if (!r) return;
    const u = r.unitOf ?? {};
    out.push({ param, ...g, low: r.low, high: r.high, system: eqKey(str(u.system)), code: eqKey(str(u.code)), unit: str(u.unit) });
    return;
  }
  const v = num(o.value);
  if (v === undefined) return;
  let low = v;
  let high = v;
  // A comparator makes the stored value a bound (e.g. "<5" is anything below 5).
  if (o.comparator === '<' || o.comparator === '<=') low = '-Infinity';
  if (o.comparator === '>' || o.comparator === '>=') high = 'Infinity';
  if (typeof o.currency === 'string') {
    out.push({ param, ...g, low, high, system: 'urn:iso:std:iso:4217', code: eqKey(o.currency), unit: o.currency });
    return;
  }
  out.push({ param, ...g, low, high, system: eqKey(str(o.system)), code: eqKey(str(o.code)), unit: str(o.unit) });
}

export interface NumberQuery {
  prefix: Prefix;
  /** The value as written (PostgreSQL numeric reads it exactly). */
  value: string;
  /** Half the unit of the last significant digit, as a numeric literal. */
  half: string;
}

export interface QuantityQuery extends NumberQuery {
  system?: string;
  code?: string;
}

/** Parses `[prefix]number` (search.html#number). */
export function parseNumberQuery(raw: string, code: string): NumberQuery {
  const pm = /^(eq|ne|gt|lt|ge|le|sa|eb|ap)/.exec(raw);
  const prefix = (pm ? pm[1] : 'eq') as Prefix;
  const text = pm ? raw.slice(2) : raw;
  const m = NUMBER_RE.exec(text);
  if (!m) throw new FhirError('invalid-search', `parameter ${code}: the value is not a number`);
  const decimals = m[2]?.length ?? 0;
  const exp = m[3] === undefined ? 0 : Number(m[3]);
  if (Math.abs(exp) > 1000) throw new FhirError('invalid-search', `parameter ${code}: the exponent is out of range`);
  return { prefix, value: text, half: `5e${exp - decimals - 1}` };
}

/** Parses `[prefix]number|system|code`, `[prefix]number||code` or `[prefix]number` (search.html#quantity). */
export function parseQuantityQuery(raw: string, code: string): QuantityQuery {
  const parts = splitUnescaped(raw, '|');
  if (parts.length !== 1 && parts.length !== 3) throw new FhirError('invalid-search', `parameter ${code}: a quantity is number, number|system|code or number||code`);
  const q: QuantityQuery = parseNumberQuery(unescapeValue(parts[0]), code);
  if (parts.length === 3) {
    const system = unescapeValue(parts[1]);
    const unit = unescapeValue(parts[2]);
    if (system) q.system = system;
    if (unit) q.code = unit;
  }
  return q;
}

/** The prefix comparison on `${a}.low` / `${a}.high` (closed stored bounds against the search interval). */
export function numberCondition(a: string, q: NumberQuery): SqlFragment {
  const v = q.value;
  const eq = frag(`${a}.low >= (?::numeric - ?::numeric) and ${a}.high < (?::numeric + ?::numeric)`, v, q.half, v, q.half);
  switch (q.prefix) {
    case 'eq':
      return eq;
    case 'ne':
      return frag(`not (${eq.sql})`, ...eq.bindings);
    case 'gt':
      return frag(`${a}.high > ?::numeric`, v);
    case 'lt':
      return frag(`${a}.low < ?::numeric`, v);
    case 'ge':
      return frag(`${a}.high >= ?::numeric`, v);
    case 'le':
      return frag(`${a}.low <= ?::numeric`, v);
    case 'sa':
      return frag(`${a}.low > ?::numeric`, v);
    case 'eb':
      return frag(`${a}.high < ?::numeric`, v);
    case 'ap':
      // Approximately: within 10% of the value (search.html#prefix leaves the amount to the server).
      return frag(`${a}.low <= (?::numeric + abs(?::numeric) * 0.1) and ${a}.high >= (?::numeric - abs(?::numeric) * 0.1)`, v, v, v, v);
  }
}

export function quantityCondition(a: string, q: QuantityQuery): SqlFragment {
  const value = numberCondition(a, q);
  if (q.code === undefined && q.system === undefined) return value;
  if (q.system !== undefined && q.code !== undefined) return frag(`${a}.system = ? and ${a}.code = ? and (${value.sql})`, eqKey(q.system), eqKey(q.code), ...value.bindings);
  if (q.system !== undefined) return frag(`${a}.system = ? and (${value.sql})`, eqKey(q.system), ...value.bindings);
  return frag(`(${a}.code = ? or ${a}.unit = ?) and (${value.sql})`, eqKey(q.code!), q.code!, ...value.bindings);
}
