// Candidate search values for the search differential test (https://hl7.org/fhir/R4/search.html#ptypes):
// per parameter type, values drawn from what the corpus holds, written as query text with the
// modifiers and prefixes of the type (search-queries.ts turns them into queries).
import type { Resource } from 'fhir/r4.js';
import { dateEntries, escape, fold, PREFIXES, quantityEntries, referenceEntries, tokenEntries, type Typed } from './memory-match.js';
import { MemorySearch, officialParams, type SpDef } from './memory-search.js';

export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  /** mulberry32 */
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)];
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

export function shuffle<T>(rng: Rng, a: T[]): T[] {
  const out = [...a];
  for (let i = out.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

function uniq<T>(a: T[]): T[] {
  const seen = new Set<string>();
  return a.filter((x) => {
    const k = JSON.stringify(x);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

const MAX_VALUE = 200;

// ------------------------------------------------------------------------------------ values as query text

function flipCase(s: string): string {
  return [...s].map((ch) => (ch === ch.toUpperCase() ? ch.toLowerCase() : ch.toUpperCase())).join('');
}

function caseVariant(rng: Rng, s: string): string {
  switch (rng.int(4)) {
    case 0:
      return s.toLowerCase();
    case 1:
      return s.toUpperCase();
    case 2:
      return fold(s);
    default:
      return s;
  }
}

/** The date/dateTime/instant texts a value holds (Period ends, Timing events and bounds included). */
function dateTexts(t: Typed): string[] {
  const v = t.value as Record<string, any>;
  if (typeof t.value === 'string') return t.type === 'string' ? [] : [t.value];
  if (t.type === 'Period') return [v.start, v.end].filter((x) => typeof x === 'string');
  if (t.type === 'Timing') return [...(v.event ?? []), v.repeat?.boundsPeriod?.start, v.repeat?.boundsPeriod?.end].filter((x) => typeof x === 'string');
  return [];
}

export function shiftDay(day: string, by: number): string {
  const d = new Date(`${day.slice(0, 10)}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + by);
  const y = d.getUTCFullYear();
  return `${String(y).padStart(4, '0')}-${String(d.getUTCMonth() + 1).padStart(2, '0')}-${String(d.getUTCDate()).padStart(2, '0')}`;
}

/** The same instant written with another UTC offset (minutes east), to the second. */
function withOffset(s: string, minutes: number): string | undefined {
  const ms = Date.parse(s);
  if (Number.isNaN(ms) || !/T\d{2}:\d{2}:\d{2}/.test(s)) return undefined;
  const local = new Date(ms + minutes * 60_000).toISOString().slice(0, 19);
  const a = Math.abs(minutes);
  const tz = minutes === 0 ? 'Z' : `${minutes < 0 ? '-' : '+'}${String(Math.floor(a / 60)).padStart(2, '0')}:${String(a % 60).padStart(2, '0')}`;
  return `${local}${tz}`;
}

/**
 * A date search value derived from a stored date text: some precision of it, a neighbouring day, or
 * for a time with a zone the same instant in another zone, or its minute.
 */
function dateQueryText(rng: Rng, s: string): string {
  const forms = [s.slice(0, 4)];
  if (s.length >= 7) forms.push(s.slice(0, 7));
  if (s.length >= 10) forms.push(s.slice(0, 10), shiftDay(s, -1), shiftDay(s, 1));
  if (s.length > 10) forms.push(s, s);
  if (/T.*(Z|[+-]\d{2}:\d{2})$/.test(s)) {
    const z = withOffset(s, rng.pick([0, 330, -300, 60]));
    if (z) forms.push(z, z);
    forms.push(`${s.slice(0, 16)}${s.slice(s.search(/(Z|[+-]\d{2}:\d{2})$/))}`);
  }
  return rng.pick(forms);
}

function numText(v: unknown): string | undefined {
  return typeof v === 'number' && Number.isFinite(v) && !/e/i.test(String(v)) ? String(v) : undefined;
}

/** Variants of a number: as written, with more precision, and neighbours. */
function numberQueryText(rng: Rng, n: number): string {
  const s = String(n);
  const forms = [s, s, s.includes('.') ? `${s}0` : `${s}.0`, String(n + 1), String(n - 1), String(Math.round(n * 1.05 * 100) / 100)];
  return rng.pick(forms.filter((f) => !/e/i.test(f)));
}

function prefixed(rng: Rng, text: string, weightEq = 0.25): { prefix: string; text: string } {
  const prefix = rng.chance(weightEq) ? '' : rng.pick(PREFIXES);
  return { prefix, text: `${prefix}${text}` };
}

// --------------------------------------------------------------------------- values per parameter type

export interface Pools {
  strings: string[];
  tokens: { system?: string; code?: string; text?: string; types?: { system?: string; code?: string }[]; primitive: boolean }[];
  locals: { type: string; id: string }[];
  urls: { url: string; version?: string }[];
  refIdentifiers: { system?: string; code?: string }[];
  dates: string[];
  numbers: number[];
  quantities: { value: number; system?: string; code?: string; unit?: string }[];
  uris: string[];
}

function emptyPools(): Pools {
  return { strings: [], tokens: [], locals: [], urls: [], refIdentifiers: [], dates: [], numbers: [], quantities: [], uris: [] };
}

function addValues(ms: MemorySearch, def: SpDef, vals: Typed[], p: Pools): void {
  for (const t of vals) {
    switch (def.type) {
      case 'string':
        if (typeof t.value === 'string') p.strings.push(t.value);
        else if (t.value && typeof t.value === 'object') {
          const o = t.value as Record<string, unknown>;
          for (const v of Object.values(o).flat()) if (typeof v === 'string') p.strings.push(v);
        }
        break;
      case 'token':
        for (const e of tokenEntries(t)) p.tokens.push({ ...e, primitive: typeof t.value !== 'object' });
        break;
      case 'reference': {
        if (t.value && typeof t.value === 'object' && 'resourceType' in t.value) break;
        const r = referenceEntries(t, ms.baseUrl, (x) => officialParams().has(x));
        for (const ref of r.refs) {
          if (ref.kind === 'local') p.locals.push({ type: ref.type, id: ref.id });
          else p.urls.push(ref);
        }
        p.refIdentifiers.push(...r.identifiers);
        break;
      }
      case 'date':
        if (dateEntries(t).length) p.dates.push(...dateTexts(t));
        break;
      case 'number': {
        const v = t.value && typeof t.value === 'object' ? (t.value as Record<string, any>).value ?? (t.value as Record<string, any>).low?.value : t.value;
        const n = numText(v);
        if (n !== undefined) p.numbers.push(Number(n));
        break;
      }
      case 'quantity': {
        if (!quantityEntries(t).length) break;
        const o = t.value as Record<string, any>;
        const q = o.value !== undefined ? o : o.low ?? o.high;
        if (numText(q?.value) === undefined) break;
        p.quantities.push({ value: q.value, system: q.system ?? (o.currency ? 'urn:iso:std:iso:4217' : undefined), code: q.code ?? o.currency, unit: q.unit });
        break;
      }
      case 'uri':
        if (typeof t.value === 'string' && t.value) p.uris.push(t.value);
        break;
    }
  }
}

/** Candidate search values (already escaped) with the modifier and a group label, for one parameter. */
export interface Candidate {
  modifier?: string;
  value: string;
  group: string;
}

function stringCandidates(rng: Rng, p: Pools): Candidate[] {
  const s = uniq(p.strings.filter((x) => fold(x) !== ''));
  const out: Candidate[] = [];
  if (!s.length) return out;
  for (let i = 0; i < 3; i++) {
    const v = rng.pick(s);
    const n = Math.max(1, Math.min(v.length, 1 + rng.int(Math.min(v.length, 12))));
    const pre = caseVariant(rng, v.slice(0, n)).trim();
    if (pre) out.push({ value: escape(pre.slice(0, MAX_VALUE)), group: 'string' });
  }
  const whole = rng.pick(s);
  if (whole.length <= MAX_VALUE && whole.trim() === whole) {
    out.push({ modifier: 'exact', value: escape(whole), group: 'string:exact' });
    out.push({ modifier: 'exact', value: escape(caseVariant(rng, whole)), group: 'string:exact' });
  }
  const c = rng.pick(s);
  if (c.length > 3) {
    const from = rng.int(c.length - 2);
    const part = c.slice(from, from + 2 + rng.int(6)).trim();
    if (part) out.push({ modifier: 'contains', value: escape(caseVariant(rng, part)), group: 'string:contains' });
  }
  out.push({ value: `zq${rng.int(1000)}x`, group: 'string:negative' });
  const long = s.find((x) => x.length > 110 && x.length < 400);
  if (long) out.push({ value: escape(caseVariant(rng, long.slice(0, 105 + rng.int(long.length - 105)))).trim(), group: 'string:long' });
  return out;
}

function tokenCandidates(rng: Rng, p: Pools): Candidate[] {
  const t = uniq(p.tokens);
  const out: Candidate[] = [];
  const coded = t.filter((x) => x.code !== undefined && x.code.length <= MAX_VALUE);
  if (coded.length) {
    const a = rng.pick(coded);
    out.push({ value: escape(a.code!), group: 'token:code' });
    const b = rng.pick(coded);
    if (b.system !== undefined) out.push({ value: `${escape(b.system)}|${escape(b.code!)}`, group: 'token:system|code' });
    else if (!b.primitive || rng.chance(0.3)) out.push({ value: `|${escape(b.code!)}`, group: 'token:|code' });
    const c = rng.pick(coded);
    out.push({ value: `|${escape(c.code!)}`, group: 'token:|code' });
    const d = rng.pick(coded);
    out.push({ modifier: 'not', value: d.system !== undefined && rng.chance(0.5) ? `${escape(d.system)}|${escape(d.code!)}` : escape(d.code!), group: 'token:not' });
    if (coded.length > 1) out.push({ modifier: 'not', value: `${escape(d.code!)},${escape(rng.pick(coded).code!)}`, group: 'token:not-or' });
    if (rng.chance(0.5)) out.push({ value: `${escape(c.code!)}-nope`, group: 'token:negative' });
    // Codes compare exactly: another case is another code (unless the corpus has that one too).
    const flipped = flipCase(c.code!);
    if (flipped !== c.code && rng.chance(0.3)) out.push({ value: escape(flipped), group: 'token:case' });
    // A system with a code from elsewhere: the pair must match within one coding.
    const sys = t.filter((x) => x.system !== undefined);
    if (sys.length && coded.length > 1 && rng.chance(0.5)) out.push({ value: `${escape(rng.pick(sys).system!)}|${escape(rng.pick(coded).code!)}`, group: 'token:system|code' });
  }
  const sys = t.filter((x) => x.system !== undefined && x.system.length <= MAX_VALUE);
  if (sys.length) out.push({ value: `${escape(rng.pick(sys).system!)}|`, group: 'token:system|' });
  const texts = t.filter((x) => x.text !== undefined && fold(x.text) !== '');
  if (texts.length) {
    const x = rng.pick(texts).text!;
    const pre = caseVariant(rng, x.slice(0, 1 + rng.int(Math.min(x.length, 15)))).trim();
    if (pre) out.push({ modifier: 'text', value: escape(pre), group: 'token:text' });
  }
  const typed = t.filter((x) => x.code !== undefined && x.types?.some((y) => y.system && y.code));
  if (typed.length) {
    const x = rng.pick(typed);
    const ty = x.types!.find((y) => y.system && y.code)!;
    out.push({ modifier: 'of-type', value: `${escape(ty.system!)}|${escape(ty.code!)}|${escape(x.code!)}`, group: 'token:of-type' });
  }
  return out;
}

function referenceCandidates(rng: Rng, def: SpDef, p: Pools, baseUrl: string): Candidate[] {
  const out: Candidate[] = [];
  const locals = uniq(p.locals);
  // :[type] names one of the parameter's target types (a reference to another type is invalid data).
  const typable = locals.filter((l) => !def.target.length || def.target.includes(l.type));
  if (locals.length) {
    const a = rng.pick(locals);
    out.push({ value: `${a.type}/${a.id}`, group: 'reference:Type/id' });
    const b = rng.pick(locals);
    out.push({ value: b.id, group: 'reference:id' });
    const c = rng.pick(locals);
    out.push({ value: `${baseUrl}/${c.type}/${c.id}`, group: 'reference:absolute-local' });
    if (typable.length) {
      const d = rng.pick(typable);
      out.push({ modifier: d.type, value: d.id, group: 'reference:type-modifier' });
    }
    out.push({ value: `${a.type}/${a.id}x`, group: 'reference:negative' });
    const e = rng.pick(locals);
    out.push({ value: `${e.type}/${e.id}/_history/1`, group: 'reference:versioned' });
  }
  const urls = uniq(p.urls).filter((u) => u.url.length <= 300);
  if (urls.length) {
    const u = rng.pick(urls);
    out.push({ value: escape(u.url), group: 'reference:url' });
    if (u.version) out.push({ value: `${escape(u.url)}|${escape(u.version)}`, group: 'reference:canonical-version' });
  }
  const ids = uniq(p.refIdentifiers).filter((x) => x.code !== undefined);
  if (ids.length) {
    const x = rng.pick(ids);
    out.push({ modifier: 'identifier', value: x.system ? `${escape(x.system)}|${escape(x.code!)}` : escape(x.code!), group: 'reference:identifier' });
  }
  return out;
}

function dateCandidates(rng: Rng, p: Pools): Candidate[] {
  const d = uniq(p.dates).filter((x) => /^\d{4}/.test(x));
  const out: Candidate[] = [];
  if (!d.length) return out;
  for (let i = 0; i < 5; i++) {
    const { prefix, text } = prefixed(rng, dateQueryText(rng, rng.pick(d)));
    out.push({ value: text, group: `date:${prefix || 'none'}` });
  }
  return out;
}

function numberCandidates(rng: Rng, p: Pools): Candidate[] {
  const n = uniq(p.numbers);
  const out: Candidate[] = [];
  if (!n.length) return out;
  for (let i = 0; i < 4; i++) {
    const { prefix, text } = prefixed(rng, numberQueryText(rng, rng.pick(n)));
    out.push({ value: text, group: `number:${prefix || 'none'}` });
  }
  return out;
}

function quantityCandidates(rng: Rng, p: Pools): Candidate[] {
  const q = uniq(p.quantities);
  const out: Candidate[] = [];
  if (!q.length) return out;
  for (let i = 0; i < 4; i++) {
    const x = rng.pick(q);
    const { prefix, text } = prefixed(rng, numberQueryText(rng, x.value));
    const form = rng.int(3);
    if (form === 1 && x.system && x.code) out.push({ value: `${text}|${escape(x.system)}|${escape(x.code)}`, group: `quantity:${prefix || 'none'}:system|code` });
    else if (form === 2 && (x.code || x.unit)) out.push({ value: `${text}||${escape(rng.chance(0.5) ? x.code ?? x.unit! : x.unit ?? x.code!)}`, group: `quantity:${prefix || 'none'}:||code` });
    else out.push({ value: text, group: `quantity:${prefix || 'none'}` });
  }
  return out;
}

function uriCandidates(rng: Rng, p: Pools): Candidate[] {
  const u = uniq(p.uris).filter((x) => x.length <= 300);
  const out: Candidate[] = [];
  if (!u.length) return out;
  out.push({ value: escape(rng.pick(u)), group: 'uri' });
  const b = rng.pick(u);
  const cut = b.lastIndexOf('/');
  out.push({ modifier: 'below', value: escape(cut > 8 && rng.chance(0.7) ? b.slice(0, cut) : b.slice(0, Math.max(4, b.length - 3))), group: 'uri:below' });
  const a = rng.pick(u);
  // A child path only under a hierarchical URL (a URN has no path to go up).
  out.push({ modifier: 'above', value: escape(/^[a-z]+:\/\/[^/]+/.test(a) && rng.chance(0.7) ? `${a.replace(/\/$/, '')}/sub/x` : a), group: 'uri:above' });
  out.push({ value: escape(`${rng.pick(u)}-x`), group: 'uri:negative' });
  out.push({ value: escape(flipCase(rng.pick(u))), group: 'uri:case' });
  return out;
}

export function pools(ms: MemorySearch, type: string, def: SpDef, resources: Resource[]): Pools {
  const p = emptyPools();
  for (const r of resources) addValues(ms, def, ms.values(r, def), p);
  return p;
}

export function candidates(rng: Rng, def: SpDef, p: Pools, baseUrl: string): Candidate[] {
  switch (def.type) {
    case 'string':
      return stringCandidates(rng, p);
    case 'token':
      // _id: plain ids only (see NOT_GENERATED).
      return def.code === '_id' ? tokenCandidates(rng, p).filter((c) => c.group === 'token:code' || c.group === 'token:negative') : tokenCandidates(rng, p);
    case 'reference':
      return referenceCandidates(rng, def, p, baseUrl);
    case 'date':
      return dateCandidates(rng, p);
    case 'number':
      return numberCandidates(rng, p);
    case 'quantity':
      return quantityCandidates(rng, p);
    case 'uri':
      return uriCandidates(rng, p);
    default:
      return [];
  }
}

/** Composite values `a$b` from the tuples a resource holds (search.html#composite). */
export function compositeCandidates(rng: Rng, ms: MemorySearch, type: string, def: SpDef, resources: Resource[]): Candidate[] {
  const out: Candidate[] = [];
  const comps = def.component.map((c) => [...officialParams().get(type)!.values()].find((d) => d.url === c.definition)!);
  const holders = resources.filter((r) => ms.compositeValues(r, def).length > 0);
  for (let i = 0; i < 3 && holders.length; i++) {
    const tuples = ms.compositeValues(rng.pick(holders), def);
    const tuple = rng.pick(tuples);
    const parts = tuple.map((vals, k) => {
      const p = emptyPools();
      addValues(ms, comps[k], vals, p);
      const c = candidates(rng, comps[k], p, ms.baseUrl).filter((x) => x.modifier === undefined && !x.group.endsWith('negative'));
      return c.length ? rng.pick(c).value.replace(/\$/g, '\\$') : undefined;
    });
    if (parts.every((x) => x !== undefined)) out.push({ value: parts.join('$'), group: 'composite' });
  }
  return out;
}
