// The only writer of FHIR responses: status, headers and the JSON body in the negotiated format.
import type { Request, Response } from 'express';
import type { Resource } from 'fhir/r4.js';
import type { Audited } from '../interactions/audit.js';
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
  let text = JSON.stringify(body);
  // FHIR JSON forbids empty arrays and objects (json.html#json); a native substring test keeps the
  // usual response on the fast path, and the rare hit (or a string that merely holds "[]") is pruned.
  let value: unknown = body;
  if (text.includes('[]') || text.includes('{}')) {
    value = pruneEmpty(body);
    text = JSON.stringify(value);
  }
  res.end(format.pretty ? JSON.stringify(value, null, 2) : text);
}

function isEmpty(v: unknown): boolean {
  return v !== null && typeof v === 'object' && (Array.isArray(v) ? v.length === 0 : Object.keys(v).length === 0);
}

/**
 * A copy of a JSON value without empty arrays or objects, including those left empty by the pruning
 * itself. Post-order with an explicit stack: responses can nest deep and hold many entries.
 */
export function pruneEmpty(root: unknown): unknown {
  if (root === null || typeof root !== 'object') return root;
  type Node = { src: object; out: unknown[] | Record<string, unknown>; keys: (string | number)[]; at: number };
  const open = (src: object): Node => ({ src, out: Array.isArray(src) ? [] : {}, keys: Array.isArray(src) ? src.map((_x, i) => i) : Object.keys(src), at: 0 });
  const put = (n: Node, k: string | number, v: unknown) => {
    if (v === undefined || isEmpty(v)) return;
    if (Array.isArray(n.out)) n.out.push(v);
    else n.out[k as string] = v;
  };
  const stack: Node[] = [open(root)];
  for (;;) {
    const n = stack[stack.length - 1];
    if (n.at < n.keys.length) {
      const k = n.keys[n.at++];
      const v = (n.src as Record<string | number, unknown>)[k];
      // toJSON (Dates and the like) is honoured as JSON.stringify would.
      const j = v !== null && typeof v === 'object' && typeof (v as { toJSON?: unknown }).toJSON === 'function' ? (v as { toJSON(): unknown }).toJSON() : v;
      if (j !== null && typeof j === 'object') stack.push(open(j));
      else put(n, k, j);
      continue;
    }
    stack.pop();
    const parent = stack[stack.length - 1];
    if (!parent) return n.out;
    put(parent, parent.keys[parent.at - 1], n.out);
  }
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
