// What a token may carry: the requested scopes narrowed by the client's allow-list, the user's
// allow-list and the user's consent. A requested scope is granted only when every list covers it;
// a broader request is never widened into something nobody allowed, and never silently widened
// either: it is dropped and the consent page says so.
import { parseScope, type Grant } from '../auth/scopes.js';
import { NON_CLINICAL_SCOPES } from './clients.js';

const NON_CLINICAL = new Set<string>(NON_CLINICAL_SCOPES);

export function isNonClinical(scope: string): boolean {
  return NON_CLINICAL.has(scope);
}

/** True when a grant of `allowed` includes everything `requested` asks for. */
export function covers(allowed: string, requested: string): boolean {
  if (allowed === requested) return true;
  if (NON_CLINICAL.has(allowed) || NON_CLINICAL.has(requested)) return false;
  const a = parseScope(allowed);
  const r = parseScope(requested);
  if (!a || !r) return false;
  return coversGrant(a, r);
}

function coversGrant(a: Grant, r: Grant): boolean {
  if (a.context !== r.context) return false;
  if (a.type !== '*' && a.type !== r.type) return false;
  for (const l of r.letters) if (!a.letters.has(l)) return false;
  if (a.constraint) {
    // An allowed constraint must be present in the request: more constraints only narrow.
    const pairs = new Set((r.constraint ?? []).map(([k, v]) => `${k}=${v}`));
    if (!a.constraint.every(([k, v]) => pairs.has(`${k}=${v}`))) return false;
  }
  return true;
}

export interface Narrowed {
  granted: string[];
  /** Requested but not granted, with the list that refused it. */
  refused: { scope: string; by: string }[];
}

/** Narrows requested scopes by each named allow-list (space-separated scope strings). */
export function narrowScopes(requested: Iterable<string>, lists: { name: string; scopes: string }[]): Narrowed {
  const out: Narrowed = { granted: [], refused: [] };
  const seen = new Set<string>();
  for (const s of requested) {
    if (!s || seen.has(s)) continue;
    seen.add(s);
    if (!NON_CLINICAL.has(s) && !parseScope(s)) {
      out.refused.push({ scope: s, by: 'not a SMART scope this server knows' });
      continue;
    }
    const refusedBy = lists.find((l) => !l.scopes.split(' ').some((a) => a && covers(a, s)));
    if (refusedBy) out.refused.push({ scope: s, by: refusedBy.name });
    else out.granted.push(s);
  }
  return out;
}

/** Default clinical scopes of a new user: a patient sees their own record; anyone else, what their scopes name. */
export function defaultUserScopes(fhirUser: string | undefined): string {
  if (fhirUser?.startsWith('Patient/')) return 'patient/*.rs';
  return 'user/*.cruds patient/*.cruds';
}
