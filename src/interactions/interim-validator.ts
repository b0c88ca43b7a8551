// Interim ResourceValidator used until the generated R4 validator (validation issue) is wired in:
// it reports only what shape.ts already enforces, so writes are not yet checked against the
// StructureDefinitions. The README's "Not yet supported" section says so.
import type { Issue } from '../fhir/errors.js';
import { ID_PATTERN, isResourceType } from '../fhir/definitions.js';
import type { ResourceValidator } from './context.js';

export class EnvelopeOnlyValidator implements ResourceValidator {
  validate(resource: unknown): Issue[] {
    if (!resource || typeof resource !== 'object' || Array.isArray(resource)) {
      return [{ severity: 'error', code: 'structure', diagnostics: 'not a JSON object' }];
    }
    const r = resource as Record<string, unknown>;
    if (typeof r.resourceType !== 'string' || !isResourceType(r.resourceType)) {
      return [{ severity: 'error', code: 'structure', diagnostics: 'resourceType is missing or not an R4 resource type', expression: ['resourceType'] }];
    }
    if ('id' in r && (typeof r.id !== 'string' || !ID_PATTERN.test(r.id))) {
      return [{ severity: 'error', code: 'value', diagnostics: 'invalid id', expression: [`${r.resourceType}.id`] }];
    }
    return [];
  }
}
