// URI search (https://hl7.org/fhir/R4/search.html#uri): exact, case-sensitive match by default;
// :below matches stored URIs that start with the value, :above stored URIs the value starts with.
import { FhirError } from '../../fhir/errors.js';
import type { UriRow } from '../index-rows.js';
import { escapeLike, leftChars, URI_KEY_LEN } from '../keys.js';
import { unescapeValue } from '../escape.js';
import { frag, or, type SqlFragment } from '../sql.js';

/** Index rows for one value of a uri parameter (uri, url, canonical, oid, uuid). */
export function extractUri(param: string, value: unknown, grp: number | null, out: UriRow[]): void {
  if (typeof value === 'string' && value !== '') out.push({ param, ...(grp !== null ? { grp } : {}), uri: value });
}

function equals(a: string, v: string): SqlFragment {
  return frag(`left(${a}.uri, ${URI_KEY_LEN}) = ? and ${a}.uri = ?`, leftChars(v, URI_KEY_LEN), v);
}

/** The URI itself and each parent path of it (for :above), longest first. */
export function parentUris(v: string): string[] {
  const out = [v];
  const scheme = v.indexOf('://');
  const floor = scheme < 0 ? 0 : v.indexOf('/', scheme + 3);
  if (floor < 0) return out;
  let cut = v.replace(/\/+$/, '');
  for (;;) {
    const i = cut.lastIndexOf('/');
    if (i <= floor) break;
    cut = cut.slice(0, i);
    out.push(cut);
  }
  return out;
}

/** The match of one OR value on index alias `a` (column uri). */
export function uriCondition(a: string, raw: string, modifier: undefined | 'below' | 'above', code: string): SqlFragment {
  const v = unescapeValue(raw);
  if (v === '') throw new FhirError('invalid-search', `parameter ${code} has an empty value`);
  if (modifier === 'above') return or(parentUris(v).map((u) => equals(a, u)));
  if (modifier === 'below') {
    const key = leftChars(v, URI_KEY_LEN);
    if (key === v) return frag(`left(${a}.uri, ${URI_KEY_LEN}) like ?`, `${escapeLike(v)}%`);
    return frag(`left(${a}.uri, ${URI_KEY_LEN}) = ? and ${a}.uri like ?`, key, `${escapeLike(v)}%`);
  }
  return equals(a, v);
}
