// OperationOutcome builders (https://hl7.org/fhir/R4/operationoutcome.html).
import type { OperationOutcome } from 'fhir/r4.js';
import type { Issue } from './errors.js';

/**
 * Statuses that common clients read back from OperationOutcome.id alone (@medplum/core's getStatus,
 * isNotFound, isGone, ...): an error with one of these statuses carries that client's id, so the
 * status they derive is the status Vesta sent. Every other error's id is its catalogue code.
 * Documented in docs/interactions.md ("OperationOutcome ids").
 */
const ID_BY_STATUS: Record<number, string> = {
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not-found',
  409: 'conflict',
  410: 'gone',
  412: 'precondition-failed',
  422: 'business-rule',
  429: 'too-many-requests',
};

/** The stable OperationOutcome.id of an error with this catalogue code and status. */
export function outcomeId(code: string, status: number): string {
  if (code === 'multiple-matches') return 'multiple-matches';
  return ID_BY_STATUS[status] ?? code;
}

/** Builds an OperationOutcome from issues; an empty list yields one informational "ok" issue. */
export function operationOutcome(issues: Issue[], id?: string): OperationOutcome {
  const list = issues.length ? issues : [{ severity: 'information' as const, code: 'informational', diagnostics: 'All OK' }];
  return {
    resourceType: 'OperationOutcome',
    ...(id ? { id } : {}),
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
