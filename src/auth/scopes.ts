// SMART on FHIR clinical scopes (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html):
// v2 `context/Type.cruds?param=value` and v1 `context/Type.read|write|*`, parsed into grants. A
// malformed scope is ignored (never widened into something it does not say).

export type ScopeContext = 'patient' | 'user' | 'system';
/** c create, r read/vread/instance history, u update/patch, d delete, s search and type/system history. */
export type Letter = 'c' | 'r' | 'u' | 'd' | 's';

export const LETTERS: readonly Letter[] = ['c', 'r', 'u', 'd', 's'];

export interface Grant {
  context: ScopeContext;
  /** A resource type or '*'. */
  type: string;
  letters: ReadonlySet<Letter>;
  /** v2 constraints (`?category=...&code=...`): each pair ANDed; absent when unconstrained. */
  constraint?: [string, string][];
  /** The scope as granted, for denials and reports. */
  scope: string;
}

export interface ParsedScopes {
  grants: Grant[];
  /** Non-resource scopes (openid, fhirUser, launch, launch/patient, offline_access, ...). */
  other: string[];
  /** Scopes that look like clinical scopes but are malformed: ignored. */
  ignored: string[];
}

const V1: Record<string, Letter[]> = { read: ['r', 's'], write: ['c', 'u', 'd'], '*': ['c', 'r', 'u', 'd', 's'] };
const CLINICAL = /^(patient|user|system)\/([^.?]+)\.([^?]+)(?:\?(.*))?$/;
const TYPE = /^(\*|[A-Z][A-Za-z]{1,63})$/;

/** Letters of a v2 permission string: a non-empty subsequence of "cruds", in that order. */
function v2Letters(s: string): Letter[] | undefined {
  if (!/^c?r?u?d?s?$/.test(s) || s === '') return undefined;
  return [...s] as Letter[];
}

/** Parses one clinical scope into a grant, or undefined when it is not a well-formed one. */
export function parseScope(scope: string): Grant | undefined {
  const m = CLINICAL.exec(scope);
  if (!m) return undefined;
  const [, context, type, perm, query] = m;
  if (!TYPE.test(type)) return undefined;
  let letters: Letter[] | undefined;
  let v1 = false;
  if (perm in V1) {
    letters = V1[perm];
    v1 = true;
  } else letters = v2Letters(perm);
  if (!letters) return undefined;
  let constraint: [string, string][] | undefined;
  if (query !== undefined) {
    // Constraints are a v2 feature; on a v1 scope, or empty, or with an empty name, the scope is malformed.
    if (v1 || query === '') return undefined;
    try {
      constraint = [...new URLSearchParams(query)];
    } catch {
      return undefined;
    }
    if (!constraint.length || constraint.some(([k, v]) => k === '' || v === '')) return undefined;
  }
  return { context: context as ScopeContext, type, letters: new Set(letters), ...(constraint ? { constraint } : {}), scope };
}

/** Splits a space-separated scope string (RFC 6749 section 3.3) into grants, other scopes and ignored ones. */
export function parseScopes(scope: string | undefined): ParsedScopes {
  const out: ParsedScopes = { grants: [], other: [], ignored: [] };
  if (!scope) return out;
  for (const s of scope.split(' ')) {
    if (!s) continue;
    const g = parseScope(s);
    if (g) out.grants.push(g);
    else if (/^(patient|user|system)\//.test(s) && s !== 'launch/patient' && s !== 'launch/encounter') out.ignored.push(s);
    else out.other.push(s);
  }
  return out;
}
