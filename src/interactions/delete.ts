// delete: DELETE [base]/[type]/[id] (https://hl7.org/fhir/R4/http.html#delete), logical and
// idempotent, and conditional delete DELETE [base]/[type]?criteria (single match).
import { refuseLedgerChange } from './audit-event-create.js';
import { FhirError } from '../fhir/errors.js';
import { info } from '../fhir/outcome.js';
import type { AuditedTx } from '../storage/resource-store.js';
import { auditedTransaction } from './audit.js';
import { etag, requireId, requireType, type IfMatch } from './common.js';
import { lockAndMatch, matchScope } from './conditional.js';
import type { InteractionResult, RequestContext, Services } from './context.js';
import { checkIfMatch, writeNext } from './write.js';
import { allow, visibleHead } from './authorize.js';

/** The answer to a delete: 204 (or 200 with an OperationOutcome when asked), ETag when a version exists. */
export function deleted(ctx: RequestContext, message: string, versionId?: number): InteractionResult {
  const headers: Record<string, string> = versionId ? { ETag: etag(versionId) } : {};
  if (ctx.preferReturn === 'OperationOutcome') return { status: 200, headers, body: info(message) };
  return { status: 204, headers };
}

async function deleteIn(svc: Services, ctx: RequestContext, tx: AuditedTx, type: string, id: string, ifMatch: IfMatch | undefined): Promise<InteractionResult> {
  // Outside the token's reach and unreadable to it: the same answers as for an id that does not exist
  // (If-Match included), so that neither its existence nor its version shows.
  const head = await visibleHead(svc, ctx, tx, 'd', type, id, await svc.store.lockCurrent(tx, type, id));
  checkIfMatch(type, id, head, ifMatch);
  if (!head) return deleted(ctx, `${type}/${id} does not exist; nothing to delete`);
  if (head.deleted) return deleted(ctx, `${type}/${id} was already deleted`, head.versionId);
  const v = await writeNext(svc, ctx, tx, head, 'DELETE', type, id, undefined);
  return deleted(ctx, `deleted ${type}/${id}`, v.versionId);
}

export async function remove(svc: Services, ctx: RequestContext, input: { type: string; id: string; ifMatch?: IfMatch }): Promise<InteractionResult> {
  requireType(input.type);
  requireId(input.id);
  refuseLedgerChange(input.type, 'delete');
  allow(ctx, input.type, 'd', 'delete');
  return auditedTransaction(svc, ctx, (tx) => deleteIn(svc, ctx, tx, input.type, input.id, input.ifMatch));
}

export async function conditionalDelete(svc: Services, ctx: RequestContext, input: { type: string; criteria: string; ifMatch?: IfMatch }): Promise<InteractionResult> {
  requireType(input.type);
  refuseLedgerChange(input.type, 'conditional delete', 'GET, HEAD, POST');
  allow(ctx, input.type, 'd', 'conditional delete');
  const scope = matchScope(svc, ctx, input.type, 'conditional delete');
  return auditedTransaction(svc, ctx, async (tx) => {
    const matches = await lockAndMatch(tx, input.type, input.criteria, svc.store.phiIndexMode, scope);
    if (matches.length > 1) throw new FhirError('multiple-matches', 'the criteria match more than one resource; only single deletes are supported');
    if (matches.length === 0) return deleted(ctx, 'no resource matches the criteria; nothing to delete');
    return deleteIn(svc, ctx, tx, input.type, matches[0], input.ifMatch);
  });
}
