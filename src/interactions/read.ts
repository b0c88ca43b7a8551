// read: GET [base]/[type]/[id] (https://hl7.org/fhir/R4/http.html#read), with If-None-Match and
// If-Modified-Since (https://hl7.org/fhir/R4/http.html#cread), _summary and _elements.
import { readAuditEvent } from './audit-events.js';
import { FhirError } from '../fhir/errors.js';
import { parseReadSummary, parseShaping, shapeResource } from '../search/shape.js';
import { parseVersionEtag, requireId, requireType, versionHeaders } from './common.js';
import type { InteractionResult, RequestContext, Services } from './context.js';
import { allow, currentWithinReach, reachesAll } from './authorize.js';
import { patientsOfResource } from '../audit/patients.js';

export interface ReadInput {
  type: string;
  id: string;
  ifNoneMatch?: string;
  ifModifiedSince?: string;
  /** _summary (true, text, data or false), as search.html#summary defines it. */
  summary?: string;
  /** _elements, as search.html#elements defines it (not together with _summary other than false). */
  elements?: string;
}

export async function read(svc: Services, ctx: RequestContext, input: ReadInput): Promise<InteractionResult> {
  requireType(input.type);
  requireId(input.id);
  if (input.type === 'AuditEvent') return readAuditEvent(svc, ctx, input);
  allow(ctx, input.type, 'r', 'read');
  ctx.audit.resource(input.type, input.id);
  const shaping = parseShaping(parseReadSummary(input.summary), input.elements);
  const v = await svc.store.readCurrent(svc.db.knex, input.type, input.id);
  const notFound = () => new FhirError('not-found', `${input.type}/${input.id} is not known`);
  if (!v) throw notFound();
  // Outside the token's reach answers as unknown (interactions/authorize.ts); a deleted resource has
  // no content left to check, so only a token reaching every resource of the type learns of it.
  if (v.deleted && !reachesAll(svc, ctx, input.type, ['r'])) throw notFound();
  if (!v.deleted && !(await currentWithinReach(svc, ctx, svc.db.knex, 'r', input.type, input.id, v.resource, v.lastUpdated))) throw notFound();
  if (v.deleted) {
    throw new FhirError('gone', `${input.type}/${input.id} was deleted`, { headers: { ETag: `W/"${v.versionId}"` } });
  }
  ctx.audit.resource(input.type, input.id, v.versionId, v.resource ? patientsOfResource(v.resource) : []);
  const headers = versionHeaders(ctx, v, false);
  const inm = input.ifNoneMatch?.trim();
  if (inm) {
    if (inm === '*' || parseVersionEtag(inm, 'If-None-Match') === v.versionId) return { status: 304, headers };
  } else if (input.ifModifiedSince) {
    const since = Date.parse(input.ifModifiedSince);
    // HTTP dates have second precision; a resource is unmodified when its second is not later.
    if (!Number.isNaN(since) && Math.floor(v.lastUpdated.getTime() / 1000) * 1000 <= since) return { status: 304, headers };
  }
  return { status: 200, headers, body: v.resource && shapeResource(v.resource, shaping) };
}
