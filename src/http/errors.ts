// The only translator of errors into status + OperationOutcome. Unknown errors become a 500 with
// no stack, SQL or content in the body; the details go to the log (without PHI).
import type { OperationOutcome } from 'fhir/r4.js';
import type { Logger } from 'pino';
import { ERROR_CATALOGUE, FhirError, isFhirError } from '../fhir/errors.js';
import { operationOutcome, outcomeId } from '../fhir/outcome.js';
import { PhiIntegrityError } from '../crypto/jwe-codec.js';
import { knownFailure } from '../interactions/failure.js';

export interface ErrorResponse {
  status: number;
  body: OperationOutcome;
  headers: Record<string, string>;
}

/** Errors from Express's own body reader and the like. */
function fromHttpError(e: unknown): FhirError | undefined {
  const t = (e as { type?: unknown })?.type;
  const status = (e as { status?: unknown })?.status;
  if (t === 'entity.too.large' || status === 413) return new FhirError('too-large', 'the request body exceeds the configured maximum size');
  if (t === 'request.aborted') return new FhirError('invalid-request', 'the request was aborted by the client');
  if (t === 'encoding.unsupported' || t === 'charset.unsupported') return new FhirError('unsupported-media-type', 'unsupported content encoding or charset');
  if (t === 'request.size.invalid') return new FhirError('invalid-request', 'the request size does not match its Content-Length');
  if (typeof status === 'number' && status === 400) return new FhirError('invalid-request', 'the request is malformed');
  return undefined;
}

export function toErrorResponse(e: unknown, log: Logger, requestId: string): ErrorResponse {
  let err: FhirError | undefined = isFhirError(e) ? e : fromHttpError(e);
  if (!err && e instanceof PhiIntegrityError) {
    // Audit-worthy: someone moved or altered sealed PHI, or a key is missing. Ids, not content.
    log.error(
      { requestId, event: 'phi-integrity-failure', resourceType: e.ref.resourceType, id: e.ref.id, versionId: e.ref.versionId, kid: e.kid },
      'sealed PHI failed its integrity check; the resource was not returned',
    );
    err = new FhirError('integrity', `the stored protected data of this resource failed its integrity check and was not returned (request ${requestId})`);
  }
  err ??= knownFailure(e);
  if (!err) {
    const x = e as { message?: string; stack?: string; code?: string; name?: string };
    // pg puts row values in `detail`; only the message, code and stack are logged.
    log.error({ requestId, err: { name: x?.name, code: x?.code, message: x?.message, stack: x?.stack } }, 'unhandled error');
    err = new FhirError('internal', `internal server error (request ${requestId})`);
  } else if (err.status >= 500) {
    log.warn({ requestId, code: err.code }, err.message);
  }
  const entry = ERROR_CATALOGUE[err.code];
  const issues = [{ severity: 'error' as const, code: entry.issue, diagnostics: err.message }, ...err.issues];
  const headers = { ...err.headers };
  if (err.code === 'method-not-allowed' && err.headers.Allow) headers.Allow = err.headers.Allow;
  return { status: entry.status, body: operationOutcome(issues, outcomeId(err.code, entry.status)), headers };
}
