// Helpers shared by the interactions of https://hl7.org/fhir/R4/http.html.
import type { Resource } from 'fhir/r4.js';
import { createHash } from 'node:crypto';
import { FhirError, type Issue } from '../fhir/errors.js';
import { ID_PATTERN, isResourceType } from '../fhir/definitions.js';
import { info, operationOutcome } from '../fhir/outcome.js';
import type { StoredVersion } from '../storage/resource-store.js';
import type { InteractionResult, RequestContext } from './context.js';

/** The value of a query parameter that may appear at most once (400 when repeated). */
export function onlyOnce(pairs: readonly [string, string][], name: string, where = ''): string | undefined {
  const values = pairs.filter(([k]) => k === name);
  if (values.length > 1) throw new FhirError('invalid-request', `${where}parameter ${name} may appear only once`);
  return values[0]?.[1];
}

export function requireType(type: string): void {
  if (!isResourceType(type)) throw new FhirError('unknown-type', `resource type "${type.slice(0, 64)}" is not supported`);
}

export function requireId(id: string): void {
  if (!ID_PATTERN.test(id)) throw new FhirError('invalid-request', 'the id is not a valid FHIR id ([A-Za-z0-9-.]{1,64})');
}

/** Parses If-Match: W/"n" or "n" (https://hl7.org/fhir/R4/http.html#concurrency). */
export function parseVersionEtag(header: string | undefined, name = 'If-Match'): number | undefined {
  if (header === undefined || header === '') return undefined;
  const m = /^\s*(?:W\/)?"(\d{1,9})"\s*$/.exec(header);
  if (!m) throw new FhirError('invalid-request', `${name} must be a version ETag like W/"3"`);
  return Number(m[1]);
}

/** An If-Match precondition: a version, or `*` (any current representation, RFC 9110 §13.1.1). */
export type IfMatch = number | '*';

/** Parses If-Match: `*`, W/"n" or "n" (https://hl7.org/fhir/R4/http.html#concurrency). */
export function parseIfMatch(header: string | undefined): IfMatch | undefined {
  if (header !== undefined && header.trim() === '*') return '*';
  return parseVersionEtag(header, 'If-Match');
}

export function etag(versionId: number): string {
  return `W/"${versionId}"`;
}

/** Sets server-owned meta: versionId and lastUpdated (client meta.profile/tag/security kept). */
export function stamp<T extends Resource>(resource: T, versionId: number, lastUpdated: Date): T {
  const meta = { ...(resource.meta ?? {}) };
  meta.versionId = String(versionId);
  meta.lastUpdated = lastUpdated.toISOString();
  const { resourceType, id, meta: _old, ...rest } = resource as Resource & Record<string, unknown>;
  return { resourceType, id, meta, ...rest } as unknown as T;
}

export function versionHeaders(ctx: RequestContext, v: { resourceType: string; id: string; versionId: number; lastUpdated: Date }, withLocation: boolean): Record<string, string> {
  const h: Record<string, string> = { ETag: etag(v.versionId), 'Last-Modified': v.lastUpdated.toUTCString() };
  if (withLocation) h.Location = `${ctx.baseUrl}/${v.resourceType}/${v.id}/_history/${v.versionId}`;
  return h;
}

/** The response to a successful write, shaped by Prefer: return (https://hl7.org/fhir/R4/http.html#ops). */
export function writeResult(ctx: RequestContext, status: number, v: StoredVersion & { warnings?: Issue[] }, message: string, withLocation = true): InteractionResult {
  const headers = versionHeaders(ctx, v, withLocation);
  switch (ctx.preferReturn) {
    case 'minimal':
      return { status, headers };
    case 'OperationOutcome':
      return { status, headers, body: v.warnings?.length ? operationOutcome([{ severity: 'information', code: 'informational', diagnostics: message }, ...v.warnings]) : info(message) };
    default:
      return { status, headers, ...(v.resource ? { body: v.resource } : {}) };
  }
}

/** A 64-bit advisory-lock key for a string (criteria or resource identity). */
export function lockKey(s: string): bigint {
  return createHash('sha256').update(s).digest().readBigInt64BE(0);
}
