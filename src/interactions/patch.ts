// patch: PATCH [base]/[type]/[id] with a JSON Patch document (RFC 6902;
// https://hl7.org/fhir/R4/http.html#patch), and conditional patch PATCH [base]/[type]?criteria.
import { refuseLedgerChange } from './audit-event-create.js';
import type { Resource } from 'fhir/r4.js';
import jsonpatch from 'fast-json-patch';
import { findBadString } from '../fhir/strings.js';
import { FhirError } from '../fhir/errors.js';
import type { AuditedTx } from '../storage/resource-store.js';
import { auditedTransaction } from './audit.js';
import { checkResourceShape } from '../validation/shape.js';
import { requireId, requireType, writeResult, type IfMatch } from './common.js';
import { lockAndMatch, matchScope } from './conditional.js';
import type { InteractionResult, RequestContext, Services } from './context.js';
import { checkIfMatch, prepareVersion, writeNext } from './write.js';
import { allow, visibleHead } from './authorize.js';

type Operation = jsonpatch.Operation;

const OPS = new Set(['add', 'remove', 'replace', 'move', 'copy', 'test']);
const FORBIDDEN_SEGMENTS = new Set(['__proto__', 'constructor', 'prototype']);

function checkPointer(p: unknown, field: string, i: number): void {
  if (typeof p !== 'string' || (p !== '' && !p.startsWith('/'))) {
    throw new FhirError('invalid-request', `patch operation ${i}: "${field}" must be a JSON Pointer`);
  }
  for (const seg of p.split('/')) {
    if (FORBIDDEN_SEGMENTS.has(seg.replace(/~1/g, '/').replace(/~0/g, '~'))) {
      throw new FhirError('invalid-request', `patch operation ${i}: "${field}" names a forbidden member`);
    }
  }
}

/** Checks that the body is a well-formed RFC 6902 document. */
export function checkPatchDocument(body: unknown): Operation[] {
  if (!Array.isArray(body)) throw new FhirError('invalid-request', 'a JSON Patch document must be an array of operations');
  if (body.length === 0) throw new FhirError('invalid-request', 'the JSON Patch document has no operations');
  body.forEach((op: unknown, i) => {
    if (!op || typeof op !== 'object' || Array.isArray(op)) throw new FhirError('invalid-request', `patch operation ${i} is not an object`);
    const o = op as Record<string, unknown>;
    if (typeof o.op !== 'string' || !OPS.has(o.op)) throw new FhirError('invalid-request', `patch operation ${i}: unknown op`);
    checkPointer(o.path, 'path', i);
    if ((o.op === 'move' || o.op === 'copy')) checkPointer(o.from, 'from', i);
    if ((o.op === 'add' || o.op === 'replace' || o.op === 'test') && !('value' in o)) {
      throw new FhirError('invalid-request', `patch operation ${i}: "${o.op}" needs a value`);
    }
    // A Binary-wrapped patch in a Bundle never passed the body reader's string checks.
    const bad = 'value' in o ? findBadString(o.value, `operation ${i} value`) : undefined;
    if (bad) throw new FhirError('invalid-request', `patch ${bad.path} contains ${bad.problem}, which cannot be stored`);
  });
  return body as Operation[];
}

function applyTo(current: Resource, ops: Operation[]): unknown {
  const doc = structuredClone(current);
  try {
    return jsonpatch.applyPatch(doc, ops, true, true, true).newDocument;
  } catch (e) {
    const name = (e as { name?: string }).name;
    if (name === 'TEST_OPERATION_FAILED') throw new FhirError('unprocessable', 'a JSON Patch "test" operation failed');
    throw new FhirError('unprocessable', 'the JSON Patch cannot be applied to the current resource (a path does not exist)');
  }
}

async function patchIn(svc: Services, ctx: RequestContext, tx: AuditedTx, type: string, id: string, ops: Operation[], ifMatch: IfMatch | undefined): Promise<InteractionResult> {
  const head = await visibleHead(svc, ctx, tx, 'u', type, id, await svc.store.lockCurrent(tx, type, id));
  if (!head) throw new FhirError('not-found', `${type}/${id} is not known`);
  if (head.deleted) throw new FhirError('gone', `${type}/${id} was deleted`);
  checkIfMatch(type, id, head, ifMatch);
  const current = await svc.store.readCurrent(tx, type, id);
  if (!current?.resource) throw new FhirError('conflict', 'the resource changed during the request');
  const patched = checkResourceShape(applyTo(current.resource, ops), type);
  if (patched.id !== id) throw new FhirError('unprocessable', 'a patch may not change the resource id');
  const v = await writeNext(svc, ctx, tx, head, 'PATCH', type, id, await prepareVersion(svc, ctx, type, id, patched, head.versionId + 1));
  return writeResult(ctx, 200, v, `patched ${type}/${id}`, true);
}

export async function patch(svc: Services, ctx: RequestContext, input: { type: string; id: string; body: unknown; ifMatch?: IfMatch }): Promise<InteractionResult> {
  requireType(input.type);
  requireId(input.id);
  refuseLedgerChange(input.type, 'patch');
  allow(ctx, input.type, 'u', 'patch');
  const ops = checkPatchDocument(input.body);
  return auditedTransaction(svc, ctx, (tx) => patchIn(svc, ctx, tx, input.type, input.id, ops, input.ifMatch));
}

export async function conditionalPatch(svc: Services, ctx: RequestContext, input: { type: string; criteria: string; body: unknown; ifMatch?: IfMatch }): Promise<InteractionResult> {
  requireType(input.type);
  refuseLedgerChange(input.type, 'conditional patch', 'GET, HEAD, POST');
  allow(ctx, input.type, 'u', 'conditional patch');
  const ops = checkPatchDocument(input.body);
  const scope = matchScope(svc, ctx, input.type, 'conditional patch');
  return auditedTransaction(svc, ctx, async (tx) => {
    const matches = await lockAndMatch(tx, input.type, input.criteria, svc.store.phiIndexMode, scope);
    if (matches.length > 1) throw new FhirError('multiple-matches', 'the criteria match more than one resource');
    if (matches.length === 0) throw new FhirError('not-found', 'no resource matches the criteria');
    return patchIn(svc, ctx, tx, input.type, matches[0], ops, input.ifMatch);
  });
}
