// The audit path of the interaction layer (issue 16; design.md "every interaction is audited, and it
// is hard to forget"). Two ways in, and no way around them:
// - audited(): runs an interaction (an HTTP request, a Bundle entry, a job's step) and returns its
//   result branded Audited, the only type http/respond.ts and a Bundle's response entries accept. A
//   result whose record was not appended in a write transaction is recorded here, before it is
//   returned (group commit, durable when the promise resolves); a failure is recorded after the
//   rollback, then rethrown.
// - auditedTransaction(): the only maker of the AuditedTx that storage's write methods require. It
//   appends the interaction's record in the write's own transaction, so a change never commits
//   without it; every version storage writes is reported to the trail (resource, version, patients).
import type { AuditEvent } from 'fhir/r4.js';
import type { Logger } from 'pino';
import { FhirError } from '../fhir/errors.js';
import { knownFailure } from './failure.js';
import type { AuditOrigin } from '../audit/auditor.js';
import { jobPrincipal } from '../auth/principal.js';
import { patientsOfVersion } from '../audit/patients.js';
import { AuditTrail } from '../audit/trail.js';
import { AUDIT_SCOPE, type AuditedTx, type WriteRecorder } from '../storage/resource-store.js';
import { withTransaction, type Tx } from '../storage/db.js';
import { due, pause } from '../fhir/pacer.js';
import type { InteractionResult, RequestContext, Services } from './context.js';

declare const auditedBrand: unique symbol;
/** A result whose AuditEvent is in the ledger (or committing with its write). */
export type Audited<T> = T & { readonly [auditedBrand]: true };

/** HTTP status of an error, as the client is answered (interactions/failure.ts; 500 for anything unexpected). */
export function statusOf(e: unknown): number {
  const known = knownFailure(e);
  if (known) return known.status;
  // Express's own errors (a body over the limit) carry their status.
  const s = (e as { status?: unknown })?.status;
  return typeof s === 'number' && s >= 400 && s <= 599 ? s : 500;
}

/** A short description of a failure without PHI: the error code, never the message. */
export function failureOf(e: unknown): string {
  return knownFailure(e)?.code ?? 'internal error';
}

/** The context of one Bundle entry: its own trail (deferred in a transaction), the Bundle's request. */
export function entryContext(ctx: RequestContext, interaction: string, type: string | undefined, deferred: boolean): RequestContext {
  return { ...ctx, audit: ctx.audit.entry(interaction, type, deferred) };
}

/** A fresh trail for a request or job step. */
export function newTrail(interaction: string, resourceType?: string): AuditTrail {
  return new AuditTrail(interaction, resourceType);
}

/**
 * Runs an interaction and makes sure it leaves exactly one record (plus one per entry of a Bundle),
 * success or failure, before its result or error goes on.
 */
export async function audited(svc: Services, ctx: () => RequestContext, run: () => Promise<InteractionResult>): Promise<Audited<InteractionResult>> {
  let result: InteractionResult;
  try {
    result = await run();
  } catch (e) {
    const c = ctx();
    try {
      await recordFailure(svc, c, e);
    } catch (appendError) {
      throw auditUnavailable(svc.log, c.requestId, appendError);
    }
    throw e;
  }
  const c = ctx();
  if (!c.audit.recorded) {
    // Entries record themselves (batch) or with the Bundle's write (transaction); this is a backstop.
    const events = [...c.audit.entries.filter((t) => !t.recorded).map((t) => svc.audit.event(c, t, result.status)), svc.audit.event(c, c.audit, result.status)];
    try {
      await svc.audit.appendNow(events);
    } catch (appendError) {
      throw auditUnavailable(svc.log, c.requestId, appendError);
    }
    c.audit.recorded = true;
  }
  return result as Audited<InteractionResult>;
}

/** Records a request refused before it reached an interaction (body limit, negotiation, unknown route). */
export async function recordRefused(svc: Services, origin: AuditOrigin, e: unknown): Promise<void> {
  await svc.audit.appendNow([svc.audit.event(origin, new AuditTrail('request:refused'), statusOf(e), failureOf(e))]);
}

/**
 * The answer when a record cannot be appended: the interaction's result is withheld (a response
 * without its record would be an unaudited access), the client is told to retry.
 */
export function auditUnavailable(log: Logger, requestId: string, e: unknown): FhirError {
  log.error({ requestId, err: { message: (e as Error)?.message, code: (e as { code?: unknown })?.code } }, 'audit record could not be appended; response withheld');
  return new FhirError('unavailable', 'the audit ledger could not record this request; nothing was returned (retry later)', { headers: { 'Retry-After': '5' } });
}

/** Records a failed interaction (and the entries of a rolled-back Bundle that left no record). */
async function recordFailure(svc: Services, ctx: RequestContext, e: unknown): Promise<void> {
  const status = statusOf(e);
  const description = failureOf(e);
  const events: AuditEvent[] = [];
  for (const t of ctx.audit.entries) {
    if (due()) await pause();
    // A transaction's entries committed nothing: each one's record says it was rolled back.
    if (!t.recorded) events.push(svc.audit.event(ctx, t, status, `rolled back with the Bundle: ${description}`));
  }
  if (!ctx.audit.recorded) events.push(svc.audit.event(ctx, ctx.audit, status, description));
  // A record that was appended in the rolled-back transaction is gone with it: record again.
  ctx.audit.recorded = true;
  await svc.audit.appendNow(events);
}

/** Reports every version storage writes to the trail, with the patients whose compartment holds it. */
export function trailRecorder(trail: AuditTrail): WriteRecorder {
  return {
    wrote(v) {
      trail.resource(v.resourceType, v.id, v.versionId, patientsOfVersion(v));
    },
  };
}

/**
 * Runs `fn` in a database transaction whose writes are audited: storage reports each version to the
 * trail, and the record is appended in the same transaction once `fn` has its result. Retried as a
 * whole (withTransaction), the trail is reset per attempt. For the entries of a transaction Bundle
 * (deferred trails) the Bundle appends the records with its own, in its transaction.
 */
export async function auditedTransaction<T extends InteractionResult>(
  svc: Services,
  ctx: RequestContext,
  fn: (tx: AuditedTx) => Promise<T>,
  opts?: { retryOnUniqueViolation?: boolean; recorder?: WriteRecorder },
): Promise<T>;
export async function auditedTransaction<T>(
  svc: Services,
  ctx: RequestContext,
  fn: (tx: AuditedTx) => Promise<T>,
  opts: { retryOnUniqueViolation?: boolean; recorder?: WriteRecorder; records: (result: T) => Promise<AuditEvent[]> },
): Promise<T>;
export async function auditedTransaction<T>(
  svc: Services,
  ctx: RequestContext,
  fn: (tx: AuditedTx) => Promise<T>,
  opts: { retryOnUniqueViolation?: boolean; recorder?: WriteRecorder; records?: (result: T) => Promise<AuditEvent[]> } = {},
): Promise<T> {
  const trail = ctx.audit;
  return withTransaction(
    svc.db.knex,
    async (tx: Tx) => {
      trail.reset();
      const atx = withRecorder(tx, opts.recorder ?? trailRecorder(trail));
      const result = await fn(atx);
      if (!trail.deferred) {
        const events = opts.records ? await opts.records(result) : [svc.audit.event(ctx, trail, (result as InteractionResult).status)];
        await svc.audit.appendInTx(tx, events);
      }
      return result;
    },
    opts.retryOnUniqueViolation ? { retryOnUniqueViolation: true } : {},
  ).then((r) => {
    if (!trail.deferred) {
      trail.recorded = true;
      for (const t of trail.entries) t.recorded = true;
    }
    return r;
  });
}

/**
 * The results of a transaction Bundle's entries, once auditedTransaction has appended their records
 * with the Bundle's write (they are then as audited as any single interaction's result).
 */
export function recordedEntries(ctx: RequestContext, results: InteractionResult[]): Audited<InteractionResult>[] {
  if (!ctx.audit.recorded || ctx.audit.entries.some((t) => !t.recorded)) throw new Error('Bundle entries answered without their audit records');
  return results as Audited<InteractionResult>[];
}

/**
 * The record of one step of a background job (a re-seal batch, a re-index batch), appended in the
 * step's own transaction: the job as agent, the resources it rewrote as entities.
 */
export async function recordJobStep(
  svc: Pick<Services, 'audit'>,
  tx: Tx,
  job: { name: string; runId: string; scope: string },
  touched: { type: string; id: string; version?: number }[],
  description: string,
): Promise<void> {
  const trail = new AuditTrail(`job:${job.name}`);
  for (const r of touched) trail.resource(r.type, r.id, r.version);
  const origin = { principal: jobPrincipal(job.name, job.scope), requestId: job.runId, clock: () => new Date() };
  await svc.audit.appendInTx(tx, [svc.audit.event(origin, trail, 200, description)]);
}

/** The transaction, marked with the recorder storage reports its writes to. */
function withRecorder(tx: Tx, recorder: WriteRecorder): AuditedTx {
  (tx as unknown as Record<symbol, unknown>)[AUDIT_SCOPE] = recorder;
  return tx as AuditedTx;
}
