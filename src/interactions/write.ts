// The version-writing core shared by create, update, patch and delete
// (https://hl7.org/fhir/R4/http.html#versioning). Runs inside a transaction holding the row lock.
import type { Resource } from 'fhir/r4.js';
import { FhirError, type Issue } from '../fhir/errors.js';
import { extractIndexRowsPaced } from '../search/index-extract.js';
import { pace } from '../fhir/pacer.js';
import type { AuditedTx, NewVersion, SealedRow, StoredVersion, VersionHead, WriteMethod } from '../storage/resource-store.js';
import { stamp, type IfMatch } from './common.js';
import type { RequestContext, Services } from './context.js';
import { allow, requireNewVersions, writeLetters } from './authorize.js';
import { patientParamsOf } from '../audit/patients.js';
import { targetsBySource } from '../storage/search-store.js';
import type { Queryable } from '../storage/db.js';

/** The patients whose compartment holds the current version of a resource about to be deleted (its AuditEvent names them). */
export async function formerPatients(q: Queryable, type: string, id: string): Promise<string[]> {
  return (await formerPatientsMany(q, [{ resourceType: type, id }])).get(`${type}/${id}`) ?? [];
}

/** formerPatients for many resources: one statement per type (the batched Bundle paths). */
export async function formerPatientsMany(q: Queryable, refs: { resourceType: string; id: string }[]): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  const byType = new Map<string, string[]>();
  for (const r of refs) {
    if (r.resourceType === 'Patient') out.set(`Patient/${r.id}`, [r.id]);
    else byType.set(r.resourceType, [...(byType.get(r.resourceType) ?? []), r.id]);
  }
  for (const [type, ids] of byType) {
    const params = patientParamsOf(type);
    if (!params.length) continue;
    for (const [id, targets] of await targetsBySource(q, type, ids, params, 'Patient')) out.set(`${type}/${id}`, targets.slice(0, 50));
  }
  return out;
}

/** Checks If-Match against the current head (https://hl7.org/fhir/R4/http.html#concurrency). */
export function checkIfMatch(type: string, id: string, head: VersionHead | undefined, ifMatch: IfMatch | undefined): void {
  if (ifMatch === undefined) return;
  if (ifMatch === '*') {
    // RFC 9110 §13.1.1: "*" is false when there is no current representation (absent or deleted).
    if (!head || head.deleted) throw new FhirError('version-mismatch', `If-Match * given but ${type}/${id} has no current version`);
    return;
  }
  if (!head) throw new FhirError('version-mismatch', `If-Match W/"${ifMatch}" given but ${type}/${id} does not exist`);
  if (head.versionId !== ifMatch) {
    throw new FhirError('version-mismatch', `If-Match W/"${ifMatch}" does not match the current version W/"${head.versionId}"`);
  }
}

/** Lock time never moves backwards for one resource, whatever the wall clock does. */
function nextTimestamp(ctx: RequestContext, head: VersionHead | undefined): Date {
  const now = ctx.clock();
  if (head && head.lastUpdated.getTime() >= now.getTime()) return new Date(head.lastUpdated.getTime() + 1);
  return now;
}

/**
 * Validates a resource about to be stored (https://hl7.org/fhir/R4/validation.html): errors reject
 * the write with 422 listing every issue; warnings are returned for the response.
 */
export function enforceValid(svc: Services, resource: Resource): Issue[] {
  const issues = svc.validator.validate(resource);
  const errors = issues.filter((i) => i.severity === 'error' || i.severity === 'fatal');
  if (errors.length) {
    throw new FhirError('validation-failed', `the ${resource.resourceType} is not valid FHIR R4 (${errors.length} error${errors.length > 1 ? 's' : ''})`, { issues });
  }
  return issues;
}

/**
 * A version's content made ready before the transaction (design.md: CPU work before BEGIN):
 * stamped, validated and indexed, and sealed when its version number is known in advance (a create
 * is version 1, an update with If-Match W/"n" is n + 1). The validation verdict is kept, not thrown,
 * so that the interaction fails where it failed before (a conditional create that matches answers
 * with the match whatever the body; a version mismatch is reported before a validation error).
 */
export interface Prepared {
  resourceType: string;
  id: string;
  /** The version number it was stamped (and sealed, when `row` is set) for. */
  versionId: number;
  lastUpdated: Date;
  resource: Resource;
  outcome: { warnings: Issue[]; index: NewVersion['index'] } | { error: unknown };
  row?: SealedRow;
}

/**
 * Prepares a version of `body` outside any transaction. `versionId` is the version it will most likely
 * be written as; writeNext stamps it again (and leaves the sealing to storage) when the locked head
 * says otherwise. Yields to the event loop between the steps (fhir/pacer.ts).
 */
export async function prepareVersion(svc: Services, ctx: RequestContext, type: string, id: string, body: Resource, versionId: number | undefined): Promise<Prepared> {
  await pace();
  const lastUpdated = ctx.clock();
  const v = versionId ?? 1;
  const resource = stamp({ ...body, id }, v, lastUpdated);
  let outcome: Prepared['outcome'];
  try {
    const warnings = enforceValid(svc, resource);
    await pace();
    outcome = { warnings, index: await extractIndexRowsPaced(resource) };
  } catch (error) {
    return { resourceType: type, id, versionId: v, lastUpdated, resource, outcome: { error } };
  }
  const row = versionId !== undefined ? await svc.store.sealRow({ resourceType: type, id, versionId, lastUpdated, resource }) : undefined;
  return { resourceType: type, id, versionId: v, lastUpdated, resource, outcome, ...(row ? { row } : {}) };
}

/**
 * The version a prepared content becomes after `head` (stamped again if the head moved since it was
 * prepared: another version number, or a lastUpdated that would not move forward). Throws the
 * content's validation failure, at the point where the write would have validated it.
 */
export function finishVersion(ctx: RequestContext, p: Prepared, head: VersionHead | undefined, method: WriteMethod, id = p.id): { version: NewVersion; stored: StoredVersion & { warnings: Issue[] } } {
  if ('error' in p.outcome) throw p.outcome.error;
  const versionId = (head?.versionId ?? 0) + 1;
  const lastUpdated = head && head.lastUpdated.getTime() >= p.lastUpdated.getTime() ? nextTimestamp(ctx, head) : p.lastUpdated;
  // A conditional update prepared without knowing its target gets the matched id here (ids are not
  // indexed, and any two valid ids validate alike).
  const same = versionId === p.versionId && lastUpdated.getTime() === p.lastUpdated.getTime() && id === p.id;
  const resource = same ? p.resource : stamp({ ...p.resource, id }, versionId, lastUpdated);
  const { warnings, index } = p.outcome;
  return {
    version: {
      resourceType: p.resourceType,
      id,
      versionId,
      lastUpdated,
      method,
      resource,
      index: index!,
      ...(head ? { previous: head.versionId } : {}),
      ...(same && p.row ? { row: p.row } : {}),
    },
    stored: { resourceType: p.resourceType, id, versionId, lastUpdated, deleted: false, method, resource, warnings },
  };
}

/**
 * Prepares the first version of a new resource: stamped, validated, indexed and sealed, not yet
 * written (the batched transaction path, before its transaction).
 */
export async function prepareNew(svc: Services, ctx: RequestContext, type: string, id: string, body: Resource): Promise<{ version: NewVersion; stored: StoredVersion & { warnings: Issue[] } }> {
  return finishVersion(ctx, await prepareVersion(svc, ctx, type, id, body, 1), undefined, 'POST');
}

/**
 * Prepares the next version of a resource after `head` (stamped, validated and indexed, not yet
 * written): the single-entry path and the batched transaction path share it, so both number
 * versions, move lastUpdated and validate alike.
 */
export async function prepareNext(
  svc: Services,
  ctx: RequestContext,
  head: VersionHead | undefined,
  method: WriteMethod,
  type: string,
  id: string,
  body: Resource | undefined,
): Promise<{ version: NewVersion; stored: StoredVersion & { warnings: Issue[] } }> {
  if (body) return finishVersion(ctx, await prepareVersion(svc, ctx, type, id, body, (head?.versionId ?? 0) + 1), head, method);
  const versionId = (head?.versionId ?? 0) + 1;
  const lastUpdated = nextTimestamp(ctx, head);
  return {
    version: { resourceType: type, id, versionId, lastUpdated, method, ...(head ? { previous: head.versionId } : {}) },
    stored: { resourceType: type, id, versionId, lastUpdated, deleted: true, method, warnings: [] },
  };
}

/**
 * Writes the next version of a resource (the caller holds the lock from lockCurrent): its prepared
 * content (prepareVersion), or a deletion marker when there is none.
 */
export async function writeNext(
  svc: Services,
  ctx: RequestContext,
  tx: AuditedTx,
  head: VersionHead | undefined,
  method: WriteMethod,
  type: string,
  id: string,
  body: Prepared | undefined,
): Promise<StoredVersion & { warnings: Issue[] }> {
  const { version, stored } = body ? finishVersion(ctx, body, head, method, id) : await prepareNext(svc, ctx, head, method, type, id, undefined);
  if (!version.resource && head) version.formerPatients = await formerPatients(tx, type, id);
  // The content written must be within the token's reach (a patient/ token cannot write into another
  // compartment, a constrained token outside its constraints).
  const letters = writeLetters(method, !head || head.deleted);
  for (const l of letters) allow(ctx, type, l, method === 'POST' ? 'create' : !head || head.deleted ? 'update as create' : method === 'PATCH' ? 'patch' : 'update');
  if (letters.length) await requireNewVersions(svc, ctx, tx, [{ version, letters }]);
  await svc.store.writeVersion(tx, version);
  return stored;
}
