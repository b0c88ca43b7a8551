// $validate at type and instance level (https://hl7.org/fhir/R4/resource-operation-validate.html):
// always 200 with an OperationOutcome listing every issue; nothing is stored.
import type { Parameters, Resource } from 'fhir/r4.js';
import { FhirError, type Issue } from '../../fhir/errors.js';
import { operationOutcome } from '../../fhir/outcome.js';
import { requireId, requireType } from '../../interactions/common.js';
import type { InteractionResult, RequestContext, Services } from '../../interactions/context.js';
import { allow, currentWithinReach } from '../../interactions/authorize.js';
import { usableTypes } from '../../auth/access.js';

export const VALIDATE_DEFINITION = 'http://hl7.org/fhir/OperationDefinition/Resource-validate';

type Mode = 'create' | 'update' | 'delete' | undefined;

function unwrap(body: unknown): { resource?: unknown; mode: Mode } {
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw new FhirError('invalid-request', '$validate needs a resource or a Parameters body');
  const b = body as Record<string, unknown>;
  if (b.resourceType !== 'Parameters') return { resource: body, mode: undefined };
  const raw = (body as Parameters).parameter;
  // The body is client input of any shape: each assumption is checked so a bad one is a 400, not a TypeError.
  if (raw !== undefined && !Array.isArray(raw)) throw new FhirError('invalid-request', 'Parameters.parameter must be an array');
  const params = (raw ?? []) as unknown[];
  let resource: unknown;
  let mode: Mode;
  params.forEach((x, i) => {
    if (!x || typeof x !== 'object' || Array.isArray(x)) throw new FhirError('invalid-request', `Parameters.parameter[${i}] must be an object`);
    const p = x as Record<string, unknown>;
    if (typeof p.name !== 'string' || p.name === '') throw new FhirError('invalid-request', `Parameters.parameter[${i}] needs a name`);
    if (p.name === 'resource') {
      if (resource !== undefined) throw new FhirError('invalid-request', 'the resource parameter may appear only once');
      if (!p.resource || typeof p.resource !== 'object' || Array.isArray(p.resource)) {
        throw new FhirError('invalid-request', `Parameters.parameter[${i}].resource must be a resource (a JSON object)`);
      }
      resource = p.resource;
    } else if (p.name === 'mode') {
      const m = p.valueCode ?? p.valueString;
      if (m !== 'create' && m !== 'update' && m !== 'delete') throw new FhirError('invalid-request', 'mode must be create, update or delete');
      mode = m;
    } else if (p.name === 'profile') {
      throw new FhirError('unsupported-search', 'validation against a named profile is not supported; only the base R4 definitions');
    }
  });
  // A Parameters resource sent to Parameters/$validate is itself the subject.
  if (resource === undefined && mode === undefined && params.length === 0) return { resource: body, mode };
  return { ...(resource !== undefined ? { resource } : {}), mode };
}

export async function validateOperation(svc: Services, ctx: RequestContext, input: { type: string; id?: string; body: unknown }): Promise<InteractionResult> {
  requireType(input.type);
  if (input.id !== undefined) requireId(input.id);
  if (input.id !== undefined) ctx.audit.resource(input.type, input.id);
  const { resource, mode } = unwrap(input.body);
  const issues: Issue[] = [];
  // Authorization: validating for a delete is a delete question (d, and the resource within reach);
  // otherwise the token needs c or u on the type (interactions/authorize.ts).
  if (mode === 'delete') allow(ctx, input.type, 'd', '$validate mode=delete');
  else if (!usableTypes(ctx.principal, [input.type], 'c').length && !usableTypes(ctx.principal, [input.type], 'u').length) allow(ctx, input.type, 'c', '$validate (needs "c" or "u")');
  if (mode === 'delete') {
    if (input.id === undefined) throw new FhirError('invalid-request', 'mode=delete needs the instance level: [type]/[id]/$validate');
    const current = await svc.store.readCurrent(svc.db.knex, input.type, input.id);
    const reachable = current && !current.deleted && (await currentWithinReach(svc, ctx, svc.db.knex, 'd', input.type, input.id, current.resource, current.lastUpdated));
    if (!reachable) issues.push({ severity: 'error', code: 'not-found', diagnostics: `${input.type}/${input.id} does not exist` });
    return { status: 200, body: operationOutcome(issues) };
  }
  if (resource === undefined) throw new FhirError('invalid-request', '$validate needs a resource to validate');
  const r = resource as Partial<Resource>;
  if (r && typeof r === 'object' && r.resourceType !== input.type) {
    issues.push({ severity: 'error', code: 'invalid', diagnostics: `resourceType does not match the URL (${input.type})`, expression: [String(input.type)] });
  }
  if (mode === 'update') {
    if (!r || typeof r !== 'object' || typeof r.id !== 'string') issues.push({ severity: 'error', code: 'required', diagnostics: 'an update needs the resource id', expression: [`${input.type}.id`] });
    else if (input.id !== undefined && r.id !== input.id) issues.push({ severity: 'error', code: 'invalid', diagnostics: 'the resource id does not match the id in the URL', expression: [`${input.type}.id`] });
  }
  issues.push(...svc.validator.validate(resource));
  return { status: 200, body: operationOutcome(issues) };
}
