// Date search (https://hl7.org/fhir/R4/search.html#date): every date, dateTime, instant, Period and
// Timing is an interval [low, high) derived from its precision; prefixes compare intervals.
import { FhirError } from '../../fhir/errors.js';
import type { DateRow } from '../index-rows.js';
import { nodeType } from '../expressions.js';
import { frag, type SqlFragment } from '../sql.js';

/** Open interval ends (the JS Date limits), stored as bigint in idx_date. */
export const MIN_MS = -8_640_000_000_000_000;
export const MAX_MS = 8_640_000_000_000_000;

export const PREFIXES = ['eq', 'ne', 'gt', 'lt', 'ge', 'le', 'sa', 'eb', 'ap'] as const;
export type Prefix = (typeof PREFIXES)[number];

const DATE_RE = /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

function utc(y: number, mo: number, d: number, h = 0, mi = 0, s = 0, ms = 0): number {
  const t = new Date(0);
  // setUTCFullYear, unlike Date.UTC, does not map years 0-99 to 1900-1999.
  t.setUTCFullYear(y, mo, d);
  t.setUTCHours(h, mi, s, ms);
  return t.getTime();
}

/**
 * The interval a FHIR date/dateTime/instant denotes: from its first instant to the first instant
 * after its precision (2013 -> all of 2013; 2013-01-14T10:00 -> that minute). Values without a time
 * zone are read as UTC. Undefined when the text is not a valid date.
 */
export function dateRange(text: string): { low: number; high: number } | undefined {
  const m = DATE_RE.exec(text);
  if (!m) return undefined;
  const y = Number(m[1]);
  const mo = m[2] === undefined ? undefined : Number(m[2]) - 1;
  const d = m[3] === undefined ? undefined : Number(m[3]);
  if (mo !== undefined && (mo < 0 || mo > 11)) return undefined;
  if (mo === undefined) return { low: utc(y, 0, 1), high: utc(y + 1, 0, 1) };
  if (d === undefined) return { low: utc(y, mo, 1), high: utc(y, mo + 1, 1) };
  if (d < 1 || d > 31 || new Date(utc(y, mo, d)).getUTCMonth() !== mo) return undefined;
  if (m[4] === undefined) return { low: utc(y, mo, d), high: utc(y, mo, d + 1) };
  const h = Number(m[4]);
  const mi = Number(m[5]);
  const s = m[6] === undefined ? undefined : Number(m[6]);
  if (h > 23 || mi > 59 || (s !== undefined && s > 60)) return undefined;
  const frac = m[7];
  const ms = frac === undefined ? 0 : Math.floor(Number(`0.${frac}`) * 1000);
  let offset = 0;
  if (m[8] && m[8] !== 'Z') {
    const sign = m[8][0] === '-' ? -1 : 1;
    offset = sign * (Number(m[8].slice(1, 3)) * 60 + Number(m[8].slice(4, 6))) * 60_000;
  }
  const low = utc(y, mo, d, h, mi, s ?? 0, ms) - offset;
  const unit = s === undefined ? 60_000 : frac === undefined ? 1000 : Math.max(1, 10 ** (3 - frac.length));
  return { low, high: low + unit };
}

function rangeOfPeriod(p: Record<string, unknown>): { low: number; high: number } | undefined {
  const start = typeof p.start === 'string' ? dateRange(p.start) : undefined;
  const end = typeof p.end === 'string' ? dateRange(p.end) : undefined;
  if (!start && !end) return undefined;
  return { low: start?.low ?? MIN_MS, high: end?.high ?? MAX_MS };
}

/** Timing: only the outer limits count (search.html#date): its events and its bounding Period. */
function rangeOfTiming(t: Record<string, unknown>): { low: number; high: number } | undefined {
  const parts: { low: number; high: number }[] = [];
  if (Array.isArray(t.event)) for (const e of t.event) if (typeof e === 'string') { const r = dateRange(e); if (r) parts.push(r); }
  const repeat = t.repeat as Record<string, unknown> | undefined;
  if (repeat?.boundsPeriod && typeof repeat.boundsPeriod === 'object') {
    const r = rangeOfPeriod(repeat.boundsPeriod as Record<string, unknown>);
    if (r) parts.push(r);
  }
  if (!parts.length) return undefined;
  return { low: Math.min(...parts.map((p) => p.low)), high: Math.max(...parts.map((p) => p.high)) };
}

/** Index rows for one value of a date parameter. */
export function extractDate(param: string, value: unknown, grp: number | null, out: DateRow[]): void {
  let r: { low: number; high: number } | undefined;
  if (typeof value === 'string') r = dateRange(value);
  else if (value && typeof value === 'object') {
    const o = value as Record<string, unknown>;
    const t = nodeType(value);
    if (t === 'Timing' || 'event' in o || 'repeat' in o) r = rangeOfTiming(o);
    else if (t === 'Period' || 'start' in o || 'end' in o) r = rangeOfPeriod(o);
  }
  if (r) out.push({ param, ...(grp !== null ? { grp } : {}), low: r.low, high: r.high });
}

export interface DateQuery {
  prefix: Prefix;
  low: number;
  high: number;
}

/** Parses `[prefix]date`; a '+' of a time zone that arrived as a space (unencoded in the URL) is restored. */
export function parseDateQuery(raw: string, code: string): DateQuery {
  const pm = /^(eq|ne|gt|lt|ge|le|sa|eb|ap)/.exec(raw);
  const prefix = (pm ? pm[1] : 'eq') as Prefix;
  const text = (pm ? raw.slice(2) : raw).replace(/ (\d{2}:\d{2})$/, '+$1');
  const r = dateRange(text);
  if (!r) throw new FhirError('invalid-search', `parameter ${code}: the value is not a valid date (YYYY, YYYY-MM, YYYY-MM-DD or a dateTime)`);
  return { prefix, ...r };
}

/** ap: the search interval widened by 10% of its distance from now (search.html#prefix leaves the amount to the server). */
function approx(q: DateQuery, now: number): { low: number; high: number } {
  const gap = Math.abs(now - (q.low + q.high) / 2) * 0.1;
  return { low: Math.floor(q.low - gap), high: Math.ceil(q.high + gap) };
}

/** The interval comparison of a prefix on index columns `${a}.low` / `${a}.high` (search.html#prefix). */
export function dateCondition(a: string, q: DateQuery, now: number): SqlFragment {
  const eq = frag(`${a}.low >= ? and ${a}.high <= ?`, q.low, q.high);
  switch (q.prefix) {
    case 'eq':
      return eq;
    case 'ne':
      return frag(`not (${eq.sql})`, ...eq.bindings);
    case 'gt':
      return frag(`${a}.high > ?`, q.high);
    case 'lt':
      return frag(`${a}.low < ?`, q.low);
    case 'ge':
      return frag(`${a}.high > ? or (${eq.sql})`, q.high, ...eq.bindings);
    case 'le':
      return frag(`${a}.low < ? or (${eq.sql})`, q.low, ...eq.bindings);
    case 'sa':
      return frag(`${a}.low >= ?`, q.high);
    case 'eb':
      return frag(`${a}.high <= ?`, q.low);
    case 'ap': {
      const w = approx(q, now);
      return frag(`${a}.low < ? and ${a}.high > ?`, w.high, w.low);
    }
  }
}

/**
 * The same comparisons for a point in time held in a timestamptz column (meta.lastUpdated): the
 * point t is the interval [t, t+1ms), which reduces each prefix to one indexable comparison.
 */
export function instantCondition(col: string, q: DateQuery, now: number): SqlFragment {
  const at = (ms: number) => new Date(ms);
  switch (q.prefix) {
    case 'eq':
      return frag(`${col} >= ? and ${col} < ?`, at(q.low), at(q.high));
    case 'ne':
      return frag(`not (${col} >= ? and ${col} < ?)`, at(q.low), at(q.high));
    case 'gt':
    case 'sa':
      return frag(`${col} >= ?`, at(q.high));
    case 'lt':
    case 'eb':
      return frag(`${col} < ?`, at(q.low));
    case 'ge':
      return frag(`${col} >= ?`, at(q.low));
    case 'le':
      return frag(`${col} < ?`, at(q.high));
    case 'ap': {
      const w = approx(q, now);
      return frag(`${col} >= ? and ${col} < ?`, at(w.low), at(w.high));
    }
  }
}
