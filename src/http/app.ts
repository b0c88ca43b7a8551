// Express application: middleware and the routes table of https://hl7.org/fhir/R4/http.html.
// Handlers only translate HTTP <-> interaction inputs; interactions hold the behaviour.
import express, { type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import { randomUUID } from 'node:crypto';
import { audited, auditUnavailable, newTrail, recordRefused } from '../interactions/audit.js';
import { FhirError } from '../fhir/errors.js';
import { capabilities } from '../interactions/capabilities.js';
import { onlyOnce, parseIfMatch } from '../interactions/common.js';
import type { InteractionResult, PreferReturn, RequestContext, Services } from '../interactions/context.js';
import { create } from '../interactions/create.js';
import { conditionalDelete, remove } from '../interactions/delete.js';
import { history } from '../interactions/history.js';
import { conditionalPatch, patch } from '../interactions/patch.js';
import { read } from '../interactions/read.js';
import { search, searchCompartment, searchSystem } from '../interactions/search.js';
import { conditionalUpdate, update } from '../interactions/update.js';
import { vread } from '../interactions/vread.js';
import { transactionOrBatch } from '../interactions/transaction.js';
import { validateOperation } from '../operations/validate/validate.js';
import { ANONYMOUS, type Principal } from '../auth/principal.js';
import { smartConfiguration } from '../auth/smart-configuration.js';
import type { SmartAuthServer } from '../auth-server/index.js';
import type { AuditTrail } from '../audit/trail.js';
import { bodyKind, parseForm, parseJson, parseJsonPaced, type BodyKind } from './body.js';
import { toErrorResponse } from './errors.js';
import { requestDeadline } from './deadline.js';
import { negotiate, type Format } from './format.js';
import { respond, respondError } from './respond.js';

const REQUEST_ID = /^[A-Za-z0-9._-]{1,64}$/;
/** Bodies from this size on are parsed paced, ahead of the route (smaller ones parse in a few ms). */
const PACED_PARSE_BYTES = 1024 * 1024;

interface Locals {
  requestId: string;
  started: bigint;
  format?: Format;
  pairs: [string, string][];
  body?: Buffer;
}

function locals(res: Response): Locals {
  return res.locals as Locals;
}

function queryPairs(req: Request): [string, string][] {
  const q = req.originalUrl.indexOf('?');
  if (q < 0) return [];
  try {
    return [...new URLSearchParams(req.originalUrl.slice(q + 1))];
  } catch {
    throw new FhirError('invalid-request', 'the query string is malformed');
  }
}

function parsePrefer(header: string | undefined): { ret?: PreferReturn; handling?: 'strict' | 'lenient' } {
  const out: { ret?: PreferReturn; handling?: 'strict' | 'lenient' } = {};
  if (!header) return out;
  for (const part of header.split(/[,;]/)) {
    const [k, v] = part.split('=').map((s) => s?.trim().replace(/^"|"$/g, ''));
    if (k === 'return' && (v === 'minimal' || v === 'representation' || v === 'OperationOutcome')) out.ret = v;
    if (k === 'handling' && (v === 'strict' || v === 'lenient')) out.handling = v;
  }
  return out;
}

function corsMiddleware(origins: '*' | string[]): RequestHandler {
  const exposed = 'ETag, Location, Last-Modified, Content-Location, X-Request-Id, WWW-Authenticate, Retry-After';
  const allowedHeaders = 'Authorization, Content-Type, Accept, If-Match, If-None-Match, If-None-Exist, If-Modified-Since, Prefer, X-Request-Id';
  return (req, res, next) => {
    const origin = req.headers.origin;
    if (origin) {
      if (origins === '*') res.setHeader('Access-Control-Allow-Origin', '*');
      else if (origins.includes(origin)) {
        res.setHeader('Access-Control-Allow-Origin', origin);
        res.setHeader('Vary', 'Origin');
      }
      res.setHeader('Access-Control-Expose-Headers', exposed);
    }
    if (req.method === 'OPTIONS' && origin && req.headers['access-control-request-method']) {
      res.setHeader('Access-Control-Allow-Methods', 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
      res.setHeader('Access-Control-Allow-Headers', allowedHeaders);
      res.setHeader('Access-Control-Max-Age', '600');
      res.status(204).end();
      return;
    }
    next();
  };
}

export function createApp(svc: Services, opts: { authServer?: SmartAuthServer } = {}): express.Express {
  const { config, log } = svc;
  // Bodies parsed ahead by the paced parser (below), until the route asks for them.
  const preParsed = new WeakMap<Request, { value: unknown } | { error: unknown }>();
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('query parser', false);

  app.use((req, res, next) => {
    const given = req.headers['x-request-id'];
    const requestId = typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    res.locals.requestId = requestId;
    res.locals.started = process.hrtime.bigint();
    res.locals.pairs = [];
    res.setHeader('X-Request-Id', requestId);
    res.setHeader('X-Content-Type-Options', 'nosniff');
    res.setHeader('Cache-Control', 'no-store');
    res.on('finish', () => {
      const ms = Number(process.hrtime.bigint() - locals(res).started) / 1e6;
      // The route template, never the URL: ids and query values stay out of the logs.
      const route = (req.route as { path?: string } | undefined)?.path ?? 'unmatched';
      log.info({ requestId, method: req.method, route, status: res.statusCode, ms: Math.round(ms * 10) / 10 }, 'request');
    });
    next();
  });
  app.use(corsMiddleware(config.corsOrigins));

  app.get('/healthz', (_req, res) => {
    res.status(200).json({ status: 'ok' });
  });
  app.get('/readyz', async (_req, res) => {
    try {
      await svc.db.knex.raw('select 1');
      res.status(200).json({ status: 'ready' });
    } catch {
      res.status(503).json({ status: 'database unreachable' });
    }
  });

  const fhir = express.Router({ caseSensitive: true, strict: false });

  // Format negotiation and query parsing for every FHIR request.
  fhir.use((req, res, next) => {
    try {
      const pairs = queryPairs(req);
      locals(res).pairs = pairs;
      const get = (k: string) => pairs.find(([n]) => n === k)?.[1];
      const accept = req.headers.accept as string | undefined;
      locals(res).format = negotiate(typeof accept === 'string' ? accept : undefined, get('_format'), get('_pretty'));
      next();
    } catch (e) {
      next(e);
    }
  });
  // Bodies are read raw (bounded) and parsed per route, so error messages never echo content.
  fhir.use(express.raw({ type: () => true, limit: config.maxBodyBytes }));
  // After the body is read, so the rest of the request runs in the deadline's async context.
  fhir.use(requestDeadline(config.requestTimeoutMs));
  const context = (req: Request, res: Response, principal: Principal, trail: AuditTrail): RequestContext => {
    const prefer = parsePrefer(typeof req.headers.prefer === 'string' ? req.headers.prefer : undefined);
    const address = req.socket.remoteAddress;
    return {
      requestId: locals(res).requestId,
      principal,
      clock: () => new Date(),
      baseUrl: config.baseUrl,
      audit: trail,
      ...(address ? { address } : {}),
      ...(prefer.ret ? { preferReturn: prefer.ret } : {}),
      ...(prefer.handling ? { preferHandling: prefer.handling } : {}),
    };
  };

  /**
   * Parses a large JSON body ahead of the route, giving the event loop back between decoding, parsing
   * and checking (http/body.ts parseJsonPaced; each step takes a few hundred ms on 30 MB). Called once
   * the client is authenticated, so an anonymous request costs no parsing; the outcome, error
   * included, waits for the route's body() so errors are answered as before.
   */
  const preParse = async (req: Request): Promise<void> => {
    const buf = req.body as unknown;
    const ct = String(req.headers['content-type'] ?? '').toLowerCase();
    if (!Buffer.isBuffer(buf) || buf.length < PACED_PARSE_BYTES || !/^application\/(fhir\+json|json\+fhir|json|json-patch\+json)\s*(;|$)/.test(ct)) return;
    try {
      preParsed.set(req, { value: await parseJsonPaced(buf, config.maxBodyValues) });
    } catch (error) {
      preParsed.set(req, { error });
    }
  };
  const body = (req: Request, accepts: BodyKind[]): { kind: BodyKind; value: unknown } => {
    const buf = Buffer.isBuffer(req.body) ? (req.body as Buffer) : Buffer.alloc(0);
    if (buf.length === 0 && !req.headers['content-type']) return { kind: 'none', value: undefined };
    const kind = bodyKind(req.headers['content-type'], accepts);
    if (kind === 'form') return { kind, value: parseForm(buf) };
    const pre = preParsed.get(req);
    if (pre) {
      if ('error' in pre) throw pre.error;
      return { kind, value: pre.value };
    }
    return { kind, value: parseJson(buf, config.maxBodyValues) };
  };
  const resourceBody = (req: Request): unknown => {
    const b = body(req, ['fhir-json']);
    if (b.kind === 'none') throw new FhirError('invalid-resource', 'the request needs a resource body (application/fhir+json)');
    return b.value;
  };
  const patchBody = (req: Request): unknown => {
    const ct = String(req.headers['content-type'] ?? '').toLowerCase();
    if (ct.startsWith('application/fhir+json') || ct.startsWith('application/json+fhir')) {
      throw new FhirError('unsupported-media-type', 'FHIRPath Patch is not supported yet; send a JSON Patch (application/json-patch+json)');
    }
    const b = body(req, ['json-patch']);
    if (b.kind === 'none') throw new FhirError('invalid-request', 'the request needs a JSON Patch body (application/json-patch+json)');
    return b.value;
  };
  const header = (req: Request, name: string): string | undefined => {
    const v = req.headers[name.toLowerCase()];
    return typeof v === 'string' ? v : undefined;
  };
  const ifMatch = (req: Request) => parseIfMatch(header(req, 'If-Match'));
  const criteriaOf = (res: Response): string => {
    const pairs = locals(res).pairs.filter(([k]) => k !== '_format' && k !== '_pretty');
    if (!pairs.length) throw new FhirError('method-not-allowed', 'this method on a type needs search criteria (conditional interaction)');
    return new URLSearchParams(pairs).toString();
  };
  const params = (req: Request) => req.params as Record<string, string>;

  /**
   * Wraps an interaction: the principal from the bearer token (401 without a valid one, except on the
   * public capabilities interaction), context, audit, respond, errors. Authorization itself is decided
   * inside the interaction (interactions/authorize.ts), where Bundle entries and jobs pass too.
   */
  const handle =
    (interaction: string, run: (ctx: RequestContext, req: Request, res: Response) => Promise<InteractionResult>, opts: { public?: boolean } = {}): RequestHandler =>
    async (req, res) => {
      const format = locals(res).format ?? { mime: 'application/fhir+json', pretty: false };
      const trail = newTrail(interaction, params(req).type);
      let ctx = context(req, res, ANONYMOUS, trail);
      try {
        // The record names the verified principal once run() has authenticated it (anonymous when it could not).
        const result = await audited(svc, () => ctx, async () => {
          const principal = opts.public ? ANONYMOUS : await svc.auth.authenticate(header(req, 'Authorization'));
          if (!opts.public && principal.kind === 'anonymous') {
            throw new FhirError('unauthorized', 'this request needs a bearer token (Authorization: Bearer <token>)', { headers: { 'WWW-Authenticate': 'Bearer' } });
          }
          ctx = context(req, res, principal, trail);
          await preParse(req);
          return run(ctx, req, res);
        });
        respond(req, res, result, format);
      } catch (e) {
        respondError(res, toErrorResponse(e, log, ctx.requestId), format);
      }
    };

  const notAllowed =
    (allow: string): RequestHandler =>
    (req, _res, next) => {
      next(new FhirError('method-not-allowed', `${req.method} is not allowed here`, { headers: { Allow: allow } }));
    };

  fhir.route('/metadata').get(handle('capabilities', (ctx) => capabilities(svc, ctx), { public: true })).all(notAllowed('GET, HEAD'));
  // SMART discovery and the keys that verify Vesta's own tokens: public (smart-app-launch conformance).
  fhir
    .route('/.well-known/smart-configuration')
    .get((_req, res) => {
      res.setHeader('Cache-Control', 'public, max-age=300');
      res.status(200).json(smartConfiguration(svc.config.baseUrl, opts.authServer !== undefined));
    })
    .all(notAllowed('GET, HEAD'));
  if (opts.authServer) {
    const server = opts.authServer;
    // OpenID Connect discovery at the issuer (the FHIR base); oidc-provider answers it.
    fhir
      .route('/.well-known/openid-configuration')
      .get((req, res) => server.openidConfiguration(req, res))
      .all(notAllowed('GET, HEAD'));
  }
  fhir
    .route('/.well-known/jwks.json')
    .get((_req, res) => {
      res.setHeader('Cache-Control', 'public, max-age=300');
      res.status(200).type('application/jwk-set+json').send(JSON.stringify(svc.auth.publicKeys()));
    })
    .all(notAllowed('GET, HEAD'));
  fhir
    .route('/_history')
    .get(handle('history-system', (ctx, _req, res) => history(svc, ctx, { query: locals(res).pairs })))
    .all(notAllowed('GET, HEAD'));
  const formOf = (req: Request): [string, string][] => {
    const b = body(req, ['form']);
    return b.kind === 'form' ? (b.value as [string, string][]) : [];
  };
  fhir
    .route('/')
    .get(handle('search-system', (ctx, _req, res) => searchSystem(svc, ctx, { query: locals(res).pairs })))
    .post(handle('transaction', (ctx, req) => transactionOrBatch(svc, ctx, resourceBody(req))))
    .all(notAllowed('GET, HEAD, POST'));
  fhir
    .route('/_search')
    .post(handle('search-system', (ctx, req, res) => searchSystem(svc, ctx, { query: [...locals(res).pairs, ...formOf(req)] })))
    .all(notAllowed('POST'));
  fhir
    .route('/:type/_search')
    .post(
      handle('search-type', (ctx, req, res) => search(svc, ctx, { type: params(req).type, query: [...locals(res).pairs, ...formOf(req)] })),
    )
    .all(notAllowed('POST'));
  const validateBody = (req: Request): unknown => {
    const b = body(req, ['fhir-json']);
    if (b.kind === 'none') throw new FhirError('invalid-request', '$validate needs a resource or Parameters body (application/fhir+json)');
    return b.value;
  };
  fhir
    .route('/:type/$validate')
    .post(handle('operation:validate', (ctx, req) => validateOperation(svc, ctx, { type: params(req).type, body: validateBody(req) })))
    .all(notAllowed('POST'));
  fhir
    .route('/:type/:id/$validate')
    .post(handle('operation:validate', (ctx, req) => validateOperation(svc, ctx, { type: params(req).type, id: params(req).id, body: validateBody(req) })))
    .all(notAllowed('POST'));
  fhir
    .route('/:type/_history')
    .get(handle('history-type', (ctx, req, res) => history(svc, ctx, { type: params(req).type, query: locals(res).pairs })))
    .all(notAllowed('GET, HEAD'));
  fhir
    .route('/:type')
    .get(handle('search-type', (ctx, req, res) => search(svc, ctx, { type: params(req).type, query: locals(res).pairs })))
    .post(
      handle('create', (ctx, req) =>
        create(svc, ctx, {
          type: params(req).type,
          body: resourceBody(req),
          ...(header(req, 'If-None-Exist') !== undefined ? { ifNoneExist: header(req, 'If-None-Exist') } : {}),
        }),
      ),
    )
    .put(
      handle('update', (ctx, req, res) => {
        const criteria = criteriaOf(res);
        return conditionalUpdate(svc, ctx, { type: params(req).type, criteria, body: resourceBody(req), ...opt('ifMatch', ifMatch(req)) });
      }),
    )
    .patch(
      handle('patch', (ctx, req, res) => {
        const criteria = criteriaOf(res);
        return conditionalPatch(svc, ctx, { type: params(req).type, criteria, body: patchBody(req), ...opt('ifMatch', ifMatch(req)) });
      }),
    )
    .delete(
      handle('delete', (ctx, req, res) => {
        const criteria = criteriaOf(res);
        return conditionalDelete(svc, ctx, { type: params(req).type, criteria, ...opt('ifMatch', ifMatch(req)) });
      }),
    )
    .all(notAllowed('GET, HEAD, POST, PUT, PATCH, DELETE'));
  fhir
    .route('/:type/:id')
    .get(
      handle('read', (ctx, req, res) =>
        read(svc, ctx, {
          type: params(req).type,
          id: params(req).id,
          ...opt('ifNoneMatch', header(req, 'If-None-Match')),
          ...opt('ifModifiedSince', header(req, 'If-Modified-Since')),
          ...opt('summary', single(res, '_summary')),
          ...opt('elements', single(res, '_elements')),
        }),
      ),
    )
    .put(handle('update', (ctx, req) => update(svc, ctx, { type: params(req).type, id: params(req).id, body: resourceBody(req), ...opt('ifMatch', ifMatch(req)) })))
    .patch(handle('patch', (ctx, req) => patch(svc, ctx, { type: params(req).type, id: params(req).id, body: patchBody(req), ...opt('ifMatch', ifMatch(req)) })))
    .delete(handle('delete', (ctx, req) => remove(svc, ctx, { type: params(req).type, id: params(req).id, ...opt('ifMatch', ifMatch(req)) })))
    .all(notAllowed('GET, HEAD, PUT, PATCH, DELETE'));
  fhir
    .route('/:type/:id/_history')
    .get(handle('history-instance', (ctx, req, res) => history(svc, ctx, { type: params(req).type, id: params(req).id, query: locals(res).pairs })))
    .all(notAllowed('GET, HEAD'));
  fhir
    .route('/:type/:id/_history/:vid')
    .get(handle('vread', (ctx, req, res) => vread(svc, ctx, { type: params(req).type, id: params(req).id, vid: params(req).vid, ...opt('summary', single(res, '_summary')), ...opt('elements', single(res, '_elements')) })))
    .all(notAllowed('GET, HEAD'));

  fhir
    .route('/:compartment/:id/:type')
    .get(
      handle('search-compartment', (ctx, req, res) =>
        searchCompartment(svc, ctx, { compartment: params(req).compartment, id: params(req).id, type: params(req).type, query: locals(res).pairs }),
      ),
    )
    .all(notAllowed('GET, HEAD'));

  fhir.use((req, _res, next) => {
    next(new FhirError('unknown-route', `no FHIR interaction matches ${req.method} on this path`));
  });

  // The SMART authorization server (sign-in pages, OAuth endpoints) before the FHIR routes.
  if (opts.authServer) app.use(`${config.basePath}/auth`, opts.authServer.router);
  app.use(config.basePath || '/', fhir);
  app.use((req, _res, next) => next(new FhirError('unknown-route', 'not found')));

  // Errors raised outside interactions (body limits, negotiation, unknown routes).
  // Such a request never reached an interaction, yet it is recorded too (unauthenticated: the token
  // is not looked at), before the answer goes out.
  app.use(async (err: unknown, req: Request, res: Response, _next: NextFunction) => {
    const format = locals(res).format ?? { mime: 'application/fhir+json', pretty: false };
    const requestId = locals(res).requestId ?? 'unknown';
    let answer = err;
    try {
      await recordRefused(svc, { principal: ANONYMOUS, requestId, clock: () => new Date(), ...(req.socket.remoteAddress ? { address: req.socket.remoteAddress } : {}) }, err);
    } catch (e) {
      answer = auditUnavailable(log, requestId, e);
    }
    respondError(res, toErrorResponse(answer, log, requestId), format);
  });
  return app;
}

/** A query parameter that may appear at most once. */
function single(res: Response, name: string): string | undefined {
  return onlyOnce(locals(res).pairs, name);
}

function opt<K extends string, V>(k: K, v: V | undefined): { [P in K]?: V } {
  return (v === undefined ? {} : { [k]: v }) as { [P in K]?: V };
}
