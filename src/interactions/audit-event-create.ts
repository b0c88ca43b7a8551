// create of an AuditEvent: POST [base]/AuditEvent (issue 16 item 7). A client may record an event of
// its own (an app's local access, a device's): validated as any resource, then appended to the audit
// ledger like the server's own records, in one transaction with the record of this create. It never
// enters the resource tables, so it can never be updated, patched or deleted (405, refuseLedgerChange).
import type { AuditEvent } from 'fhir/r4.js';
import { randomUUID } from 'node:crypto';
import { requireGrants } from '../auth/access.js';
import { FhirError } from '../fhir/errors.js';
import { checkResourceShape } from '../validation/shape.js';
import { auditedTransaction } from './audit.js';
import { stamp, writeResult } from './common.js';
import type { InteractionResult, RequestContext, Services } from './context.js';
import { enforceValid } from './write.js';

/** The patients an AuditEvent names as entities (BALP: entity.what Patient/x, role 1 or not). */
function namedPatients(event: AuditEvent, baseUrl: string): string[] {
  const out = new Set<string>();
  for (const e of event.entity ?? []) {
    const ref = e.what?.reference;
    if (!ref) continue;
    const local = ref.startsWith(`${baseUrl}/`) ? ref.slice(baseUrl.length + 1) : ref;
    const m = /^Patient\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/\d+)?$/.exec(local);
    if (m) out.add(m[1]);
  }
  return [...out];
}

/**
 * Whether the token may create this event: a grant without constraints at user/ or system/ level
 * reaches any event; a patient/ grant only events that name its patient and no other.
 */
function withinReach(ctx: RequestContext, patients: string[]): boolean {
  for (const g of requireGrants(ctx.principal, 'AuditEvent', 'c', 'create')) {
    if (g.constraint) continue;
    if (g.context !== 'patient') return true;
    const own = ctx.principal.patient;
    if (own && patients.length > 0 && patients.every((p) => p === own)) return true;
  }
  return false;
}

export async function createAuditEvent(svc: Services, ctx: RequestContext, body: unknown, opts: { ifNoneExist?: string; assignedId?: string } = {}): Promise<InteractionResult> {
  requireGrants(ctx.principal, 'AuditEvent', 'c', 'create');
  if (opts.ifNoneExist !== undefined) throw new FhirError('invalid-request', 'conditional create is not supported for AuditEvent (the ledger is not searched for matches before appending)');
  const shaped = checkResourceShape(body, 'AuditEvent');
  // The server assigns the id (a client id is ignored, http.html#create); version 1 is the only one.
  const id = opts.assignedId ?? randomUUID();
  const event = stamp({ ...(shaped as AuditEvent), id }, 1, ctx.clock());
  const warnings = enforceValid(svc, event);
  const patients = namedPatients(event, ctx.baseUrl);
  if (!withinReach(ctx, patients)) {
    throw new FhirError('forbidden', "the AuditEvent would be outside what this token may create: a patient/ AuditEvent scope creates only events that name the token's patient and no other");
  }
  return auditedTransaction(svc, ctx, async (tx) => {
    // A copy goes to the ledger: appending consumes it, and the event is also the response.
    await svc.audit.appendInTx(tx, [structuredClone(event)]);
    ctx.audit.resource('AuditEvent', id, 1, patients);
    const stored = { resourceType: 'AuditEvent', id, versionId: 1, lastUpdated: new Date(event.meta!.lastUpdated!), deleted: false, method: 'POST' as const, resource: event, warnings };
    return writeResult(ctx, 201, stored, `recorded AuditEvent/${id} in the audit ledger`);
  });
}

/** AuditEvents are append-only: update, patch and delete are refused, whatever the token. */
export function refuseLedgerChange(type: string, what: string, allow = 'GET, HEAD'): void {
  if (type !== 'AuditEvent') return;
  throw new FhirError('method-not-allowed', `AuditEvents cannot be changed: ${what} is not allowed on the audit ledger (read, search and create only)`, { headers: { Allow: allow } });
}
