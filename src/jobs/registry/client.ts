// A FHIR R4 client for one external immunization registry (issue 17, "The client"): the REST
// interactions through fhir-kit-client (https://hl7.org/fhir/R4/http.html), its token from SMART
// Backend Services (client_credentials + private_key_jwt, through openid-client), `next` links
// (https://hl7.org/fhir/R4/http.html#paging) followed only under the registry's own base, every request
// rate-limited and bounded in time, every failure one RegistryError. Nothing here logs or throws a
// token, the private key, a query value or resource content.
import type { KeyObject } from 'node:crypto';
import { createRequire } from 'node:module';
import { Client as FhirKitClient } from 'fhir-kit-client';
import { importJWK, type JWK } from 'jose';
import * as oidc from 'openid-client';
import type { Logger } from '../../log/logger.js';
import { TokenBucket, type RateLimit } from './rate-limit.js';

export type { RateLimit };

export type RegistryAuth =
  | { type: 'none' }
  | {
      type: 'backend-services';
      tokenUrl: string;
      clientId: string;
      /** The private key, as a JWK or a KeyObject (config.ts reads it so); held only inside the token source. */
      privateKey: JWK | KeyObject;
      /** The kid of the assertion's header; by default the JWK's. */
      kid?: string;
      alg: string;
      scope: string;
    };

export interface RegistryClientOptions {
  id: string;
  baseUrl: string;
  auth: RegistryAuth;
  requestTimeoutMs: number;
  rateLimit: RateLimit;
  /** `_count` of searches that do not set it. */
  pageSize: number;
  log: Logger;
  /** Wall clock (ms) for token lifetimes and Retry-After dates; tests fix it. */
  now?: () => number;
}

export interface Resource {
  resourceType: string;
  id?: string;
  meta?: { versionId?: string; lastUpdated?: string; source?: string };
  [element: string]: unknown;
}

export interface OperationOutcome extends Resource {
  resourceType: 'OperationOutcome';
  issue: { severity: string; code: string; diagnostics?: string; [element: string]: unknown }[];
}

export interface BundleLink {
  relation: string;
  url: string;
}

export interface SearchBundle extends Resource {
  resourceType: 'Bundle';
  type: string;
  total?: number;
  link?: BundleLink[];
  entry?: { fullUrl?: string; resource?: Resource; search?: { mode?: string } }[];
}

/** What a write answered: `created` is a 201 (a conditional create that matched, or an update, is 200). */
export interface WriteResult {
  status: number;
  created: boolean;
  /** The registry's copy, when it sent one back. */
  resource?: Resource;
  location?: string;
  versionId?: string;
}

/** Search parameters or criteria: a query string without `?`, or name -> value(s). */
export type Query = string | Record<string, string | number | (string | number)[]>;

export interface CallOptions {
  /** Stops waiting (rate limit, token, request); the call rejects with the signal's reason. */
  signal?: AbortSignal;
}

export type RegistryErrorCode = 'http' | 'timeout' | 'network' | 'malformed' | 'foreign-next-link' | 'auth';

export interface RegistryErrorDetails {
  /** The HTTP status (code 'http', and 'auth' when the token endpoint gave one). */
  status?: number;
  /** From Retry-After (seconds or an HTTP date). */
  retryAfterMs?: number;
  /** The registry's OperationOutcome, as sent: the job keeps it with the rejected record. */
  outcome?: OperationOutcome;
  /** The token endpoint's OAuth error code (code 'auth'). */
  oauthError?: string;
  /** The host a refused `next` link pointed to (code 'foreign-next-link'). */
  host?: string;
}

/** Every failure of a registry call. Messages name the registry, the interaction and the type, never a value. */
export class RegistryError extends Error {
  readonly status?: number;
  readonly retryAfterMs?: number;
  declare readonly outcome?: OperationOutcome;
  readonly oauthError?: string;
  readonly host?: string;

  constructor(
    readonly code: RegistryErrorCode,
    readonly registry: string,
    message: string,
    details: RegistryErrorDetails = {},
  ) {
    super(`registry ${registry}: ${message}`);
    this.name = 'RegistryError';
    const { outcome, ...rest } = details;
    Object.assign(this, rest);
    // Not enumerable: its diagnostics may repeat what was sent, and logging `{ err }` copies enumerable fields.
    if (outcome) Object.defineProperty(this, 'outcome', { value: outcome, enumerable: false });
  }
}

type Interaction = 'read' | 'search' | 'next-page' | 'conditional-create' | 'conditional-update' | 'delete' | 'request';

const TYPE = /^[A-Z][A-Za-z]{1,63}$/;
const ID = /^[A-Za-z0-9\-.]{1,64}$/;
const OAUTH_ERROR = /^[\x21\x23-\x5b\x5d-\x7e]{1,64}$/;

// fhir-kit-client prints every URL with its query and the registry's answers when DEBUG names its
// namespaces; an operator debugging something else must not get query values and PHI on stderr.
{
  const debug = createRequire(import.meta.url)('debug') as { disable(): string; enable(namespaces: string): void };
  const current = debug.disable();
  debug.enable([current, '-fhir-kit-client:*'].filter(Boolean).join(','));
}

function typeOf(type: string): string {
  if (!TYPE.test(type)) throw new TypeError('a resource type must be like Immunization');
  return type;
}

function idOf(id: string): string {
  if (!ID.test(id)) throw new TypeError('a resource id must be 1-64 characters of A-Z a-z 0-9 - .');
  return id;
}

function queryString(q: Query): string {
  if (typeof q === 'string') return q.replace(/^\?/, '');
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) for (const one of Array.isArray(v) ? v : [v]) p.append(k, String(one));
  return p.toString();
}

function queryRecord(q: Query): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of new URLSearchParams(queryString(q))) {
    const had = out[k];
    out[k] = had === undefined ? v : [...(Array.isArray(had) ? had : [had]), v];
  }
  return out;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isOutcome(v: unknown): v is OperationOutcome {
  return isObject(v) && v.resourceType === 'OperationOutcome' && Array.isArray(v.issue);
}

function isSearchBundle(v: unknown): v is SearchBundle {
  if (!isObject(v) || v.resourceType !== 'Bundle' || typeof v.type !== 'string') return false;
  if (v.link !== undefined && !(Array.isArray(v.link) && v.link.every((l) => isObject(l) && typeof l.relation === 'string' && typeof l.url === 'string'))) return false;
  return v.entry === undefined || (Array.isArray(v.entry) && v.entry.every((e) => isObject(e) && (e.resource === undefined || (isObject(e.resource) && typeof e.resource.resourceType === 'string'))));
}

/** Retry-After (https://www.rfc-editor.org/rfc/rfc9110#field.retry-after) in ms from `now`; undefined when absent or unreadable. */
export function retryAfterMs(value: string | null | undefined, now: number): number | undefined {
  if (!value) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

function causeCode(e: unknown): string {
  let c: unknown = e;
  for (let i = 0; i < 4 && isObject(c); i++) {
    const code = (c as { code?: unknown }).code;
    if (typeof code === 'string' && /^[A-Z0-9_]{2,40}$/.test(code)) return code;
    c = (c as { cause?: unknown }).cause;
  }
  return 'no detail';
}

// By name, not instanceof: fetch's errors come from Node's own realm, which differs under test VMs.
function isFetchFailure(e: unknown): boolean {
  return isObject(e) && e.name === 'TypeError' && e.message === 'fetch failed';
}

function isResponse(v: unknown): v is Response {
  return isObject(v) && typeof v.status === 'number' && isObject(v.headers) && typeof v.headers.get === 'function';
}

/** Rejects with the signal's reason when it aborts first. */
function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/** A SMART Backend Services access token, cached until shortly before it expires. */
class BackendServicesToken {
  private cached?: { token: string; refreshAt: number };
  private pending?: Promise<string>;
  private readonly configuration: () => Promise<oidc.Configuration>;
  private readonly tokenHost: string;
  private readonly scope: string;

  constructor(
    private readonly registry: string,
    auth: Extract<RegistryAuth, { type: 'backend-services' }>,
    timeoutMs: number,
    private readonly now: () => number,
    private readonly log: Logger,
  ) {
    const tokenUrl = new URL(auth.tokenUrl);
    this.tokenHost = tokenUrl.host;
    this.scope = auth.scope;
    let built: Promise<oidc.Configuration> | undefined;
    // The key lives in this closure only: logging or inspecting the client never shows it.
    this.configuration = () =>
      (built ??= (async () => {
        let key: oidc.CryptoKey;
        let kid = auth.kid;
        try {
          const k = auth.privateKey;
          const jwk = 'export' in k && typeof k.export === 'function' ? (k as KeyObject).export({ format: 'jwk' }) : (k as JWK);
          kid ??= typeof jwk.kid === 'string' ? jwk.kid : undefined;
          key = (await importJWK(jwk, auth.alg)) as oidc.CryptoKey;
        } catch {
          throw new RegistryError('auth', registry, `the private key is not a ${auth.alg} private key`);
        }
        // The token endpoint may have no discovery document: its URL is all the metadata needed.
        const config = new oidc.Configuration(
          { issuer: tokenUrl.href, token_endpoint: tokenUrl.href },
          auth.clientId,
          undefined,
          // SMART Backend Services wants aud = the token URL; openid-client puts the issuer there.
          oidc.PrivateKeyJwt({ key, ...(kid ? { kid } : {}) }, { [oidc.modifyAssertion]: (_header, payload) => void (payload.aud = tokenUrl.href) }),
        );
        // Plain http is allowed by the registry configuration on loopback hosts only.
        if (tokenUrl.protocol === 'http:') oidc.allowInsecureRequests(config);
        config.timeout = timeoutMs / 1000;
        return config;
      })());
  }

  /** The cached token, or a new one (one request however many callers wait for it). */
  get(): Promise<string> {
    if (this.cached && this.now() < this.cached.refreshAt) return Promise.resolve(this.cached.token);
    this.pending ??= this.fetch().finally(() => (this.pending = undefined));
    return this.pending;
  }

  /** Forgets `token` (the registry refused it); a token fetched meanwhile is kept. */
  drop(token: string): void {
    if (this.cached?.token === token) this.cached = undefined;
  }

  private async fetch(): Promise<string> {
    const config = await this.configuration();
    let tr: oidc.TokenEndpointResponse;
    try {
      tr = await oidc.clientCredentialsGrant(config, { scope: this.scope });
    } catch (e) {
      throw this.translate(e);
    }
    const ttl = typeof tr.expires_in === 'number' && tr.expires_in > 0 ? tr.expires_in : undefined;
    // Used until 60 s before expiry; a token living under two minutes until half its life, so it is
    // still cached at all. Without expires_in it is used until the registry refuses it.
    const refreshAt = ttl === undefined ? Infinity : this.now() + (ttl - Math.min(60, ttl / 2)) * 1000;
    this.cached = { token: tr.access_token, refreshAt };
    this.log.info({ registry: this.registry, expiresIn: ttl ?? null }, 'registry access token obtained');
    return tr.access_token;
  }

  private translate(e: unknown): RegistryError {
    const r = this.registry;
    if (e instanceof oidc.ClientError && e.code === 'OAUTH_TIMEOUT') return new RegistryError('timeout', r, `the token endpoint at ${this.tokenHost} did not answer in time`);
    if (isFetchFailure(e)) return new RegistryError('network', r, `network error reaching the token endpoint at ${this.tokenHost} (${causeCode(e)})`);
    let status: number | undefined;
    let oauthError: string | undefined;
    let headers: Headers | undefined;
    if (e instanceof oidc.ResponseBodyError) {
      ({ status, error: oauthError } = e);
      headers = e.response.headers;
    } else if (e instanceof oidc.WWWAuthenticateChallengeError) {
      status = e.status;
      oauthError = e.cause.find((c) => c.parameters.error)?.parameters.error;
      headers = e.response.headers;
    } else if (e instanceof oidc.ClientError && isResponse(e.cause)) {
      status = e.cause.status;
      headers = e.cause.headers;
    }
    if (status !== undefined && (status >= 500 || status === 429)) {
      return new RegistryError('http', r, `the token endpoint answered ${status}`, { status, retryAfterMs: retryAfterMs(headers?.get('retry-after'), this.now()) });
    }
    if (status !== undefined && status >= 400) {
      const code = oauthError && OAUTH_ERROR.test(oauthError) ? oauthError : undefined;
      return new RegistryError('auth', r, `the token endpoint refused the client (${status}${code ? ` ${code}` : ''})`, { status, ...(code ? { oauthError: code } : {}) });
    }
    return new RegistryError('malformed', r, 'the token endpoint did not answer with an OAuth token response');
  }
}

/** A client for one registry; safe for concurrent calls. */
export class RegistryClient {
  readonly id: string;
  private readonly base: URL;
  private readonly basePath: string;
  private readonly fhir: FhirKitClient;
  private readonly tokens?: BackendServicesToken;
  private readonly bucket: TokenBucket;
  private readonly timeoutMs: number;
  private readonly pageSize: number;
  private readonly log: Logger;
  private readonly now: () => number;

  constructor(opts: RegistryClientOptions) {
    this.id = opts.id;
    this.base = new URL(opts.baseUrl.replace(/\/+$/, ''));
    if (this.base.search || this.base.hash) throw new TypeError(`registry ${opts.id}: the base URL must have no query or fragment`);
    this.basePath = this.base.pathname.replace(/\/+$/, '');
    this.fhir = new FhirKitClient({ baseUrl: `${this.base.origin}${this.basePath}` });
    this.timeoutMs = opts.requestTimeoutMs;
    this.pageSize = opts.pageSize;
    this.log = opts.log;
    this.now = opts.now ?? Date.now;
    this.bucket = new TokenBucket(opts.rateLimit);
    if (opts.auth.type === 'backend-services') this.tokens = new BackendServicesToken(opts.id, opts.auth, opts.requestTimeoutMs, this.now, opts.log);
  }

  /** read: GET [base]/[type]/[id]. */
  async read(type: string, id: string, o: CallOptions = {}): Promise<Resource> {
    const t = typeOf(type);
    const path = `${t}/${idOf(id)}`;
    const res = await this.send('read', t, o, (options) => this.fhir.request(path, { options }));
    if (!isObject(res) || res.resourceType !== t) throw new RegistryError('malformed', this.id, `read ${t} answered something other than a ${t}`);
    return res as Resource;
  }

  /** search: GET [base]/[type]?params, the first page (`_count` = the page size unless given). */
  async search(type: string, params: Query = {}, o: CallOptions = {}): Promise<SearchBundle> {
    const t = typeOf(type);
    const searchParams = { _count: String(this.pageSize), ...queryRecord(params) };
    return this.bundle('search', t, await this.send('search', t, o, (options) => this.fhir.search({ resourceType: t, searchParams, options })));
  }

  /**
   * The page after `bundle`, or undefined on the last page. The `next` link is followed only on the
   * registry's origin under its base path: anything else is a 'foreign-next-link' error and no request.
   */
  async nextPage(bundle: SearchBundle, o: CallOptions = {}): Promise<SearchBundle | undefined> {
    const url = this.nextLink(bundle);
    if (url === undefined) return undefined;
    const only = { resourceType: 'Bundle', link: [{ relation: 'next', url }] };
    return this.bundle('next-page', 'Bundle', await this.send('next-page', 'Bundle', o, (options) => this.fhir.nextPage({ bundle: only, options })!));
  }

  /** Conditional create (https://hl7.org/fhir/R4/http.html#ccreate): POST with If-None-Exist; 200 when a match exists. */
  async conditionalCreate(resource: Resource, ifNoneExist: Query, o: CallOptions = {}): Promise<WriteResult> {
    const t = typeOf(resource.resourceType);
    const criteria = queryString(ifNoneExist);
    if (!criteria) throw new TypeError('a conditional create needs criteria');
    return this.written(t, await this.send('conditional-create', t, o, (options) => this.fhir.create({ resourceType: t, body: resource, options: { ...options, headers: { ...options.headers, 'if-none-exist': criteria } } })));
  }

  /** Conditional update (https://hl7.org/fhir/R4/http.html#cond-update): PUT [base]/[type]?criteria. */
  async conditionalUpdate(type: string, criteria: Query, resource: Resource, o: CallOptions = {}): Promise<WriteResult> {
    const t = typeOf(type);
    if (resource.resourceType !== t) throw new TypeError(`the resource is not a ${t}`);
    const searchParams = queryRecord(criteria);
    if (!Object.keys(searchParams).length) throw new TypeError('a conditional update needs criteria');
    return this.written(t, await this.send('conditional-update', t, o, (options) => this.fhir.update({ resourceType: t, searchParams, body: resource, options })));
  }

  /** delete: DELETE [base]/[type]/[id]. A 404 or 410 is success too: the resource is gone either way (http.html#delete). */
  async delete(type: string, id: string, o: CallOptions = {}): Promise<{ status: number }> {
    const t = typeOf(type);
    const path = `${t}/${idOf(id)}`;
    try {
      const res = await this.send('delete', t, o, (options) => this.fhir.request(path, { method: 'DELETE', options }));
      return { status: FhirKitClient.httpFor(res).response?.status ?? 200 };
    } catch (e) {
      if (e instanceof RegistryError && e.code === 'http' && (e.status === 404 || e.status === 410)) return { status: e.status };
      throw e;
    }
  }

  /** Any other interaction, at a path relative to the base (`Patient/1/_history`, `metadata`). */
  async request(method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, r: { query?: Query; body?: Resource; headers?: Record<string, string> } & CallOptions = {}): Promise<Resource> {
    const url = new URL(path.replace(/^\/+/, ''), `${this.base.origin}${this.basePath}/`);
    if (/^[a-z][a-z0-9+.-]*:|^\/\//i.test(path) || !this.underBase(url)) throw new TypeError('a registry request path must be relative to its base and stay under it');
    const q = r.query === undefined ? '' : queryString(r.query);
    url.search = q;
    const type = /^[A-Z][A-Za-z]+/.exec(path.replace(/^\/+/, ''))?.[0] ?? 'system';
    const headers = { ...r.headers, ...(r.body ? { 'content-type': 'application/fhir+json' } : {}) };
    return this.send('request', type, r, (options) => this.fhir.request(url.href, { method, body: r.body, options: { ...options, headers: { ...options.headers, ...headers } } }));
  }

  private underBase(url: URL): boolean {
    return url.pathname === this.basePath || url.pathname.startsWith(`${this.basePath}/`);
  }

  /** The next link of a page as an absolute URL under the base, undefined when there is none. */
  private nextLink(bundle: SearchBundle): string | undefined {
    const link = bundle.link?.find((l) => l.relation === 'next');
    if (!link) return undefined;
    let url: URL;
    try {
      // Links should be absolute (bundle.html#links); a relative one is read against the base.
      url = new URL(link.url, `${this.base.origin}${this.basePath}/`);
    } catch {
      throw new RegistryError('malformed', this.id, 'a next link is not a URL');
    }
    const sameOrigin = url.protocol === this.base.protocol && url.host === this.base.host && !url.username && !url.password;
    if (!sameOrigin) throw new RegistryError('foreign-next-link', this.id, `a next link points to ${url.host || url.protocol}, not to the registry; not followed`, { host: url.host || url.protocol });
    if (!this.underBase(url)) {
      throw new RegistryError('foreign-next-link', this.id, `a next link points outside the registry's base path on ${url.host}; not followed`, { host: url.host });
    }
    url.hash = '';
    return url.href;
  }

  private bundle(interaction: Interaction, type: string, res: unknown): SearchBundle {
    if (!isSearchBundle(res)) throw new RegistryError('malformed', this.id, `${interaction} ${type} answered something other than a FHIR Bundle`);
    return res;
  }

  private written(type: string, res: Resource): WriteResult {
    const response = FhirKitClient.httpFor(res).response;
    const status = response?.status ?? 200;
    // An empty body (Prefer ignored, or minimal) is fine; any other resource type is not this write's answer.
    if (!isObject(res) || (res.resourceType !== undefined && res.resourceType !== type && !isOutcome(res))) throw new RegistryError('malformed', this.id, `a write of ${type} answered something other than a ${type} or an OperationOutcome`);
    const resource = res.resourceType === type ? res : undefined;
    const etag = /^(?:W\/)?"([^"]+)"$/.exec(response?.headers.get('etag') ?? '')?.[1];
    const location = response?.headers.get('location') ?? response?.headers.get('content-location') ?? undefined;
    const versionId = etag ?? resource?.meta?.versionId;
    return { status, created: status === 201, ...(resource ? { resource } : {}), ...(location ? { location } : {}), ...(versionId ? { versionId } : {}) };
  }

  /**
   * One interaction: a rate-limit turn, the token, then the request within requestTimeoutMs. A 401
   * drops the token and tries once more with a new one.
   */
  private async send(interaction: Interaction, type: string, o: CallOptions, call: (options: { signal: AbortSignal; redirect: 'manual'; headers: Record<string, string> }) => Promise<unknown>): Promise<Resource> {
    for (let attempt = 1; ; attempt++) {
      await this.bucket.take(o.signal);
      const started = performance.now();
      let token: string | undefined;
      let deadline: AbortSignal | undefined;
      try {
        // The token fetch is shared by its waiters and bounded by its own requestTimeoutMs: a waiter
        // that timed out on its own would leave the next caller joining a fetch about to fail.
        if (this.tokens) token = await (o.signal ? abortable(this.tokens.get(), o.signal) : this.tokens.get());
        deadline = AbortSignal.timeout(this.timeoutMs);
        const signal = o.signal ? AbortSignal.any([deadline, o.signal]) : deadline;
        const headers: Record<string, string> = { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(interaction.startsWith('conditional-') ? { prefer: 'return=representation' } : {}) };
        // redirect 'manual': a redirect is an answer, never a second request carrying the token elsewhere.
        const res = (await call({ signal, redirect: 'manual', headers })) as Resource;
        this.log.debug({ registry: this.id, interaction, type, status: FhirKitClient.httpFor(res).response?.status, ms: Math.round(performance.now() - started) }, 'registry request');
        return res;
      } catch (e) {
        const err = this.translate(e, interaction, type, deadline, o.signal);
        const ms = Math.round(performance.now() - started);
        if (err instanceof RegistryError && err.status === 401 && err.code === 'http' && token && attempt === 1) {
          this.tokens!.drop(token);
          this.log.info({ registry: this.id, interaction, type, status: 401, ms }, 'registry refused its access token; fetching a new one');
          continue;
        }
        this.log.debug({ registry: this.id, interaction, type, ...(err instanceof RegistryError ? { code: err.code, status: err.status } : {}), ms }, 'registry request failed');
        throw err;
      }
    }
  }

  private translate(e: unknown, interaction: Interaction, type: string, deadline: AbortSignal | undefined, caller?: AbortSignal): unknown {
    if (e instanceof RegistryError) return e;
    if (deadline?.aborted) return new RegistryError('timeout', this.id, `${interaction} ${type} got no answer within ${this.timeoutMs} ms`);
    if (caller?.aborted) return caller.reason;
    if (isFetchFailure(e)) return new RegistryError('network', this.id, `${interaction} ${type}: network error reaching ${this.base.host} (${causeCode(e)})`);
    // fhir-kit-client's errors carry the status and body; their message holds the URL with its query, so it is not used.
    const failed = e as { response?: { status?: unknown; data?: unknown }; config?: { headers?: unknown } };
    const status = failed?.response?.status;
    if (typeof status !== 'number') {
      // fhir-kit-client decorates the parsed body; a JSON null, number or string makes that throw.
      if (isObject(e) && e.name === 'TypeError' && /non-object/.test(String(e.message))) return new RegistryError('malformed', this.id, `${interaction} ${type} answered JSON that is not a FHIR resource`);
      return e;
    }
    if (status >= 200 && status < 300) return new RegistryError('malformed', this.id, `${interaction} ${type} answered ${status} with a body that is not JSON`);
    const data = failed.response?.data;
    const h = failed.config?.headers;
    const headers = isObject(h) && typeof h.get === 'function' ? (h as unknown as Headers) : undefined;
    const outcome = isOutcome(data) ? data : undefined;
    const codes = outcome ? [...new Set(outcome.issue.map((i) => i.code).filter((c) => typeof c === 'string' && /^[a-z-]{1,40}$/.test(c)))].slice(0, 5) : [];
    return new RegistryError('http', this.id, `${interaction} ${type} answered ${status}${codes.length ? ` (${codes.join(', ')})` : ''}`, {
      status,
      retryAfterMs: retryAfterMs(headers?.get('retry-after'), this.now()),
      ...(outcome ? { outcome } : {}),
    });
  }
}
