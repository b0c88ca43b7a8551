// Loaded R4 definitions generated from the official package (fhir-definitions/generated).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { findPackageRoot } from './package-root.js';

export type SearchParamType = 'number' | 'date' | 'string' | 'token' | 'reference' | 'composite' | 'quantity' | 'uri' | 'special';

export interface SearchParamDef {
  code: string;
  type: SearchParamType;
  url: string;
  expression: string | null;
  description: string;
  xpathUsage: string;
  target: string[];
  multipleOr: boolean;
  multipleAnd: boolean;
  comparator: string[];
  modifier: string[];
  chain: string[];
  component: { definition: string; expression: string }[];
}

export interface CompartmentDef {
  code: string;
  url: string;
  resources: { type: string; params: string[] }[];
}

function load<T>(name: string): T {
  const raw = JSON.parse(readFileSync(join(findPackageRoot(), 'fhir-definitions', 'generated', name), 'utf8')) as { data: T };
  return raw.data;
}

let resourceTypes: ReadonlySet<string> | undefined;
let resourceTypeList: readonly { type: string; description: string }[] | undefined;
let searchParams: Readonly<Record<string, SearchParamDef[]>> | undefined;
let compartments: readonly CompartmentDef[] | undefined;
let elements: Readonly<Record<string, Record<string, string[]>>> | undefined;

let summaries: Readonly<{ summary: Record<string, string[]>; mandatory: Record<string, string[]> }> | undefined;
const summaryCache = new Map<string, { summary: ReadonlySet<string>; mandatory: readonly string[] }>();

/**
 * The elements of a resource type for _summary (https://hl7.org/fhir/R4/search.html#summary): paths
 * (relative, choices as [x]) marked isSummary (or isModifier), and the top-level mandatory elements.
 */
export function summaryElements(type: string): { summary: ReadonlySet<string>; mandatory: readonly string[] } {
  summaries ??= load<{ summary: Record<string, string[]>; mandatory: Record<string, string[]> }>('summary.json');
  let s = summaryCache.get(type);
  if (!s) {
    s = { summary: new Set(summaries.summary[type] ?? []), mandatory: summaries.mandatory[type] ?? [] };
    summaryCache.set(type, s);
  }
  return s;
}

/** Element paths (relative to the type) and their type codes, per resource and complex datatype. */
export function elementIndex(): Readonly<Record<string, Record<string, string[]>>> {
  elements ??= load<Record<string, Record<string, string[]>>>('elements.json');
  return elements;
}

/** All concrete R4 resource types, sorted. */
export function resourceTypeInfo(): readonly { type: string; description: string }[] {
  resourceTypeList ??= Object.freeze(load<{ type: string; description: string }[]>('resource-types.json'));
  return resourceTypeList;
}

export function isResourceType(t: string): boolean {
  resourceTypes ??= new Set(resourceTypeInfo().map((r) => r.type));
  return resourceTypes.has(t);
}

/** Official search parameters per resource type (expression narrowed to that type). */
export function searchParamsFor(type: string): readonly SearchParamDef[] {
  searchParams ??= load<Record<string, SearchParamDef[]>>('search-parameters.json');
  return searchParams[type] ?? [];
}

export function compartmentDefinitions(): readonly CompartmentDef[] {
  compartments ??= load<CompartmentDef[]>('compartments.json');
  return compartments;
}

/** FHIR id datatype (https://hl7.org/fhir/R4/datatypes.html#id). */
export const ID_PATTERN = /^[A-Za-z0-9\-.]{1,64}$/;
