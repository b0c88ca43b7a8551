// create: POST [base]/[type] (https://hl7.org/fhir/R4/http.html#create), and conditional create
// with If-None-Exist (https://hl7.org/fhir/R4/http.html#ccreate).
import { createAuditEvent } from './audit-event-create.js';
import { randomUUID } from 'node:crypto';
import { FhirError } from '../fhir/errors.js';
import { auditedTransaction } from './audit.js';
import { checkResourceShape } from '../validation/shape.js';
import { requireType, versionHeaders, writeResult } from './common.js';
import { lockAndMatch, matchScope } from './conditional.js';
import type { InteractionResult, RequestContext, Services } from './context.js';
import { prepareVersion, writeNext } from './write.js';
import { allow } from './authorize.js';
import { patientsOfResource } from '../audit/patients.js';

export interface CreateInput {
  type: string;
  body: unknown;
  ifNoneExist?: string;
  /** Internal: an id assigned ahead of time (transaction Bundles map fullUrls before writing). */
  assignedId?: string;
}

export async function create(svc: Services, ctx: RequestContext, input: CreateInput): Promise<InteractionResult> {
  requireType(input.type);
  // AuditEvents go to the audit ledger, never to the resource tables.
  if (input.type === 'AuditEvent') return createAuditEvent(svc, ctx, input.body, { ...(input.ifNoneExist !== undefined ? { ifNoneExist: input.ifNoneExist } : {}), ...(input.assignedId ? { assignedId: input.assignedId } : {}) });
  allow(ctx, input.type, 'c', 'create');
  const resource = checkResourceShape(input.body, input.type);
  const scope = input.ifNoneExist !== undefined ? matchScope(svc, ctx, input.type, 'conditional create') : undefined;
  // The server assigns the id; a client id in the body is ignored (http.html#create).
  const id = input.assignedId ?? randomUUID();
  // Validated, indexed and sealed before the transaction (design.md: CPU work before BEGIN); a
  // conditional create's validation failure is thrown in it, once no match answers instead.
  const prepared = await prepareVersion(svc, ctx, input.type, id, resource, 1);
  // A plain create has nothing to check first: an invalid one opens no transaction.
  if (input.ifNoneExist === undefined && 'error' in prepared.outcome) throw prepared.outcome.error;
  return auditedTransaction(svc, ctx, async (tx) => {
    if (input.ifNoneExist !== undefined) {
      const matches = await lockAndMatch(tx, input.type, input.ifNoneExist, svc.store.phiIndexMode, scope);
      if (matches.length > 1) throw new FhirError('multiple-matches', 'If-None-Exist criteria match more than one resource');
      if (matches.length === 1) {
        const existing = await svc.store.readCurrent(tx, input.type, matches[0]);
        if (!existing?.resource) throw new FhirError('conflict', 'the matching resource changed during the request');
        ctx.audit.resource(input.type, existing.id, existing.versionId, patientsOfResource(existing.resource));
        const r = writeResult(ctx, 200, existing, 'a matching resource already exists; nothing was created');
        return { ...r, headers: { ...versionHeaders(ctx, existing, true), ...r.headers } };
      }
    }
    const v = await writeNext(svc, ctx, tx, undefined, 'POST', input.type, id, prepared);
    return writeResult(ctx, 201, v, `created ${input.type}/${id}`);
  });
}
