// _summary and _elements outside search: read, vread (https://hl7.org/fhir/R4/http.html#read) and the
// entries of a history Bundle. The same parsing and shaping as search (search/shape.ts,
// search.html#summary, #elements) and the same rule: _summary (other than false) and _elements
// cannot be combined.
import type { Resource } from 'fhir/r4.js';
import { FhirError } from '../fhir/errors.js';
import { applyElements, parseElements, shapeBySummary, type Summary } from '../search/shape.js';

export interface Shaping {
  summary?: Summary;
  elements?: string[];
}

/** Validates _elements (a parsed _summary given) and their combination; malformed values are a 400. */
export function parseShaping(summary: Summary | undefined, elements: string | undefined): Shaping {
  const names = parseElements(elements);
  if (summary !== undefined && summary !== 'false' && names) throw new FhirError('invalid-request', '_summary and _elements cannot be combined');
  return { ...(summary !== undefined ? { summary } : {}), ...(names ? { elements: names } : {}) };
}

/** The resource as _elements or _summary shape it (marked SUBSETTED when anything was dropped on purpose). */
export function shapeResource(resource: Resource, shaping: Shaping): Resource {
  return shaping.elements ? applyElements(resource, shaping.elements) : shapeBySummary(resource, shaping.summary);
}
