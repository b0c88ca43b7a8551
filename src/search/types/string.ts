// String search (https://hl7.org/fhir/R4/search.html#string): starts-with after case and accent
// normalisation by default, :exact on the value as written, :contains anywhere. HumanName and Address
// search all of their parts.
import { FhirError } from '../../fhir/errors.js';
import type { StringRow } from '../index-rows.js';
import { nodeType } from '../expressions.js';
import { escapeLike, leftChars, normalise, STRING_KEY_LEN } from '../keys.js';
import { frag, type SqlFragment } from '../sql.js';

const NAME_PARTS = ['family', 'given', 'prefix', 'suffix', 'text'];
const ADDRESS_PARTS = ['line', 'city', 'district', 'state', 'country', 'postalCode', 'text'];

function push(param: string, grp: number | null, s: unknown, out: StringRow[]): void {
  if (typeof s !== 'string') return;
  const norm = normalise(s);
  if (norm === '') return;
  out.push({ param, ...(grp !== null ? { grp } : {}), norm, exact: s });
}

function pushParts(param: string, grp: number | null, o: Record<string, unknown>, parts: string[], out: StringRow[]): void {
  for (const k of parts) {
    const v = o[k];
    if (Array.isArray(v)) for (const x of v) push(param, grp, x, out);
    else push(param, grp, v, out);
  }
}

/** Every string leaf of an element other than extensions and ids (for datatypes the spec does not list). */
function pushLeaves(param: string, grp: number | null, v: unknown, out: StringRow[], depth = 0): void {
  if (depth > 4) return;
  if (typeof v === 'string') push(param, grp, v, out);
  else if (Array.isArray(v)) for (const x of v) pushLeaves(param, grp, x, out, depth + 1);
  else if (v && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) if (!k.startsWith('_') && k !== 'extension' && k !== 'id') pushLeaves(param, grp, x, out, depth + 1);
  }
}

const SOUNDEX: Record<string, string> = { b: '1', f: '1', p: '1', v: '1', c: '2', g: '2', j: '2', k: '2', q: '2', s: '2', x: '2', z: '2', d: '3', t: '3', l: '4', m: '5', n: '5', r: '6' };

/** American Soundex of one normalised word (the phonetic algorithm behind `phonetic`). */
export function soundex(word: string): string {
  const w = word.replace(/[^a-z]/g, '');
  if (!w) return '';
  let out = w[0].toUpperCase();
  let last = SOUNDEX[w[0]] ?? '';
  for (const ch of w.slice(1)) {
    const d = SOUNDEX[ch] ?? '';
    if (d && d !== last) out += d;
    // h and w do not separate equal codes; vowels do.
    if (ch !== 'h' && ch !== 'w') last = d;
    if (out.length === 4) break;
  }
  return out.padEnd(4, '0');
}

/** The official `phonetic` parameters search name parts by sound: one Soundex row per word. */
function pushPhonetic(param: string, grp: number | null, value: unknown, out: StringRow[]): void {
  const rows: StringRow[] = [];
  extractParts(param, grp, value, rows);
  for (const r of rows) {
    for (const word of r.norm.split(/[\s-]+/)) {
      const code = soundex(word);
      if (code) out.push({ param, ...(grp !== null ? { grp } : {}), norm: code, exact: code });
    }
  }
}

/** Index rows for one value of a string parameter. */
export function extractString(param: string, value: unknown, grp: number | null, out: StringRow[]): void {
  if (param === 'phonetic') return pushPhonetic(param, grp, value, out);
  extractParts(param, grp, value, out);
}

function extractParts(param: string, grp: number | null, value: unknown, out: StringRow[]): void {
  if (typeof value === 'string') return push(param, grp, value, out);
  if (!value || typeof value !== 'object') return;
  const o = value as Record<string, unknown>;
  const t = nodeType(value);
  if (t === 'HumanName' || (t === undefined && ('family' in o || 'given' in o))) pushParts(param, grp, o, NAME_PARTS, out);
  else if (t === 'Address' || (t === undefined && ('line' in o || 'city' in o || 'postalCode' in o))) pushParts(param, grp, o, ADDRESS_PARTS, out);
  else pushLeaves(param, grp, value, out);
}

export type StringModifier = undefined | 'exact' | 'contains';

/** The match of one OR value on index alias `a` (columns value_norm, value_exact). */
export function stringCondition(a: string, raw: string, modifier: StringModifier, code: string): SqlFragment {
  const n = normalise(raw);
  if (n === '') throw new FhirError('invalid-search', `parameter ${code} has an empty value`);
  const col = `left(${a}.value_norm, ${STRING_KEY_LEN})`;
  if (code === 'phonetic') {
    const codes = [...new Set(n.split(/[\s-]+/).map(soundex).filter(Boolean))];
    if (!codes.length) throw new FhirError('invalid-search', 'parameter phonetic needs letters');
    return { sql: codes.map(() => `${col} = ?`).join(' or '), bindings: codes };
  }
  const key = leftChars(n, STRING_KEY_LEN);
  if (modifier === 'exact') return frag(`${col} = ? and ${a}.value_exact = ?`, key, raw);
  if (modifier === 'contains') return frag(`${a}.value_norm like ?`, `%${escapeLike(n)}%`);
  // The indexed key holds the first STRING_KEY_LEN characters; a longer prefix is checked on the full value.
  if (key === n) return frag(`${col} like ?`, `${escapeLike(n)}%`);
  return frag(`${col} = ? and ${a}.value_norm like ?`, key, `${escapeLike(n)}%`);
}
