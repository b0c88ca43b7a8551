// vread: GET [base]/[type]/[id]/_history/[vid] (https://hl7.org/fhir/R4/http.html#vread), with _summary
// and _elements (as read).
import { vreadAuditEvent } from './audit-events.js';
import { patientsOfResource } from '../audit/patients.js';
import { FhirError } from '../fhir/errors.js';
import { parseReadSummary, parseShaping, shapeResource } from '../search/shape.js';
import { requireId, requireType, versionHeaders } from './common.js';
import type { InteractionResult, RequestContext, Services } from './context.js';
import { allow, reachesAll, visible } from './authorize.js';

export async function vread(svc: Services, ctx: RequestContext, input: { type: string; id: string; vid: string; summary?: string; elements?: string }): Promise<InteractionResult> {
  requireType(input.type);
  requireId(input.id);
  if (input.type === 'AuditEvent') return vreadAuditEvent(svc, ctx, input);
  allow(ctx, input.type, 'r', 'vread');
  ctx.audit.resource(input.type, input.id);
  const shaping = parseShaping(parseReadSummary(input.summary), input.elements);
  if (!/^\d{1,9}$/.test(input.vid)) throw new FhirError('not-found', 'the version id is not a version of this server');
  const v = await svc.store.readVersion(svc.db.knex, input.type, input.id, Number(input.vid));
  const notFound = () => new FhirError('not-found', `${input.type}/${input.id} has no version ${input.vid}`);
  if (!v) throw notFound();
  // The version's own content decides (it may have been in reach when the current one is not, or the reverse).
  if (!reachesAll(svc, ctx, input.type, ['r'])) {
    if (v.deleted || !(await visible(svc, ctx, svc.db.knex, ['r'], [{ resourceType: input.type, id: input.id, resource: v.resource, lastUpdated: v.lastUpdated, current: false }])).has(0)) throw notFound();
  }
  ctx.audit.resource(input.type, input.id, v.versionId, v.resource ? patientsOfResource(v.resource) : []);
  if (v.deleted) throw new FhirError('gone', `version ${input.vid} of ${input.type}/${input.id} is a deletion`);
  return { status: 200, headers: versionHeaders(ctx, v, false), body: v.resource && shapeResource(v.resource, shaping) };
}
