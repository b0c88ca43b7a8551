// Result shaping (https://hl7.org/fhir/R4/search.html#elements, #summary): _elements keeps the named
// top-level elements (plus the mandatory envelope), _summary=data drops the narrative. A shaped
// resource is marked SUBSETTED so no client mistakes it for the whole resource.
import type { Resource } from 'fhir/r4.js';
import { FhirError } from '../fhir/errors.js';
import { elementIndex } from '../fhir/definitions.js';

export const SUBSETTED = { system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'SUBSETTED', display: 'subsetted' };

/** _summary values served; true and text need the isSummary flags the generated definitions do not carry yet. */
export type Summary = 'false' | 'count' | 'data';

export function parseSummary(raw: string | undefined): Summary | { unsupported: string } | undefined {
  if (raw === undefined) return undefined;
  if (raw === 'false' || raw === 'count' || raw === 'data') return raw;
  if (raw === 'true' || raw === 'text') return { unsupported: `_summary=${raw} is not supported yet (supported: count, data, false)` };
  throw new FhirError('invalid-search', '_summary must be true, text, data, count or false');
}

/** Parses _elements into element names (validated as FHIR element names). */
export function parseElements(raw: string | undefined): string[] | undefined {
  if (raw === undefined) return undefined;
  const names = raw.split(',').map((s) => s.trim()).filter(Boolean);
  if (names.some((n) => !/^[A-Za-z][A-Za-z0-9]{0,63}$/.test(n))) throw new FhirError('invalid-search', '_elements takes a comma-separated list of element names');
  return names;
}

function markSubsetted(meta: Record<string, unknown> | undefined): Record<string, unknown> {
  const m = { ...(meta ?? {}) };
  const tags = Array.isArray(m.tag) ? [...(m.tag as unknown[])] : [];
  tags.push(SUBSETTED);
  m.tag = tags;
  return m;
}

/** Keeps resourceType, id, meta and the named elements (a choice `value` keeps valueQuantity etc.). */
export function applyElements(resource: Resource, names: string[]): Resource {
  const known = elementIndex()[resource.resourceType] ?? {};
  const keep = (k: string): boolean => {
    const base = k.startsWith('_') ? k.slice(1) : k;
    return names.some((n) => base === n || (`${n}[x]` in known && base.startsWith(n) && /^[A-Z]/.test(base.slice(n.length))));
  };
  const src = resource as unknown as Record<string, unknown>;
  const out: Record<string, unknown> = { resourceType: resource.resourceType, id: resource.id, meta: markSubsetted(src.meta as Record<string, unknown>) };
  for (const [k, v] of Object.entries(src)) if (!(k in out) && keep(k)) out[k] = v;
  return out as unknown as Resource;
}

/** _summary=data: everything but the narrative. */
export function applySummaryData(resource: Resource): Resource {
  const { text: _text, ...rest } = resource as Resource & { text?: unknown };
  return { ...rest, meta: markSubsetted(rest.meta as Record<string, unknown>) } as unknown as Resource;
}
