// The only writer of FHIR responses: status, headers and the JSON body in the negotiated format.
import type { Request, Response } from 'express';
import type { Resource } from 'fhir/r4.js';
import type { Audited } from '../audit/audit-sink.js';
import type { InteractionResult } from '../interactions/context.js';
import type { ErrorResponse } from './errors.js';
import type { Format } from './format.js';

function send(res: Response, status: number, headers: Record<string, string>, body: Resource | undefined, format: Format): void {
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  res.status(status);
  if (body === undefined || status === 204 || status === 304) {
    res.end();
    return;
  }
  res.setHeader('Content-Type', `${format.mime}; charset=utf-8`);
  res.end(format.pretty ? JSON.stringify(body, null, 2) : JSON.stringify(body));
}

/** Sends an audited interaction result. */
export function respond(_req: Request, res: Response, result: Audited<InteractionResult>, format: Format): void {
  send(res, result.status, result.headers ?? {}, result.body, format);
}

/** Sends an error OperationOutcome. */
export function respondError(res: Response, err: ErrorResponse, format: Format): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  send(res, err.status, err.headers, err.body, format);
}
