// Per-request deadline and cancellation (design.md "The interaction chokepoint": every request is
// bounded, nothing a request starts may outlive it). Each FHIR request runs under an AbortSignal that
// fires when REQUEST_TIMEOUT_MS passes or the client goes away before its response was sent;
// storage/db.ts then starts no further query for it and cancels the running one in PostgreSQL.
import type { RequestHandler } from 'express';
import { FhirError } from '../fhir/errors.js';
import { runWithSignal } from '../storage/db.js';

/** Middleware placed after the body is read: the rest of the request runs in the signal's scope. */
export function requestDeadline(timeoutMs: number): RequestHandler {
  return (_req, res, next) => {
    const ac = new AbortController();
    const timer =
      timeoutMs > 0
        ? setTimeout(() => ac.abort(new FhirError('unavailable', `the request did not finish within its time limit of ${timeoutMs} ms (REQUEST_TIMEOUT_MS); its database work was cancelled`)), timeoutMs)
        : undefined;
    timer?.unref();
    // 'close' also follows a completed response; only an unfinished one means the client left.
    res.once('close', () => {
      clearTimeout(timer);
      if (!res.writableFinished) ac.abort(new FhirError('invalid-request', 'the client closed the connection before the response was sent'));
    });
    runWithSignal(ac.signal, () => next());
  };
}
