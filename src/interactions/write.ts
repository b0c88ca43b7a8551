// The version-writing core shared by create, update, patch and delete
// (https://hl7.org/fhir/R4/http.html#versioning). Runs inside a transaction holding the row lock.
import type { Resource } from 'fhir/r4.js';
import { FhirError } from '../fhir/errors.js';
import { extractIndexRows } from '../search/index-extract.js';
import type { Tx } from '../storage/db.js';
import type { StoredVersion, VersionHead, WriteMethod } from '../storage/resource-store.js';
import { stamp } from './common.js';
import type { RequestContext, Services } from './context.js';

/** Checks If-Match against the current head (https://hl7.org/fhir/R4/http.html#concurrency). */
export function checkIfMatch(type: string, id: string, head: VersionHead | undefined, ifMatch: number | undefined): void {
  if (ifMatch === undefined) return;
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

/** Writes the next version of a resource (the caller holds the lock from lockCurrent). */
export async function writeNext(
  svc: Services,
  ctx: RequestContext,
  tx: Tx,
  head: VersionHead | undefined,
  method: WriteMethod,
  type: string,
  id: string,
  body: Resource | undefined,
): Promise<StoredVersion> {
  const versionId = (head?.versionId ?? 0) + 1;
  const lastUpdated = nextTimestamp(ctx, head);
  const resource = body ? stamp({ ...body, id }, versionId, lastUpdated) : undefined;
  await svc.store.writeVersion(tx, {
    resourceType: type,
    id,
    versionId,
    lastUpdated,
    method,
    ...(resource ? { resource, index: extractIndexRows(resource) } : {}),
    ...(head ? { previous: head.versionId } : {}),
  });
  return { resourceType: type, id, versionId, lastUpdated, deleted: !resource, method, ...(resource ? { resource } : {}) };
}
