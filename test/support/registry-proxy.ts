// A fault-injecting HTTP proxy in front of a test registry (issue 17's fault tests): it forwards every
// request to its target, unless a queued fault answers instead (a status), delays it, drops the
// connection, or rewrites the target's answer. It records what it saw, never a header's value.
import { createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export type Fault =
  /** Answer with this status (and headers and JSON body) without forwarding. */
  | { kind: 'status'; status: number; headers?: Record<string, string>; body?: unknown }
  /** Forward after `ms`; a client that gives up meanwhile cancels it. */
  | { kind: 'delay'; ms: number }
  /** Close the connection without an answer. */
  | { kind: 'drop' }
  /** Forward, then replace the answer's body with `body(text)`. */
  | { kind: 'rewrite'; body: (text: string) => string };

/** Which requests a fault applies to: FHIR requests (default), token requests, or a path pattern. */
export type Target = 'fhir' | 'token' | RegExp;

export interface Seen {
  method: string;
  /** The path without its query. */
  path: string;
  /** Whether the request carried an Authorization header. */
  authorized: boolean;
  status: number;
  fault?: Fault['kind'];
}

interface Queued {
  fault: Fault;
  left: number;
  on: Target;
}

const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'host', 'accept-encoding', 'proxy-connection', 'upgrade']);

function isToken(path: string): boolean {
  return path.endsWith('/auth/token');
}

function matches(on: Target, path: string): boolean {
  return on === 'fhir' ? !isToken(path) && !path.includes('/auth/') && !path.includes('/.well-known/') : on === 'token' ? isToken(path) : on.test(path);
}

function forwardable(h: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined && !HOP.has(k)) out[k] = v;
  return out;
}

function readAll(stream: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
  });
}

export class RegistryProxy {
  /** Every request, in arrival order. */
  readonly seen: Seen[] = [];
  /** Every distinct Authorization header value seen (for leak checks). */
  readonly authorizations = new Set<string>();
  /** Where requests go: set once the target listens (it may need the proxy's URL first). */
  target?: string;
  private faults: Queued[] = [];
  private readonly timers = new Set<NodeJS.Timeout>();

  private constructor(
    private readonly server: Server,
    readonly url: string,
  ) {}

  static async start(): Promise<RegistryProxy> {
    let proxy: RegistryProxy | undefined;
    const server = createServer((req, res) => void proxy!.handle(req, res).catch(() => res.destroy()));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    proxy = new RegistryProxy(server, `http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    return proxy;
  }

  /** Applies `fault` to the next `times` matching requests (after faults queued earlier are used up). */
  inject(fault: Fault, o: { times?: number; on?: Target } = {}): void {
    this.faults.push({ fault, left: o.times ?? 1, on: o.on ?? 'fhir' });
  }

  /** Answers the next `times` FHIR requests with `status` and an OperationOutcome. */
  failNext(times: number, status = 503, headers: Record<string, string> = {}): void {
    const body = { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: status === 429 ? 'throttled' : status === 401 ? 'login' : 'transient', diagnostics: `injected ${status}` }] };
    this.inject({ kind: 'status', status, headers, body }, { times });
  }

  /** Rewrites the `next` link of the next matching Bundle with `rewrite(url)`. */
  rewriteNextLink(rewrite: (url: URL) => string, times = 1): void {
    this.inject(
      {
        kind: 'rewrite',
        body: (text) => {
          const b = JSON.parse(text) as { link?: { relation: string; url: string }[] };
          for (const l of b.link ?? []) if (l.relation === 'next') l.url = rewrite(new URL(l.url));
          return JSON.stringify(b);
        },
      },
      { times },
    );
  }

  /** Forgets the faults not used yet. */
  clearFaults(): void {
    this.faults = [];
  }

  /** Requests seen whose path ends with `suffix` (e.g. '/auth/token'). */
  count(suffix: string, method?: string): number {
    return this.seen.filter((s) => s.path.endsWith(suffix) && (!method || s.method === method)).length;
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }

  private take(path: string): Fault | undefined {
    const q = this.faults.find((f) => f.left > 0 && matches(f.on, path));
    if (!q) return undefined;
    q.left--;
    this.faults = this.faults.filter((f) => f.left > 0);
    return q.fault;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', this.url).pathname;
    const body = await readAll(req);
    const fault = this.take(path);
    const seen: Seen = { method: req.method ?? 'GET', path, authorized: req.headers.authorization !== undefined, status: 0, ...(fault ? { fault: fault.kind } : {}) };
    this.seen.push(seen);
    if (req.headers.authorization) this.authorizations.add(req.headers.authorization);
    if (fault?.kind === 'drop') {
      req.socket.destroy();
      return;
    }
    if (fault?.kind === 'status') {
      seen.status = fault.status;
      const text = fault.body === undefined ? '' : JSON.stringify(fault.body);
      res.writeHead(fault.status, { ...(text ? { 'content-type': 'application/fhir+json' } : {}), ...fault.headers }).end(text);
      return;
    }
    if (fault?.kind === 'delay') {
      const gone = await new Promise<boolean>((resolve) => {
        const t = setTimeout(() => {
          this.timers.delete(t);
          resolve(false);
        }, fault.ms);
        this.timers.add(t);
        res.once('close', () => {
          clearTimeout(t);
          this.timers.delete(t);
          resolve(true);
        });
      });
      if (gone) return;
    }
    if (!this.target) throw new Error('the proxy has no target yet');
    const upstream = await new Promise<IncomingMessage>((resolve, reject) => {
      const u = new URL(req.url ?? '/', this.target);
      const out = httpRequest(u, { method: req.method, headers: { ...forwardable(req.headers), 'content-length': String(body.length) } }, resolve);
      out.on('error', reject);
      out.end(body);
    });
    let answer = await readAll(upstream);
    if (fault?.kind === 'rewrite') answer = Buffer.from(fault.body(answer.toString('utf8')));
    seen.status = upstream.statusCode ?? 0;
    if (res.destroyed) return;
    res.writeHead(upstream.statusCode ?? 502, { ...forwardable(upstream.headers), 'content-length': String(answer.length) }).end(answer);
  }
}
