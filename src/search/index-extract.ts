// Index extraction (https://hl7.org/fhir/R4/search.html): resource -> index rows, evaluated from the
// official SearchParameter FHIRPath expressions at write time. Today: token parameters listed in
// INDEXED_TOKEN_PARAMS; the search issue widens this to every parameter type.
import fhirpath from 'fhirpath';
import r4model from 'fhirpath/fhir-context/r4/index.js';
import type { Resource } from 'fhir/r4.js';
import { searchParamsFor } from '../fhir/definitions.js';

export interface TokenRow {
  param: string;
  system: string | null;
  code: string | null;
}

export interface IndexRows {
  token: TokenRow[];
}

/** Parameters indexed today; each must be a token parameter of the official definitions. */
export const INDEXED_TOKEN_PARAMS = ['identifier'] as const;

type Compiled = (resource: unknown) => unknown[];
const compiled = new Map<string, { code: string; fn: Compiled }[]>();

function extractorsFor(type: string): { code: string; fn: Compiled }[] {
  let list = compiled.get(type);
  if (!list) {
    list = [];
    for (const sp of searchParamsFor(type)) {
      if (!(INDEXED_TOKEN_PARAMS as readonly string[]).includes(sp.code) || sp.type !== 'token' || !sp.expression) continue;
      list.push({ code: sp.code, fn: fhirpath.compile(sp.expression, r4model) as unknown as Compiled });
    }
    compiled.set(type, list);
  }
  return list;
}

/** Whether a type has an indexed token parameter with this code. */
export function isIndexedTokenParam(type: string, code: string): boolean {
  return extractorsFor(type).some((e) => e.code === code);
}

function tokenValues(param: string, v: unknown, out: TokenRow[]): void {
  if (v === null || v === undefined) return;
  if (typeof v === 'string' || typeof v === 'boolean' || typeof v === 'number') {
    out.push({ param, system: null, code: String(v) });
    return;
  }
  if (typeof v !== 'object') return;
  const o = v as Record<string, unknown>;
  if (Array.isArray(o.coding)) {
    for (const c of o.coding as Record<string, unknown>[]) tokenValues(param, c, out);
    return;
  }
  if ('value' in o || 'system' in o) {
    // Identifier, ContactPoint
    out.push({ param, system: typeof o.system === 'string' ? o.system : null, code: typeof o.value === 'string' ? o.value : null });
    return;
  }
  if ('code' in o) {
    out.push({ param, system: typeof o.system === 'string' ? o.system : null, code: typeof o.code === 'string' ? o.code : null });
  }
}

/** Computes the index rows of one resource version. */
export function extractIndexRows(resource: Resource): IndexRows {
  const token: TokenRow[] = [];
  for (const { code, fn } of extractorsFor(resource.resourceType)) {
    for (const v of fn(resource)) tokenValues(code, v, token);
  }
  return { token };
}
