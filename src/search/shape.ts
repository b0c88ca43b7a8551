// Result shaping (https://hl7.org/fhir/R4/search.html#elements, #summary): _elements keeps the named
// top-level elements (plus the mandatory envelope), _summary=true the summary elements, _summary=text
// the narrative and the mandatory elements, _summary=data drops the narrative. A shaped resource is
// marked SUBSETTED so no client mistakes it for the whole resource.
import type { Resource } from 'fhir/r4.js';
import { FhirError } from '../fhir/errors.js';
import { elementIndex, summaryElements } from '../fhir/definitions.js';

export const SUBSETTED = { system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'SUBSETTED', display: 'subsetted' };

/** _summary values (search.html#summary). */
export type Summary = 'true' | 'text' | 'data' | 'count' | 'false';

export function parseSummary(raw: string | undefined): Summary | undefined {
  if (raw === undefined) return undefined;
  if (raw === 'true' || raw === 'text' || raw === 'data' || raw === 'count' || raw === 'false') return raw;
  throw new FhirError('invalid-search', '_summary must be true, text, data, count or false');
}

/** _summary on read and vread (http.html#read): as on search, but count only means something for a search. */
export function parseReadSummary(raw: string | undefined): Summary | undefined {
  const s = parseSummary(raw);
  if (s === 'count') throw new FhirError('invalid-request', '_summary=count applies to searches only');
  return s;
}

/** Parses _elements into element names (validated as FHIR element names). */
export function parseElements(raw: string | undefined): string[] | undefined {
  if (raw === undefined) return undefined;
  const names = raw.split(',').map((s) => s.trim()).filter(Boolean);
  if (!names.length) throw new FhirError('invalid-search', '_elements needs at least one element name');
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

/** The envelope every shaped resource keeps: resourceType, id and meta (tagged SUBSETTED). */
function envelope(resource: Resource): Record<string, unknown> {
  const src = resource as unknown as Record<string, unknown>;
  return { resourceType: resource.resourceType, ...(resource.id !== undefined ? { id: resource.id } : {}), meta: markSubsetted(src.meta as Record<string, unknown>) };
}

/** Keeps resourceType, id, meta and the named elements (a choice `value` keeps valueQuantity etc.). */
export function applyElements(resource: Resource, names: string[]): Resource {
  const known = elementIndex()[resource.resourceType] ?? {};
  const keep = (k: string): boolean => {
    const base = k.startsWith('_') ? k.slice(1) : k;
    return names.some((n) => base === n || (`${n}[x]` in known && base.startsWith(n) && /^[A-Z]/.test(base.slice(n.length))));
  };
  const out = envelope(resource);
  for (const [k, v] of Object.entries(resource)) if (!(k in out) && keep(k)) out[k] = v;
  return out as unknown as Resource;
}

/** _summary=data: everything but the narrative. */
export function applySummaryData(resource: Resource): Resource {
  const { text: _text, ...rest } = resource as Resource & { text?: unknown };
  return { ...rest, meta: markSubsetted(rest.meta as Record<string, unknown>) } as unknown as Resource;
}

/** The element path (relative, a choice as `name[x]`) a JSON member stands for under `prefix`, if any. */
function elementOf(known: Record<string, string[]>, prefix: string, key: string): string | undefined {
  const base = key.startsWith('_') ? key.slice(1) : key;
  if (`${prefix}${base}` in known) return `${prefix}${base}`;
  for (let i = 1; i < base.length; i++) {
    if (base[i] >= 'A' && base[i] <= 'Z' && `${prefix}${base.slice(0, i)}[x]` in known) return `${prefix}${base.slice(0, i)}[x]`;
  }
  return undefined;
}

/** The path prefix of a backbone element's children (its own, or the one a contentReference names); undefined for datatypes. */
function childPrefix(known: Record<string, string[]>, path: string): string | undefined {
  const types = known[path] ?? [];
  if (types.length === 1 && types[0].startsWith('#')) return `${types[0].slice(1)}.`;
  if (types.length === 1 && (types[0] === 'BackboneElement' || types[0] === 'Element')) return `${path}.`;
  return undefined;
}

/** The members of `node` whose elements `keep` accepts; backbone elements recursively, datatypes whole. */
function pick(node: Record<string, unknown>, prefix: string, known: Record<string, string[]>, keep: (path: string) => boolean): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const inner = (v: unknown, p: string): unknown => (v && typeof v === 'object' && !Array.isArray(v) ? pick(v as Record<string, unknown>, p, known, keep) : v);
  const empty = (v: unknown) => v !== null && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length === 0;
  for (const [k, v] of Object.entries(node)) {
    const el = elementOf(known, prefix, k);
    if (el === undefined || !keep(el)) continue;
    const cp = k.startsWith('_') ? undefined : childPrefix(known, el);
    if (cp === undefined) out[k] = v;
    else if (Array.isArray(v)) {
      const items = v.map((x) => inner(x, cp)).filter((x) => !empty(x));
      if (items.length) out[k] = items;
    } else {
      const o = inner(v, cp);
      if (!empty(o)) out[k] = o;
    }
  }
  return out;
}

/**
 * _summary=true: resourceType, id, meta and the summary elements of the resource's definition (backbone
 * elements keep their summary children; datatype values are kept whole). _summary=text: the narrative,
 * id, meta and the top-level mandatory elements.
 */
export function applySummary(resource: Resource, mode: 'true' | 'text'): Resource {
  const type = resource.resourceType;
  const known = elementIndex()[type] ?? {};
  const { summary, mandatory } = summaryElements(type);
  const keep = mode === 'true' ? (p: string) => summary.has(p) : (p: string) => p === 'text' || mandatory.includes(p);
  const out = envelope(resource);
  const rest = Object.fromEntries(Object.entries(resource).filter(([k]) => !(k in out) && k !== 'resourceType'));
  return { ...out, ...pick(rest, '', known, keep) } as unknown as Resource;
}

/** A resource shaped by _summary (read, vread and search entries); `count` has no resource to shape. */
export function shapeBySummary(resource: Resource, summary: Summary | undefined): Resource {
  if (summary === 'true' || summary === 'text') return applySummary(resource, summary);
  if (summary === 'data') return applySummaryData(resource);
  return resource;
}

/** What _summary and _elements ask of each returned resource (search, read, vread, history). */
export interface Shaping {
  summary?: Summary;
  elements?: string[];
}

/** Validates _elements (a parsed _summary given) and their combination: _summary other than false and _elements exclude each other. */
export function parseShaping(summary: Summary | undefined, elements: string | undefined): Shaping {
  const names = parseElements(elements);
  if (summary !== undefined && summary !== 'false' && names) throw new FhirError('invalid-search', '_summary and _elements cannot be combined');
  return { ...(summary !== undefined ? { summary } : {}), ...(names ? { elements: names } : {}) };
}

/** The resource as _elements or _summary shape it (marked SUBSETTED when anything was dropped on purpose). */
export function shapeResource(resource: Resource, shaping: Shaping): Resource {
  return shaping.elements ? applyElements(resource, shaping.elements) : shapeBySummary(resource, shaping.summary);
}
