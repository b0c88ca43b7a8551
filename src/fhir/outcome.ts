// OperationOutcome builders (https://hl7.org/fhir/R4/operationoutcome.html).
import type { OperationOutcome } from 'fhir/r4.js';
import type { Issue } from './errors.js';

/** Builds an OperationOutcome from issues; an empty list yields one informational "ok" issue. */
export function operationOutcome(issues: Issue[]): OperationOutcome {
  const list = issues.length ? issues : [{ severity: 'information' as const, code: 'informational', diagnostics: 'All OK' }];
  return {
    resourceType: 'OperationOutcome',
    issue: list.map((i) => ({
      severity: i.severity,
      code: i.code as OperationOutcome['issue'][number]['code'],
      diagnostics: i.diagnostics,
      ...(i.expression?.length ? { expression: i.expression } : {}),
    })),
  };
}

export function info(diagnostics: string): OperationOutcome {
  return operationOutcome([{ severity: 'information', code: 'informational', diagnostics }]);
}
