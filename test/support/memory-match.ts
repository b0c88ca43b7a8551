// Search matching per parameter type (https://hl7.org/fhir/R4/search.html#ptypes), written from the
// specification for the differential test, independently of src/search: typed FHIRPath results become
// "entries" and each search value is matched against them in memory. Where the specification leaves a
// choice to the server (ap, unqualified time zones) the reading is stated next to the code.

/** One FHIRPath result with its FHIR type name (`HumanName`, `dateTime`, `Reference`, `string`, ...). */
export interface Typed {
  type: string;
  value: unknown;
}

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : v === undefined || v === null ? [] : [v]);

// ---------------------------------------------------------------------------------------------- escaping

/** Splits at unescaped `sep` (search.html#escaping), leaving the escapes in place. */
export function splitEscaped(raw: string, sep: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] === '\\' && i + 1 < raw.length) {
      cur += raw.slice(i, i + 2);
      i++;
    } else if (raw[i] === sep) {
      out.push(cur);
      cur = '';
    } else cur += raw[i];
  }
  out.push(cur);
  return out;
}

export function unescape(s: string): string {
  return s.replace(/\\([\\,|$])/g, '$1');
}

/** Escapes `\ , | $` in a literal value for a search URL. */
export function escape(s: string): string {
  return s.replace(/[\\,|$]/g, (c) => `\\${c}`);
}

// ------------------------------------------------------------------------------------------------ string

/** Case- and accent-insensitive form (search.html#string); runs of white space count as one space. */
export function fold(s: string): string {
  return s.normalize('NFD').replace(/\p{M}/gu, '').toLowerCase().replace(/\s+/g, ' ').trim();
}

const NAME_PARTS = ['family', 'given', 'prefix', 'suffix', 'text'];
const ADDRESS_PARTS = ['line', 'city', 'district', 'state', 'postalCode', 'country', 'text'];

/** The strings a string parameter searches in one value: HumanName and Address by their parts. */
export function stringEntries(t: Typed): string[] {
  if (typeof t.value === 'string') return t.value === '' ? [] : [t.value];
  if (!isObj(t.value)) return [];
  const parts = t.type === 'HumanName' ? NAME_PARTS : t.type === 'Address' ? ADDRESS_PARTS : undefined;
  if (!parts) throw new Error(`string search over ${t.type} is not modelled`);
  const o = t.value;
  return parts.flatMap((p) => list(o[p])).filter((s): s is string => typeof s === 'string' && s !== '');
}

export function stringMatches(entries: string[], raw: string, modifier: string | undefined): boolean {
  const q = unescape(raw);
  if (modifier === 'exact') return entries.includes(q);
  const fq = fold(q);
  if (modifier === 'contains') return entries.some((e) => fold(e).includes(fq));
  return entries.some((e) => fold(e).startsWith(fq));
}

// ------------------------------------------------------------------------------------------------- token

export interface TokenEntry {
  system?: string;
  code?: string;
  /** Text the :text modifier searches: Coding.display, CodeableConcept.text, Identifier.type.text. */
  text?: string;
  /** Identifier.type codings, for :of-type. */
  types?: { system?: string; code?: string }[];
}

const PRIMITIVE_TOKENS = new Set(['code', 'string', 'id', 'uri', 'url', 'canonical', 'oid', 'uuid', 'boolean', 'markdown', 'integer', 'positiveInt', 'unsignedInt', 'decimal']);
/** Datatypes a token expression reaches in R4 that hold no token (e.g. Group.characteristic.value[x]). */
const NOT_TOKENS = new Set(['Quantity', 'Age', 'Duration', 'Distance', 'Count', 'SimpleQuantity', 'Money', 'Range', 'Ratio', 'Reference', 'Period', 'Attachment', 'dateTime', 'date', 'instant']);

/** Token entries of one value (search.html#token, the table of datatypes). */
export function tokenEntries(t: Typed): TokenEntry[] {
  const v = t.value;
  if (PRIMITIVE_TOKENS.has(t.type)) {
    if (typeof v === 'boolean' || typeof v === 'number') return [{ code: String(v) }];
    return str(v) ? [{ code: v as string }] : [];
  }
  if (NOT_TOKENS.has(t.type) || !isObj(v)) return [];
  const coding = (c: unknown): TokenEntry[] => {
    if (!isObj(c)) return [];
    const e: TokenEntry = {};
    if (str(c.system)) e.system = c.system as string;
    if (str(c.code)) e.code = c.code as string;
    if (str(c.display)) e.text = c.display as string;
    return e.system || e.code || e.text ? [e] : [];
  };
  switch (t.type) {
    case 'Coding':
      return coding(v);
    case 'CodeableConcept':
      return [...list(v.coding).flatMap(coding), ...(str(v.text) ? [{ text: v.text as string }] : [])];
    case 'Identifier': {
      const e: TokenEntry = {};
      if (str(v.system)) e.system = v.system as string;
      if (str(v.value)) e.code = v.value as string;
      const type = isObj(v.type) ? v.type : undefined;
      if (type && str(type.text)) e.text = type.text as string;
      if (type) e.types = list(type.coding).filter(isObj).map((c) => ({ ...(str(c.system) ? { system: c.system as string } : {}), ...(str(c.code) ? { code: c.code as string } : {}) }));
      return e.system || e.code || e.text ? [e] : [];
    }
    case 'ContactPoint':
      // ContactPoint.system is a kind of contact (phone, email), not a namespace: the value is the code.
      return str(v.value) ? [{ code: v.value as string }] : [];
    default:
      throw new Error(`token search over ${t.type} is not modelled`);
  }
}

/** `[system]|[code]`, `|[code]`, `[system]|` or `[code]` against one entry (search.html#token). */
function tokenEntryMatches(e: TokenEntry, raw: string): boolean {
  const parts = splitEscaped(raw, '|');
  if (parts.length === 1) return e.code !== undefined && e.code === unescape(parts[0]);
  const system = unescape(parts[0]);
  const code = unescape(parts.slice(1).join('|'));
  if (system === '') return e.system === undefined && e.code === code;
  if (code === '') return e.system === system;
  return e.system === system && e.code === code;
}

export function tokenMatches(entries: TokenEntry[], raw: string, modifier: string | undefined): boolean {
  if (modifier === 'text') {
    const q = fold(unescape(raw));
    return entries.some((e) => e.text !== undefined && fold(e.text).startsWith(q));
  }
  if (modifier === 'of-type') {
    const [ts, tc, value] = splitEscaped(raw, '|').map(unescape);
    return entries.some((e) => e.code === value && (e.types ?? []).some((t) => t.system === ts && t.code === tc));
  }
  return entries.some((e) => tokenEntryMatches(e, raw));
}

// --------------------------------------------------------------------------------------------- reference

export type RefEntry = { kind: 'local'; type: string; id: string } | { kind: 'url'; url: string; version?: string };

const LOCAL = /^([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/;

/**
 * Reads one stored reference string: `Type/id` (relative, on this server), an absolute URL on this
 * server (the same thing), any other URL or canonical (`url|version`). Contained (`#x`) and unresolved
 * placeholder references are not searchable.
 */
export function parseStoredRef(ref: string, baseUrl: string, isType: (t: string) => boolean): RefEntry | undefined {
  if (ref === '' || ref.startsWith('#')) return undefined;
  const local = LOCAL.exec(ref.startsWith(`${baseUrl}/`) ? ref.slice(baseUrl.length + 1) : ref);
  if (local && isType(local[1])) return { kind: 'local', type: local[1], id: local[2] };
  const bar = ref.lastIndexOf('|');
  if (bar > 0 && !ref.includes('/_history/')) return { kind: 'url', url: ref.slice(0, bar), ...(bar < ref.length - 1 ? { version: ref.slice(bar + 1) } : {}) };
  return { kind: 'url', url: ref };
}

export interface RefValues {
  refs: RefEntry[];
  identifiers: TokenEntry[];
}

export function referenceEntries(t: Typed, baseUrl: string, isType: (t: string) => boolean): RefValues {
  const out: RefValues = { refs: [], identifiers: [] };
  if (typeof t.value === 'string') {
    const r = parseStoredRef(t.value, baseUrl, isType);
    if (r) out.refs.push(r);
    return out;
  }
  // An Attachment alternative (Consent.sourceAttachment) is not a reference.
  if (!isObj(t.value) || t.type === 'Attachment') return out;
  if (t.type !== 'Reference') throw new Error(`reference search over ${t.type} is not modelled`);
  if (str(t.value.reference)) {
    const r = parseStoredRef(t.value.reference as string, baseUrl, isType);
    if (r) out.refs.push(r);
  }
  if (isObj(t.value.identifier)) out.identifiers.push(...tokenEntries({ type: 'Identifier', value: t.value.identifier }));
  return out;
}

/**
 * One reference search value (search.html#reference): `[id]`, `[Type]/[id]`, an absolute URL (this
 * server's base makes it local), or a canonical `url[|version]`; `typeModifier` is :[type].
 */
export function referenceMatches(v: RefValues, raw: string, typeModifier: string | undefined, baseUrl: string): boolean {
  const q = unescape(raw);
  const rel = q.startsWith(`${baseUrl}/`) ? q.slice(baseUrl.length + 1) : q;
  if (/^[A-Za-z0-9\-.]{1,64}$/.test(rel)) return v.refs.some((r) => r.kind === 'local' && r.id === rel && (typeModifier === undefined || r.type === typeModifier));
  const local = LOCAL.exec(rel);
  if (local) return v.refs.some((r) => r.kind === 'local' && r.type === local[1] && r.id === local[2]);
  const bar = q.lastIndexOf('|');
  const url = bar > 0 ? q.slice(0, bar) : q;
  const version = bar > 0 ? q.slice(bar + 1) : undefined;
  return v.refs.some((r) => r.kind === 'url' && r.url === url && (version === undefined || r.version === version));
}

// -------------------------------------------------------------------------------------------------- date

export interface Interval {
  low: number;
  high: number;
}

const DATE = /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

function utcMs(y: number, m: number, d: number, h = 0, mi = 0, s = 0, ms = 0): number {
  // setUTCFullYear takes years 0-99 literally (Date.UTC would read them as 1900-1999) and carries
  // month and day overflow (December + 1 is January of the next year).
  const t = new Date(0);
  t.setUTCFullYear(y, m, d);
  t.setUTCHours(h, mi, s, ms);
  return t.getTime();
}

/**
 * The interval a date, dateTime or instant stands for (search.html#date: "the precision of the value
 * is the range"). Reading: values without a time zone are taken as UTC (the specification leaves the
 * zone of such values to the server).
 */
export function dateInterval(s: string): Interval | undefined {
  const m = DATE.exec(s);
  if (!m) return undefined;
  const y = Number(m[1]);
  if (m[2] === undefined) return { low: utcMs(y, 0, 1), high: utcMs(y + 1, 0, 1) };
  const mo = Number(m[2]) - 1;
  if (m[3] === undefined) return { low: utcMs(y, mo, 1), high: utcMs(y, mo + 1, 1) };
  const d = Number(m[3]);
  if (m[4] === undefined) return { low: utcMs(y, mo, d), high: utcMs(y, mo, d + 1) };
  const tz = m[8] === undefined || m[8] === 'Z' ? 0 : (m[8][0] === '-' ? -1 : 1) * (Number(m[8].slice(1, 3)) * 60 + Number(m[8].slice(4))) * 60_000;
  const frac = m[7] === undefined ? undefined : m[7].slice(1);
  const ms = frac === undefined ? 0 : Number(frac.padEnd(3, '0').slice(0, 3));
  const low = utcMs(y, mo, d, Number(m[4]), Number(m[5]), Number(m[6] ?? 0), ms) - tz;
  const width = m[6] === undefined ? 60_000 : frac === undefined ? 1000 : frac.length >= 3 ? 1 : 10 ** (3 - frac.length);
  return { low, high: low + width };
}

function periodInterval(p: Obj): Interval | undefined {
  const start = str(p.start) ? dateInterval(p.start as string) : undefined;
  const end = str(p.end) ? dateInterval(p.end as string) : undefined;
  if (!start && !end) return undefined;
  // An open end is unbounded (an ongoing Period).
  return { low: start ? start.low : -Infinity, high: end ? end.high : Infinity };
}

/** date, dateTime, instant, Period and Timing (only its outer limits: events and repeat.boundsPeriod). */
export function dateEntries(t: Typed): Interval[] {
  // A string alternative of a choice (Immunization.occurrenceString) is free text, not a date.
  if (t.type === 'string') return [];
  if (typeof t.value === 'string') {
    const r = dateInterval(t.value);
    return r ? [r] : [];
  }
  if (!isObj(t.value)) return [];
  if (t.type === 'Period') {
    const r = periodInterval(t.value);
    return r ? [r] : [];
  }
  if (t.type === 'Timing') {
    const parts = list(t.value.event).flatMap((e) => (typeof e === 'string' ? [dateInterval(e)] : [])).filter((x): x is Interval => !!x);
    const rep = isObj(t.value.repeat) ? t.value.repeat : undefined;
    if (rep && isObj(rep.boundsPeriod)) {
      const b = periodInterval(rep.boundsPeriod);
      if (b) parts.push(b);
    }
    if (!parts.length) return [];
    return [{ low: Math.min(...parts.map((p) => p.low)), high: Math.max(...parts.map((p) => p.high)) }];
  }
  throw new Error(`date search over ${t.type} is not modelled`);
}

export const PREFIXES = ['eq', 'ne', 'gt', 'lt', 'ge', 'le', 'sa', 'eb', 'ap'] as const;
export type Prefix = (typeof PREFIXES)[number];

function splitPrefix(raw: string): { prefix: Prefix; rest: string } {
  const p = raw.slice(0, 2) as Prefix;
  return (PREFIXES as readonly string[]).includes(p) && !/^\d/.test(raw) ? { prefix: p, rest: raw.slice(2) } : { prefix: 'eq', rest: raw };
}

/**
 * A date search value against stored intervals (search.html#prefix): eq the search range contains the
 * value; gt/lt the range above/below the search range overlaps it; ge/le gt/lt or eq; sa/eb it lies
 * wholly after/before. Reading for ap (left to the server): the search range widened on each side by
 * 10% of the distance between its middle and now.
 */
export function dateMatches(entries: Interval[], raw: string, now: number): boolean {
  const { prefix, rest } = splitPrefix(unescape(raw));
  const q = dateInterval(rest);
  if (!q) throw new Error(`not a date: ${raw}`);
  const eq = (e: Interval) => e.low >= q.low && e.high <= q.high;
  const test: Record<Prefix, (e: Interval) => boolean> = {
    eq,
    ne: (e) => !eq(e),
    gt: (e) => e.high > q.high,
    lt: (e) => e.low < q.low,
    ge: (e) => e.high > q.high || eq(e),
    le: (e) => e.low < q.low || eq(e),
    sa: (e) => e.low >= q.high,
    eb: (e) => e.high <= q.low,
    ap: (e) => {
      const gap = Math.abs(now - (q.low + q.high) / 2) * 0.1;
      return e.low < q.high + gap && e.high > q.low - gap;
    },
  };
  return entries.some(test[prefix]);
}

// ---------------------------------------------------------------------------------------- number, quantity

/** An exact decimal m x 10^e, or an infinity. */
export type Dec = { m: bigint; e: number } | number;

export function dec(s: string | number): Dec | undefined {
  const m = /^([+-]?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(String(s));
  if (!m) return undefined;
  const frac = m[3] ?? '';
  return { m: BigInt(`${m[1]}${m[2]}${frac}`), e: Number(m[4] ?? 0) - frac.length };
}

export function cmp(a: Dec, b: Dec): number {
  if (typeof a === 'number' && typeof b === 'number') return a === b ? 0 : a < b ? -1 : 1;
  if (typeof a === 'number') return a < 0 ? -1 : 1;
  if (typeof b === 'number') return b < 0 ? 1 : -1;
  const e = Math.min(a.e, b.e);
  const x = a.m * 10n ** BigInt(a.e - e);
  const y = b.m * 10n ** BigInt(b.e - e);
  return x === y ? 0 : x < y ? -1 : 1;
}

function add(a: { m: bigint; e: number }, b: { m: bigint; e: number }): { m: bigint; e: number } {
  const e = Math.min(a.e, b.e);
  return { m: a.m * 10n ** BigInt(a.e - e) + b.m * 10n ** BigInt(b.e - e), e };
}

/** Closed bounds of a stored value; a point has low = high. */
export interface NumEntry {
  low: Dec;
  high: Dec;
}

export interface QtyEntry extends NumEntry {
  system?: string;
  code?: string;
  unit?: string;
}

function rangeEntry(r: Obj): (NumEntry & { unitOf?: Obj }) | undefined {
  const lo = isObj(r.low) ? r.low : undefined;
  const hi = isObj(r.high) ? r.high : undefined;
  const low = lo && lo.value !== undefined ? dec(lo.value as number) : undefined;
  const high = hi && hi.value !== undefined ? dec(hi.value as number) : undefined;
  if (!low && !high) return undefined;
  return { low: low ?? -Infinity, high: high ?? Infinity, ...(lo || hi ? { unitOf: (lo ?? hi) as Obj } : {}) };
}

export function numberEntries(t: Typed): NumEntry[] {
  if (typeof t.value === 'number' || typeof t.value === 'string') {
    const d = dec(t.value);
    return d ? [{ low: d, high: d }] : [];
  }
  if (isObj(t.value) && t.type === 'Range') {
    const r = rangeEntry(t.value);
    return r ? [{ low: r.low, high: r.high }] : [];
  }
  if (isObj(t.value) && t.value.value !== undefined) {
    const d = dec(t.value.value as number);
    return d ? [{ low: d, high: d }] : [];
  }
  return [];
}

const QUANTITIES = new Set(['Quantity', 'Age', 'Duration', 'Distance', 'Count', 'SimpleQuantity', 'MoneyQuantity']);

/**
 * Quantity entries: Quantity and its profiles, Money (currency as an ISO 4217 code) and Range.
 * Reading: a comparator turns the value into a bound ("<5" stands for everything below 5).
 */
export function quantityEntries(t: Typed): QtyEntry[] {
  const v = t.value;
  if (!isObj(v) || t.type === 'SampledData') return [];
  const unit = (u: Obj) => ({ ...(str(u.system) ? { system: u.system as string } : {}), ...(str(u.code) ? { code: u.code as string } : {}), ...(str(u.unit) ? { unit: u.unit as string } : {}) });
  if (t.type === 'Range') {
    const r = rangeEntry(v);
    return r ? [{ low: r.low, high: r.high, ...unit(r.unitOf ?? {}) }] : [];
  }
  const d = v.value === undefined ? undefined : dec(v.value as number);
  if (!d) return [];
  if (t.type === 'Money') return typeof v.currency === 'string' ? [{ low: d, high: d, system: 'urn:iso:std:iso:4217', code: v.currency, unit: v.currency }] : [{ low: d, high: d }];
  if (!QUANTITIES.has(t.type)) throw new Error(`quantity search over ${t.type} is not modelled`);
  const c = v.comparator;
  return [{ low: c === '<' || c === '<=' ? -Infinity : d, high: c === '>' || c === '>=' ? Infinity : d, ...unit(v) }];
}

/**
 * A number search value (search.html#number): its implicit precision makes eq/ne a range (100 is
 * [99.5, 100.5)); gt, lt, ge, le, sa and eb compare with the exact value. Reading for ap: within 10% of
 * the value.
 */
function numberEntryMatches(e: NumEntry, raw: string): boolean {
  const { prefix, rest } = splitPrefix(raw);
  const v = dec(rest);
  if (!v || typeof v === 'number') throw new Error(`not a number: ${raw}`);
  const dm = /^[+-]?\d+(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(rest)!;
  const half = { m: 5n, e: Number(dm[2] ?? 0) - (dm[1]?.length ?? 0) - 1 };
  const lowQ = add(v, { m: -half.m, e: half.e });
  const highQ = add(v, half);
  const eq = cmp(e.low, lowQ) >= 0 && cmp(e.high, highQ) < 0;
  const tenth = { m: (v.m < 0n ? -v.m : v.m), e: v.e - 1 };
  switch (prefix) {
    case 'eq':
      return eq;
    case 'ne':
      return !eq;
    case 'gt':
      return cmp(e.high, v) > 0;
    case 'lt':
      return cmp(e.low, v) < 0;
    case 'ge':
      return cmp(e.high, v) >= 0;
    case 'le':
      return cmp(e.low, v) <= 0;
    case 'sa':
      return cmp(e.low, v) > 0;
    case 'eb':
      return cmp(e.high, v) < 0;
    case 'ap':
      return cmp(e.low, add(v, tenth)) <= 0 && cmp(e.high, add(v, { m: -tenth.m, e: tenth.e })) >= 0;
  }
}

export function numberMatches(entries: NumEntry[], raw: string): boolean {
  return entries.some((e) => numberEntryMatches(e, unescape(raw)));
}

/** `[prefix]number[|system|code]` (search.html#quantity); `number||code` matches the code or the unit text. */
export function quantityMatches(entries: QtyEntry[], raw: string): boolean {
  const parts = splitEscaped(raw, '|').map(unescape);
  const [num, system, code] = parts;
  return entries.some((e) => {
    if (!numberEntryMatches(e, num)) return false;
    if (parts.length === 1) return true;
    if (system && e.system !== system) return false;
    if (code && (system ? e.code !== code : e.code !== code && e.unit !== code)) return false;
    return true;
  });
}

// --------------------------------------------------------------------------------------------------- uri

export function uriEntries(t: Typed): string[] {
  if (typeof t.value === 'string') return t.value === '' ? [] : [t.value];
  throw new Error(`uri search over ${t.type} is not modelled`);
}

/**
 * search.html#uri: exact and case-sensitive; :below matches stored URIs that start with the value;
 * :above matches stored URIs that are the value or one of its parent paths.
 */
export function uriMatches(entries: string[], raw: string, modifier: string | undefined): boolean {
  const q = unescape(raw);
  if (modifier === 'below') return entries.some((u) => u.startsWith(q));
  if (modifier === 'above') return entries.some((u) => u === q || (q.startsWith(u.endsWith('/') ? u : `${u}/`) && /^[a-z][a-z0-9+.-]*:\/\/[^/]+\/./.test(u)));
  return entries.includes(q);
}
