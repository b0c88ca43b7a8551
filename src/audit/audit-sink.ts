// The audit seam (design.md "Audit ledger"): every interaction's result passes through audited(),
// the only producer of the Audited brand that http/respond.ts requires. The hash-chained ledger
// arrives with the audit issue as another AuditSink; today the sink writes a structured log record.
import type { Logger } from 'pino';

export interface AuditRecord {
  /** The FHIR interaction (restful-interaction code) or operation name. */
  interaction: string;
  resourceType?: string;
  requestId: string;
  principal: string;
  status: number;
  outcome: 'success' | 'failure';
  recorded: Date;
}

export interface AuditSink {
  record(entry: AuditRecord): Promise<void>;
}

/** Writes audit records to the structured log (no resource ids, no content). */
export class LogAuditSink implements AuditSink {
  constructor(private readonly log: Logger) {}

  async record(entry: AuditRecord): Promise<void> {
    this.log.info({ audit: { ...entry, recorded: entry.recorded.toISOString() } }, 'audit');
  }
}

declare const auditedBrand: unique symbol;
export type Audited<T> = T & { readonly [auditedBrand]: true };

export interface AuditSubject {
  interaction: string;
  resourceType?: string;
  requestId: string;
  principal: string;
  clock: () => Date;
}

/**
 * Runs an interaction and records its outcome, success or failure; the result is branded so that
 * the HTTP layer cannot send an unaudited result.
 */
export async function audited<T extends { status: number }>(
  sink: AuditSink,
  subject: AuditSubject,
  run: () => Promise<T>,
): Promise<Audited<T>> {
  // Read when recording: the principal is known only once the token has been verified inside run().
  const base = () => ({
    interaction: subject.interaction,
    ...(subject.resourceType ? { resourceType: subject.resourceType } : {}),
    requestId: subject.requestId,
    principal: subject.principal,
  });
  let result: T;
  try {
    result = await run();
  } catch (e) {
    const status = typeof (e as { status?: unknown }).status === 'number' ? (e as { status: number }).status : 500;
    await sink.record({ ...base(), status, outcome: 'failure', recorded: subject.clock() });
    throw e;
  }
  await sink.record({ ...base(), status: result.status, outcome: result.status < 400 ? 'success' : 'failure', recorded: subject.clock() });
  return result as Audited<T>;
}
