// The resource envelope every write must have (https://hl7.org/fhir/R4/json.html#resources):
// an object naming its resourceType, with a well-formed id. Full StructureDefinition validation
// (422) is the validation issue's; this guard keeps malformed bodies out with a 400.
import type { Resource } from 'fhir/r4.js';
import { FhirError } from '../fhir/errors.js';
import { ID_PATTERN, isResourceType } from '../fhir/definitions.js';

/** Returns the body as a Resource of the expected type or throws a 400 naming what is wrong. */
export function checkResourceShape(body: unknown, expectedType: string): Resource {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new FhirError('invalid-resource', 'the body must be a JSON object holding a FHIR resource');
  }
  const r = body as Record<string, unknown>;
  if (typeof r.resourceType !== 'string') throw new FhirError('invalid-resource', 'the resource has no resourceType');
  if (!isResourceType(r.resourceType)) {
    throw new FhirError('invalid-resource', `resourceType "${r.resourceType.slice(0, 64)}" is not an R4 resource type`);
  }
  if (r.resourceType !== expectedType) {
    throw new FhirError('invalid-resource', `resourceType ${r.resourceType} does not match the URL (${expectedType})`);
  }
  if ('id' in r && (typeof r.id !== 'string' || !ID_PATTERN.test(r.id))) {
    throw new FhirError('invalid-resource', 'the resource id is not a valid FHIR id', { issues: [{ severity: 'error', code: 'value', diagnostics: 'invalid id', expression: [`${expectedType}.id`] }] });
  }
  if ('meta' in r && (r.meta === null || typeof r.meta !== 'object' || Array.isArray(r.meta))) {
    throw new FhirError('invalid-resource', 'meta must be an object', { issues: [{ severity: 'error', code: 'structure', diagnostics: 'meta must be an object', expression: [`${expectedType}.meta`] }] });
  }
  return r as unknown as Resource;
}
