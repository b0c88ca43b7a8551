// update: PUT [base]/[type]/[id] (https://hl7.org/fhir/R4/http.html#update), update-as-create,
// version-aware update with If-Match, and conditional update PUT [base]/[type]?criteria (#cond-update).
import { refuseLedgerChange } from './audit-event-create.js';
import type { Resource } from 'fhir/r4.js';
import { FhirError, type Issue } from '../fhir/errors.js';
import type { StoredVersion, VersionHead } from '../storage/resource-store.js';
import type { AuditedTx } from '../storage/resource-store.js';
import { auditedTransaction } from './audit.js';
import { checkResourceShape } from '../validation/shape.js';
import { randomUUID } from 'node:crypto';
import { requireId, requireType, writeResult, type IfMatch } from './common.js';
import { lockAndMatch, matchScope } from './conditional.js';
import type { InteractionResult, RequestContext, Services } from './context.js';
import { checkIfMatch, prepareVersion, writeNext, type Prepared } from './write.js';
import { allow, checkTarget } from './authorize.js';

export interface UpdateInput {
  type: string;
  id: string;
  body: unknown;
  ifMatch?: IfMatch;
}

async function updateIn(svc: Services, ctx: RequestContext, tx: AuditedTx, type: string, id: string, prepared: Prepared, ifMatch: IfMatch | undefined): Promise<InteractionResult> {
  const head = await svc.store.lockCurrent(tx, type, id);
  if (head && !head.deleted && (await checkTarget(svc, ctx, tx, 'u', type, id, head.lastUpdated)) === 'hidden') {
    // The id is taken by a resource this token may not read: it can neither update nor create it.
    throw new FhirError('forbidden', `${type}/${id} cannot be written with this token (the id is not available to it)`);
  }
  checkIfMatch(type, id, head, ifMatch);
  const v = await writeNext(svc, ctx, tx, head, 'PUT', type, id, prepared);
  return updateResult(ctx, head, v);
}

/** What update checks before touching the database (also the batched transaction path's checks). */
export function checkUpdate(input: { type: string; id: string; body: unknown }): Resource {
  requireType(input.type);
  refuseLedgerChange(input.type, 'update');
  requireId(input.id);
  const resource = checkResourceShape(input.body, input.type);
  if (resource.id === undefined) throw new FhirError('invalid-resource', 'the resource must carry an id equal to the id in the URL');
  if (resource.id !== input.id) throw new FhirError('invalid-resource', 'the resource id does not match the id in the URL');
  return resource;
}

/** The answer to a written update: 201 when it created (or re-created) the resource, else 200. */
export function updateResult(ctx: RequestContext, head: VersionHead | undefined, v: StoredVersion & { warnings: Issue[] }): InteractionResult {
  const created = !head || head.deleted;
  return writeResult(ctx, created ? 201 : 200, v, created ? `created ${v.resourceType}/${v.id}` : `updated ${v.resourceType}/${v.id}`, true);
}

export async function update(svc: Services, ctx: RequestContext, input: UpdateInput): Promise<InteractionResult> {
  const resource = checkUpdate(input);
  allow(ctx, input.type, 'u', 'update');
  // Validated and indexed before the transaction (design.md: CPU work before BEGIN); sealed there too
  // when If-Match names the version it replaces (the JWE binds the new version number).
  const prepared = await prepareVersion(svc, ctx, input.type, input.id, resource, typeof input.ifMatch === 'number' ? input.ifMatch + 1 : undefined);
  // Two concurrent update-as-creates of one id collide on the primary key; the retry becomes an update.
  return auditedTransaction(svc, ctx, (tx) => updateIn(svc, ctx, tx, input.type, input.id, prepared, input.ifMatch), {
    retryOnUniqueViolation: true,
  });
}

export interface ConditionalUpdateInput {
  type: string;
  criteria: string;
  body: unknown;
  ifMatch?: IfMatch;
}

export async function conditionalUpdate(svc: Services, ctx: RequestContext, input: ConditionalUpdateInput): Promise<InteractionResult> {
  requireType(input.type);
  refuseLedgerChange(input.type, 'conditional update', 'GET, HEAD, POST');
  allow(ctx, input.type, 'u', 'conditional update');
  const resource = checkResourceShape(input.body, input.type);
  // Prepared before the transaction for the id it gets without a match; a match's id is stamped there.
  const fresh = resource.id ?? randomUUID();
  const prepared = await prepareVersion(svc, ctx, input.type, fresh, resource, typeof input.ifMatch === 'number' ? input.ifMatch + 1 : undefined);
  return auditedTransaction(
    svc,
    ctx,
    async (tx) => {
      const matches = await lockAndMatch(tx, input.type, input.criteria, svc.store.phiIndexMode, matchScope(svc, ctx, input.type, 'conditional update'));
      if (matches.length > 1) throw new FhirError('multiple-matches', 'the criteria match more than one resource');
      if (matches.length === 1) {
        if (resource.id !== undefined && resource.id !== matches[0]) {
          throw new FhirError('invalid-resource', 'the resource id differs from the id of the resource the criteria match');
        }
        return updateIn(svc, ctx, tx, input.type, matches[0], prepared, input.ifMatch);
      }
      // No match: create, with the client's id when it gave one (update-as-create).
      return updateIn(svc, ctx, tx, input.type, fresh, prepared, input.ifMatch);
    },
    { retryOnUniqueViolation: true },
  );
}
