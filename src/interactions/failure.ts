// What a failed interaction was, as the FhirError it is answered with: the one classification shared
// by the HTTP answer (http/errors.ts) and the AuditEvent of the failure (interactions/audit.ts), so a
// record never says 500 where the client was told 503.
import { PhiIntegrityError } from '../crypto/jwe-codec.js';
import { FhirError, isFhirError } from '../fhir/errors.js';
import { RequestAborted, RetryExhausted, databaseUnavailable, isStatementTimeout, pgCode } from '../storage/db.js';

/** The FhirError an error is answered as, or undefined for an unexpected one (a 500). */
export function knownFailure(e: unknown): FhirError | undefined {
  if (isFhirError(e)) return e;
  if (e instanceof RetryExhausted) return new FhirError('retry-exhausted', 'the request conflicted with concurrent writes; retry it');
  if (e instanceof PhiIntegrityError) return new FhirError('integrity', 'the stored protected data of this resource failed its integrity check and was not returned');
  // The deadline's or the disconnect's own error (http/deadline.ts), not the cancelled statement's.
  if (e instanceof RequestAborted && isFhirError(e.reason)) return e.reason;
  if (isStatementTimeout(e)) return new FhirError('unavailable', 'the request exceeded the database statement timeout (DATABASE_STATEMENT_TIMEOUT_MS) and was cancelled; narrow the search');
  if (pgCode(e) === '57014') return new FhirError('unavailable', 'the database cancelled the statement');
  // An outage, a lost connection or an exhausted pool: the same request may succeed shortly.
  if (databaseUnavailable(e)) return new FhirError('unavailable', 'the database is unavailable; retry later', { headers: { 'Retry-After': '5' } });
  return undefined;
}
