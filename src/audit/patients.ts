// The patients an AuditEvent names (BALP's patient variants): those whose Patient compartment holds
// the resource, by the official CompartmentDefinition's parameters for its type. From a written
// version's index rows (already extracted), or evaluated on a read resource (only those parameters).
import type { Resource } from 'fhir/r4.js';
import { compartmentMembers } from '../search/compartment.js';
import { evaluatorOf, paramsOf, type ParamSpec } from '../search/registry.js';
import { emptyRows, type IndexRows } from '../search/index-rows.js';
import { extractReference } from '../search/types/reference.js';

/** Most patients one record names (a Group or a List can reference thousands). */
const MAX_PATIENTS = 50;

let members: Map<string, Set<string>> | undefined;

/** Compartment parameters per member type of the Patient compartment. */
function patientParams(type: string): Set<string> | undefined {
  members ??= new Map(compartmentMembers('Patient').map((m) => [m.type, new Set(m.params)]));
  return members.get(type);
}

const specCache = new Map<string, ParamSpec[]>();

function specsOf(type: string): ParamSpec[] {
  let specs = specCache.get(type);
  if (!specs) {
    const params = patientParams(type);
    const supported = paramsOf(type).supported;
    specs = params ? [...params].map((p) => supported.get(p)).filter((s): s is ParamSpec => s !== undefined && s.kind === 'reference') : [];
    specCache.set(type, specs);
  }
  return specs;
}

function fromRows(type: string, rows: IndexRows | undefined): string[] {
  const params = patientParams(type);
  const out = new Set<string>();
  if (!params || !rows?.reference) return [];
  for (const r of rows.reference) {
    if (r.targetType === 'Patient' && r.targetId && params.has(r.param)) out.add(r.targetId);
    if (out.size >= MAX_PATIENTS) break;
  }
  return [...out];
}

/** Patients of a version about to be written (a deletion: the patients of the version it ends, when given). */
export function patientsOfVersion(v: { resourceType: string; id: string; resource?: Resource; index?: IndexRows; formerPatients?: string[] }): string[] {
  if (v.resourceType === 'Patient') return [v.id];
  if (!v.resource) return v.formerPatients ?? [];
  return fromRows(v.resourceType, v.index);
}

/** Patients of a resource read from storage: its compartment parameters evaluated on it. */
export function patientsOfResource(resource: Resource): string[] {
  if (resource.resourceType === 'Patient') return resource.id ? [resource.id] : [];
  const specs = specsOf(resource.resourceType);
  if (!specs.length) return [];
  const rows = emptyRows();
  const env = { resource };
  for (const spec of specs) {
    let values: unknown[];
    try {
      values = evaluatorOf(spec)(resource, env);
    } catch {
      continue;
    }
    for (const v of values) extractReference(spec.code, v, null, rows);
  }
  return fromRows(resource.resourceType, rows);
}

/** The Patient compartment parameters of a type (for looking up a deleted version's patients). */
export function patientParamsOf(type: string): string[] {
  return specsOf(type).map((s) => s.code);
}
