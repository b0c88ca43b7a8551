// Reference search (https://hl7.org/fhir/R4/search.html#reference): [id], [Type]/[id], absolute URLs,
// canonical url[|version], the :[type] modifier, and :identifier on Reference.identifier.
import { FhirError } from '../../fhir/errors.js';
import { ID_PATTERN, isResourceType } from '../../fhir/definitions.js';
import type { ReferenceRow, TokenRow } from '../index-rows.js';
import { eqKey } from '../keys.js';
import { unescapeValue } from '../escape.js';
import { frag, or, type SqlFragment } from '../sql.js';
import { extractToken } from './token.js';

/** Rows for :identifier live in idx_token under this parameter name. */
export const identifierParam = (param: string) => `${param}:identifier`;

const RELATIVE = /^([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/;
const ABSOLUTE = /^([a-z][a-z0-9+.-]*:\/\/.+\/)([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(\/_history\/[A-Za-z0-9\-.]{1,64})?$/;

interface Parsed {
  targetType: string | null;
  targetId: string | null;
  url: string | null;
  version: string | null;
}

/** Classifies a reference string: relative Type/id, absolute URL (with its type), or other URI (canonical, urn:). */
function parseRef(ref: string): Parsed | undefined {
  if (ref === '' || ref.startsWith('#')) return undefined; // contained resources are not searchable by reference
  const rel = RELATIVE.exec(ref);
  if (rel && isResourceType(rel[1])) return { targetType: rel[1], targetId: rel[2], url: null, version: null };
  const abs = ABSOLUTE.exec(ref);
  if (abs && isResourceType(abs[2])) return { targetType: abs[2], targetId: null, url: `${abs[1]}${abs[2]}/${abs[3]}`, version: null };
  const bar = ref.lastIndexOf('|');
  if (bar > 0) return { targetType: null, targetId: null, url: ref.slice(0, bar), version: ref.slice(bar + 1) || null };
  return { targetType: null, targetId: null, url: ref, version: null };
}

/** Index rows for one value of a reference parameter (Reference, canonical or uri). */
export function extractReference(param: string, value: unknown, grp: number | null, out: { reference: ReferenceRow[]; token: TokenRow[] }): void {
  const g = grp !== null ? { grp } : {};
  const add = (p: Parsed | undefined) => {
    if (p) out.reference.push({ param, ...g, targetType: p.targetType, targetId: p.targetId, url: eqKey(p.url), version: p.version });
  };
  if (typeof value === 'string') return add(parseRef(value));
  if (!value || typeof value !== 'object') return;
  const o = value as Record<string, unknown>;
  if ('resourceType' in o) return; // a resource, not a reference (Bundle.composition/message are chain-only)
  if (typeof o.reference === 'string') add(parseRef(o.reference));
  if (o.identifier && typeof o.identifier === 'object') extractToken(identifierParam(param), o.identifier, grp, out.token);
}

/**
 * The match of one OR value on index alias `a`. `type` is the :[type] modifier; `baseUrl` lets an
 * absolute URL on this server match the relative references stored for it.
 */
export function referenceCondition(a: string, raw: string, code: string, type: string | undefined, baseUrl: string | undefined): SqlFragment {
  const v = unescapeValue(raw);
  if (v === '') throw new FhirError('invalid-search', `parameter ${code} has an empty value`);
  const typed = (t: string, id: string) => {
    if (type !== undefined && t !== type) throw new FhirError('invalid-search', `parameter ${code}: the reference type does not match the :${type} modifier`);
    return frag(`${a}.target_type = ? and ${a}.target_id = ?`, t, id);
  };
  if (ID_PATTERN.test(v) && !v.includes('/')) {
    return type === undefined ? frag(`${a}.target_id = ?`, v) : frag(`${a}.target_type = ? and ${a}.target_id = ?`, type, v);
  }
  const rel = RELATIVE.exec(v);
  if (rel && isResourceType(rel[1])) return typed(rel[1], rel[2]);
  if (baseUrl && v.startsWith(`${baseUrl}/`)) {
    const local = RELATIVE.exec(v.slice(baseUrl.length + 1));
    if (local && isResourceType(local[1])) {
      const stripped = v.replace(/\/_history\/[^/]+$/, '');
      return or([typed(local[1], local[2]), frag(`${a}.url = ?`, eqKey(stripped))]);
    }
  }
  if (type !== undefined) throw new FhirError('invalid-search', `parameter ${code}:${type} takes an id or ${type}/[id]`);
  const p = parseRef(v);
  if (!p || p.url === null) throw new FhirError('invalid-search', `parameter ${code}: the value is not a reference`);
  if (p.version !== null) return frag(`${a}.url = ? and ${a}.version = ?`, eqKey(p.url), p.version);
  return frag(`${a}.url = ?`, eqKey(p.url));
}
