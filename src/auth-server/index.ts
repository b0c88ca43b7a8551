// Vesta's SMART authorization server, mounted at [base]/auth (SMART App Launch 2.x, Backend
// Services, RFC 6749/7636/7523/7009/7662, OpenID Connect Core). oidc-provider (provider.ts) runs the
// OAuth protocol; this module adds what SMART needs around it: the sign-in pages (login, patient
// picker, consent), EHR launch contexts, the launch context in the token response, introspection
// and revocation of the JWT access tokens, and the bridge that revokes a grant's access tokens.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import express, { type NextFunction, type Request, type Response } from 'express';
import { decodeJwt } from 'jose';
import type Provider from 'oidc-provider';
import type { KoaContextWithOIDC } from 'oidc-provider';
import type { Services, RequestContext } from '../interactions/context.js';
import { search } from '../interactions/search.js';
import { read } from '../interactions/read.js';
import { audited, newTrail } from '../interactions/audit.js';
import type { Principal } from '../auth/principal.js';
import { parseScopes } from '../auth/scopes.js';
import { isFhirError } from '../fhir/errors.js';
import { smartEndpoints } from '../auth/smart-configuration.js';
import { artifactsOfGrant, consumeArtifact, destroyArtifactsOfGrant, findArtifact, pruneArtifacts, upsertArtifact } from '../storage/auth-store.js';
import { buildProvider, clientScopes, csrfKey, type SmartContext } from './provider.js';
import { NON_CLINICAL_SCOPES } from './clients.js';
import { narrowScopes } from './smart-scopes.js';
import { UserDirectory } from './users.js';
import { consentPage, describeScope, loginPage, messagePage, pickerPage, type PatientRow } from './pages.js';

/** An EHR launch context (kind SmartLaunch): what `launch=<id>` resolves to. */
interface LaunchRecord {
  patient?: string;
  encounter?: string;
  fhirContext?: unknown[];
  needPatientBanner?: boolean;
  clientId?: string;
  createdBy: string;
}

const LAUNCH_TTL_S = 300;
const PICK_TTL_S = 900;
const FHIR_ID = /^[A-Za-z0-9\-.]{1,64}$/;

export type SmartEndpoints = ReturnType<typeof smartEndpoints>;

export class SmartAuthServer {
  readonly provider: Provider;
  readonly router: express.Router;
  readonly endpoints: SmartEndpoints;
  readonly users: UserDirectory;
  private readonly pending = new Set<Promise<unknown>>();
  private readonly csrf: Buffer;
  private readonly fhirBase: string;
  private readonly authBase: string;
  private pruneTimer: NodeJS.Timeout | undefined;

  /** Builds the server (oidc-provider is loaded here, see provider.ts). */
  static async create(svc: Services): Promise<SmartAuthServer> {
    const authBase = `${svc.config.baseUrl}/auth`;
    // The adapter's grant-revocation hook needs the server, which needs the provider.
    const holder: { server?: SmartAuthServer } = {};
    const provider = await buildProvider({
      issuer: svc.config.baseUrl,
      fhirBase: svc.config.baseUrl,
      authBase,
      ring: svc.auth.signingRing(),
      db: svc.db.knex,
      hooks: { onGrantRevoked: (grantId) => holder.server!.revokeGrantTokens(grantId) },
      log: svc.log,
      userTokenTtlSeconds: svc.config.authTokenTtlSeconds,
      backendTokenTtlSeconds: svc.config.authBackendTokenTtlSeconds,
      refreshTokenTtlSeconds: svc.config.authRefreshTokenTtlSeconds,
      sessionTtlSeconds: svc.config.authSessionTtlSeconds,
      allowLoopbackJwksUri: svc.config.authJwksUriLoopback,
    });
    holder.server = new SmartAuthServer(svc, provider);
    return holder.server;
  }

  private constructor(
    private readonly svc: Services,
    provider: Provider,
  ) {
    const { config } = svc;
    this.fhirBase = config.baseUrl;
    this.authBase = `${config.baseUrl}/auth`;
    const ring = svc.auth.signingRing();
    this.csrf = csrfKey(ring);
    this.users = new UserDirectory(svc.db.knex, {
      maxPerUser: config.authLoginMaxFailures,
      maxPerAddress: config.authLoginMaxFailuresAddress,
      windowMs: config.authLoginWindowMs,
    });
    this.endpoints = smartEndpoints(config.baseUrl);
    this.provider = provider;
    this.wireProvider();
    this.router = this.buildRouter();
    this.pruneTimer = setInterval(() => {
      void pruneArtifacts(svc.db.knex).catch(() => undefined);
      void this.users.prune().catch(() => undefined);
    }, 3600_000);
    this.pruneTimer.unref();
  }

  close(): void {
    if (this.pruneTimer) clearInterval(this.pruneTimer);
  }

  /** Revokes every access token issued under a grant (refresh-token reuse, code reuse, revocation). */
  async revokeGrantTokens(grantId: string): Promise<void> {
    await this.flush();
    const rows = await artifactsOfGrant(this.svc.db.knex, grantId);
    let n = 0;
    for (const r of rows) {
      if (r.kind !== 'IssuedAccessToken') continue;
      const exp = Number(r.payload.exp);
      if (exp * 1000 > Date.now()) {
        await this.svc.auth.revocations.revoke(r.id, new Date(exp * 1000));
        n++;
      }
    }
    this.svc.log.info({ event: 'grant.revoked', grantId, accessTokensRevoked: n }, 'authorization grant revoked');
  }

  private async flush(): Promise<void> {
    while (this.pending.size) await Promise.allSettled([...this.pending]);
  }

  private track(p: Promise<unknown>): void {
    const t = p.catch((e: unknown) => this.svc.log.error({ err: { message: (e as Error)?.message } }, 'recording an issued token failed'));
    this.pending.add(t);
    void t.finally(() => this.pending.delete(t));
  }

  private wireProvider(): void {
    const { provider, svc } = this;
    const log = svc.log;
    // Access tokens are JWTs nothing stores; their ids are kept per grant so that revoking the grant
    // (reuse of a refresh token or a code) revokes them too.
    provider.on('access_token.issued', (token: { jti: string; grantId?: string; exp?: number; expiration?: number; clientId?: string }) => {
      if (!token.grantId) return;
      // A JWT access token has no stored exp at this point; its lifetime is the configured one.
      const exp = token.exp ?? Math.floor(Date.now() / 1000) + (token.expiration ?? svc.config.authTokenTtlSeconds);
      this.track(upsertArtifact(svc.db.knex, 'IssuedAccessToken', token.jti, { exp, client: token.clientId }, token.grantId, undefined, new Date(exp * 1000)));
    });
    provider.on('grant.success', (ctx: KoaContextWithOIDC) => {
      log.info({ event: 'token.issued', grantType: ctx.oidc.params?.grant_type, clientId: ctx.oidc.client?.clientId, account: ctx.oidc.account?.accountId }, 'token issued');
    });
    provider.on('grant.error', (ctx: KoaContextWithOIDC, err: { error?: string; error_description?: string }) => {
      log.warn({ event: 'token.refused', grantType: ctx.oidc.params?.grant_type, clientId: ctx.oidc.client?.clientId, error: err.error, reason: err.error_description }, 'token refused');
    });
    provider.on('authorization.error', (ctx: KoaContextWithOIDC, err: { error?: string; error_description?: string }) => {
      log.warn({ event: 'authorization.refused', clientId: ctx.oidc?.client?.clientId, error: err.error, reason: err.error_description }, 'authorization refused');
    });
    provider.on('server_error', (_ctx: unknown, err: Error) => {
      log.error({ event: 'auth.server_error', err: { message: err?.message, stack: err?.stack } }, 'authorization server error');
    });
    // The token response carries the launch context (SMART App Launch "Launch context arrives with
    // your access_token"), read back from the access token just signed; no-store and no-cache.
    provider.use(async (ctx, next) => {
      await next();
      if (ctx.path === '/.well-known/openid-configuration' && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
        // Vesta's own endpoints, which oidc-provider does not know about.
        Object.assign(ctx.body as Record<string, unknown>, { introspection_endpoint: this.endpoints.introspect, revocation_endpoint: this.endpoints.revoke, jwks_uri: this.endpoints.jwks });
        return;
      }
      if (ctx.path !== '/token' || ctx.method !== 'POST') return;
      ctx.set('Cache-Control', 'no-store');
      ctx.set('Pragma', 'no-cache');
      const body = ctx.body as Record<string, unknown> | undefined;
      const issued = ctx.status === 200 && body && typeof body.access_token === 'string' ? decodeJwt(body.access_token) : undefined;
      // Every token issued or refused is recorded before the answer leaves (issue 16).
      const requestId = (ctx.res as unknown as { locals?: { requestId?: string } }).locals?.requestId;
      await this.record('auth:token', {
        clientId: ctx.oidc?.client?.clientId ?? (typeof ctx.oidc?.params?.client_id === 'string' ? ctx.oidc.params.client_id : undefined),
        user: typeof issued?.sub === 'string' && issued.sub !== ctx.oidc?.client?.clientId ? issued.sub : undefined,
        status: ctx.status,
        description: issued ? `issued (${String(ctx.oidc?.params?.grant_type ?? 'token')})` : typeof body?.error === 'string' ? body.error : 'refused',
        address: ctx.req.socket.remoteAddress,
        tokenId: typeof issued?.jti === 'string' ? issued.jti : undefined,
        requestId,
      });
      if (!issued || !body) return;
      await this.flush();
      for (const k of ['patient', 'encounter', 'fhirContext', 'need_patient_banner'] as const) if (issued[k] !== undefined) body[k] = issued[k];
    });
  }

  /**
   * Appends the AuditEvent of an authorization-server event (sign-in, token, revocation, launch),
   * durable when it resolves. The user is named by account; never a password or a token, only its jti.
   */
  async record(
    interaction: 'auth:login' | 'auth:token' | 'auth:revoke' | 'auth:launch',
    o: { clientId?: string | undefined; user?: string | undefined; status: number; description?: string; address?: string | undefined; tokenId?: string | undefined; requestId?: string | undefined },
  ): Promise<void> {
    const principal: Principal = {
      kind: 'token',
      clientId: o.clientId ?? 'unknown',
      ...(o.user ? { subject: o.user } : {}),
      ...(o.tokenId ? { tokenId: o.tokenId } : {}),
      scope: '',
      grants: [],
    };
    const origin = { principal, requestId: o.requestId ?? randomBytes(8).toString('hex'), clock: () => new Date(), ...(o.address ? { address: o.address } : {}) };
    await this.svc.audit.appendNow([this.svc.audit.event(origin, newTrail(interaction), o.status, o.description)]);
  }

  private csrfToken(uid: string): string {
    return createHmac('sha256', this.csrf).update(uid).digest('base64url');
  }

  private checkCsrf(uid: string, given: unknown): boolean {
    if (typeof given !== 'string') return false;
    const a = Buffer.from(given);
    const b = Buffer.from(this.csrfToken(uid));
    return a.length === b.length && timingSafeEqual(a, b);
  }

  private buildRouter(): express.Router {
    const r = express.Router({ caseSensitive: true, strict: false });
    const form = express.urlencoded({ extended: false, limit: '16kb', parameterLimit: 100 });
    const json = express.json({ limit: '64kb', strict: true, type: ['application/json', 'application/fhir+json'] });
    const canonical = new URL(this.authBase);
    const callback = this.provider.callback();
    const toProvider = (req: Request, res: Response) => {
      // oidc-provider builds its URLs from the request; make them the configured public ones.
      req.headers['x-forwarded-host'] = canonical.host;
      req.headers['x-forwarded-proto'] = canonical.protocol.slice(0, -1);
      delete req.headers['x-forwarded-for'];
      void callback(req, res);
    };
    const page = (res: Response, status: number, html: string) => {
      res.status(status).type('html').setHeader('Cache-Control', 'no-store');
      // No form-action: browsers apply it to the redirects after a form post too, and the consent
      // form's answer ends in a redirect to the app's own origin.
      res.setHeader('Content-Security-Policy', "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'");
      res.setHeader('X-Frame-Options', 'DENY');
      res.send(html);
    };
    const wrap =
      (fn: (req: Request, res: Response) => Promise<void>) =>
      (req: Request, res: Response, next: NextFunction): void => {
        fn(req, res).catch(next);
      };

    // authorize-post (SMART): a form POST becomes the same GET, so the session cookies (SameSite=Lax)
    // travel with it.
    r.post('/authorize', form, (req, res) => {
      const params = new URLSearchParams();
      for (const [k, v] of Object.entries((req.body ?? {}) as Record<string, unknown>)) {
        if (typeof v === 'string') params.append(k, v);
        else if (Array.isArray(v)) for (const x of v) params.append(k, String(x));
      }
      res.redirect(303, `${this.endpoints.authorize}?${params.toString()}`);
    });
    // oidc-provider keeps offline_access only when prompt=consent is asked for; every Vesta
    // authorization shows the consent page anyway.
    r.get('/authorize', (req, res) => {
      const u = new URL(req.url, 'http://x');
      const scope = u.searchParams.get('scope')?.split(' ') ?? [];
      if ((scope.includes('offline_access') || scope.includes('online_access')) && !u.searchParams.has('prompt')) {
        u.searchParams.set('prompt', 'consent');
        req.url = `${u.pathname}${u.search}`;
      }
      toProvider(req, res);
    });

    r.get('/interaction/:uid', wrap((req, res) => this.showInteraction(req, res, page)));
    r.post('/interaction/:uid/login', form, wrap((req, res) => this.login(req, res, page)));
    r.post('/interaction/:uid/patient', form, wrap((req, res) => this.pick(req, res, page)));
    r.post('/interaction/:uid/consent', form, wrap((req, res) => this.consent(req, res, page)));
    r.post('/interaction/:uid/abort', form, wrap((req, res) => this.abort(req, res, page)));
    r.post('/launch', json, wrap((req, res) => this.createLaunch(req, res)));
    r.post('/introspect', form, wrap((req, res) => this.introspect(req, res)));
    r.post('/revoke', form, wrap((req, res) => this.revoke(req, res)));
    r.use(toProvider);
    // Errors of the routes above: sign-in pages get a page, API endpoints an OAuth error object.
    r.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
      const status = (err as { status?: number; statusCode?: number }).status ?? (err as { statusCode?: number }).statusCode ?? 500;
      const name = (err as { name?: string }).name;
      if (req.path.startsWith('/interaction/')) {
        if (name === 'SessionNotFound') return page(res, 400, messagePage('Sign-in expired', 'This sign-in has expired or was opened in another browser. Go back to the app and start again.'));
        if (status >= 500) this.svc.log.error({ err: { message: (err as Error)?.message, stack: (err as Error)?.stack } }, 'sign-in page failed');
        return page(res, status >= 500 ? 500 : status, messagePage('Sign-in error', status >= 500 ? 'Something went wrong on the server.' : 'The request could not be understood.'));
      }
      if (status >= 500) this.svc.log.error({ err: { message: (err as Error)?.message, stack: (err as Error)?.stack } }, 'authorization endpoint failed');
      res.status(status >= 500 ? 500 : status).json({ error: status >= 500 ? 'server_error' : 'invalid_request', error_description: status >= 500 ? 'the server failed' : 'the request body could not be read' });
    });
    return r;
  }

  /** The OIDC discovery document at the issuer (the FHIR base): oidc-provider's, as mounted at /auth. */
  openidConfiguration(req: Request, res: Response): void {
    const canonical = new URL(this.authBase);
    req.url = '/.well-known/openid-configuration';
    req.originalUrl = `${canonical.pathname}/.well-known/openid-configuration`;
    req.headers['x-forwarded-host'] = canonical.host;
    req.headers['x-forwarded-proto'] = canonical.protocol.slice(0, -1);
    void this.provider.callback()(req, res);
  }

  // --- sign-in pages ---------------------------------------------------------------------------------

  private async details(req: Request, res: Response) {
    const details = await this.provider.interactionDetails(req, res);
    if (details.uid !== req.params.uid) throw Object.assign(new Error('interaction mismatch'), { name: 'SessionNotFound', status: 400 });
    const client = await this.provider.Client.find(String(details.params.client_id));
    if (!client) throw Object.assign(new Error('unknown client'), { status: 400 });
    return { details, client, clientName: (client.clientName as string | undefined) ?? client.clientId };
  }

  private urls(uid: string) {
    const base = `${this.authBase}/interaction/${uid}`;
    return { self: base, login: `${base}/login`, patient: `${base}/patient`, consent: `${base}/consent`, abort: `${base}/abort` };
  }

  /** The launch context of an interaction: from the EHR launch, the patient user, or the picker. */
  private async launchContext(
    details: Awaited<ReturnType<Provider['interactionDetails']>>,
    user: { fhirUser?: string | undefined },
    clientId: string,
  ): Promise<{ ctx: SmartContext; needPick: boolean; error?: string; launchId?: string }> {
    const scopes = String(details.params.scope ?? '').split(' ');
    const ownPatient = user.fhirUser?.startsWith('Patient/') ? user.fhirUser.slice('Patient/'.length) : undefined;
    const ctx: SmartContext = {};
    if (user.fhirUser) ctx.fhirUser = `${this.fhirBase}/${user.fhirUser}`;
    const launchId = typeof details.params.launch === 'string' ? details.params.launch : undefined;
    if (scopes.includes('launch')) {
      if (!launchId) return { ctx, needPick: false, error: 'the launch scope needs the launch parameter the EHR gave the app' };
      const row = await findArtifact(this.svc.db.knex, 'SmartLaunch', launchId);
      if (!row || row.consumedAt) return { ctx, needPick: false, error: 'the launch context is unknown, used or expired' };
      const l = row.payload as unknown as LaunchRecord;
      if (l.clientId && l.clientId !== clientId) return { ctx, needPick: false, error: 'the launch context was created for another app' };
      if (ownPatient && l.patient && l.patient !== ownPatient) return { ctx, needPick: false, error: "the launch context names a patient other than the signed-in patient's own record" };
      if (l.patient) ctx.patient = l.patient;
      if (l.encounter) ctx.encounter = l.encounter;
      if (l.fhirContext?.length) ctx.fhirContext = l.fhirContext;
      ctx.needPatientBanner = l.needPatientBanner ?? false;
      return { ctx, needPick: false, launchId };
    }
    if (ownPatient) {
      ctx.patient = ownPatient;
      if (scopes.includes('launch/patient')) ctx.needPatientBanner = true;
      return { ctx, needPick: false };
    }
    if (scopes.includes('launch/patient')) {
      const pick = await findArtifact(this.svc.db.knex, 'SmartPick', details.uid);
      if (!pick) return { ctx, needPick: true };
      ctx.patient = String(pick.payload.patient);
      ctx.needPatientBanner = true;
    }
    return { ctx, needPick: false };
  }

  /** What the consent page offers: requested scopes narrowed by client, user and the kind of token. */
  private offer(details: Awaited<ReturnType<Provider['interactionDetails']>>, client: { [k: string]: unknown }, user: { scopes: string; fhirUser?: string | undefined }, hasPatient: boolean) {
    const requested = String(details.params.scope ?? '').split(' ').filter(Boolean);
    const nonClinical = NON_CLINICAL_SCOPES.join(' ');
    const lists = [
      { name: 'not allowed for this app', scopes: clientScopes(client) },
      { name: 'not allowed for your account', scopes: `${user.scopes} ${nonClinical}` },
      { name: 'apps acting for a user never get system/ scopes', scopes: `patient/*.cruds user/*.cruds ${nonClinical}` },
    ];
    const n = narrowScopes(requested, lists);
    const granted: string[] = [];
    for (const s of n.granted) {
      if (s === 'launch/encounter' && !details.params.launch) n.refused.push({ scope: s, by: 'no encounter picker for standalone launches' });
      else if (s.startsWith('patient/') && !hasPatient) n.refused.push({ scope: s, by: 'no patient in context' });
      else if (s === 'launch' && !details.params.launch) n.refused.push({ scope: s, by: 'no EHR launch' });
      else granted.push(s);
    }
    return { granted, refused: n.refused };
  }

  private async showInteraction(req: Request, res: Response, page: (res: Response, status: number, html: string) => void, opts: { status?: number; error?: string } = {}): Promise<void> {
    const { details, client, clientName } = await this.details(req, res);
    const uid = details.uid;
    const u = this.urls(uid);
    const csrf = this.csrfToken(uid);
    if (details.prompt.name === 'login') return page(res, opts.status ?? 200, loginPage({ action: u.login, csrf, clientName, ...(opts.error ? { error: opts.error } : {}) }));
    const accountId = details.session?.accountId;
    const user = accountId ? await this.users.find(accountId) : undefined;
    if (!user || user.disabled) return page(res, 400, messagePage('Sign-in expired', 'Your session ended. Go back to the app and start again.'));
    const lc = await this.launchContext(details, user, client.clientId);
    if (lc.error) {
      await this.provider.interactionFinished(req, res, { error: 'invalid_request', error_description: lc.error }, { mergeWithLastSubmission: false });
      return;
    }
    if (lc.needPick) {
      const query = (new URL(req.url, 'http://x').searchParams.get('name') ?? '').trim().slice(0, 100);
      let patients: PatientRow[] = [];
      let error = opts.error;
      if (query) {
        try {
          patients = await this.findPatients(user, query);
        } catch (e) {
          if (!isFhirError(e)) throw e;
          error = `The search could not run: ${e.message}`;
        }
      }
      return page(res, opts.status ?? 200, pickerPage({ searchAction: u.self, pickAction: u.patient, csrf, clientName, query, patients, searched: query !== '', ...(error ? { error } : {}) }));
    }
    const offer = this.offer(details, client as never, user, lc.ctx.patient !== undefined);
    let patientLabel: string | undefined;
    if (lc.ctx.patient) patientLabel = (await this.patientLabel(user, lc.ctx.patient)) ?? `Patient/${lc.ctx.patient}`;
    return page(
      res,
      200,
      consentPage({
        action: u.consent,
        abortAction: u.abort,
        csrf,
        clientName,
        items: offer.granted.map((s) => ({ scope: s, description: describeScope(s) })),
        refused: offer.refused,
        ...(patientLabel ? { patientLabel } : {}),
      }),
    );
  }

  private userPrincipal(user: { username: string; fhirUser?: string | undefined; scopes: string }): Principal {
    const ownPatient = user.fhirUser?.startsWith('Patient/') ? user.fhirUser.slice(8) : undefined;
    const scope = user.scopes;
    return {
      kind: 'token',
      clientId: 'vesta-auth-server',
      subject: user.username,
      ...(user.fhirUser ? { fhirUser: user.fhirUser } : {}),
      ...(ownPatient ? { patient: ownPatient } : {}),
      scope,
      grants: parseScopes(scope).grants,
    };
  }

  /** The picker's searches and reads are interactions like any other: authorized and audited. */
  private requestContext(principal: Principal, interaction: string): RequestContext {
    return { requestId: randomBytes(8).toString('hex'), principal, clock: () => new Date(), baseUrl: this.fhirBase, audit: newTrail(interaction, 'Patient') };
  }

  /** Patients the user may see whose name matches (the search runs with the user's own scopes). */
  private async findPatients(user: { username: string; fhirUser?: string | undefined; scopes: string }, name: string): Promise<PatientRow[]> {
    const ctx = this.requestContext(this.userPrincipal(user), 'search-type');
    const r = await audited(this.svc, () => ctx, () =>
      search(this.svc, ctx, {
        type: 'Patient',
        query: [
          ['name', name],
          ['_count', '20'],
        ],
      }),
    );
    const bundle = r.body as { entry?: { resource?: Record<string, unknown>; search?: { mode?: string } }[] } | undefined;
    return (bundle?.entry ?? []).filter((e) => e.resource?.resourceType === 'Patient' && e.search?.mode !== 'outcome').map((e) => patientRow(e.resource!));
  }

  private async patientLabel(user: { username: string; fhirUser?: string | undefined; scopes: string }, id: string): Promise<string | undefined> {
    try {
      const ctx = this.requestContext(this.userPrincipal(user), 'read');
      const r = await audited(this.svc, () => ctx, () => read(this.svc, ctx, { type: 'Patient', id }));
      const row = r.body ? patientRow(r.body as unknown as Record<string, unknown>) : undefined;
      return row ? `${row.name}${row.birthDate ? `, born ${row.birthDate}` : ''}` : undefined;
    } catch {
      return undefined;
    }
  }

  private clientAddress(req: Request): string {
    return req.socket.remoteAddress ?? 'unknown';
  }

  private async login(req: Request, res: Response, page: (res: Response, status: number, html: string) => void): Promise<void> {
    const { details, clientName } = await this.details(req, res);
    const body = (req.body ?? {}) as Record<string, unknown>;
    const u = this.urls(details.uid);
    const csrf = this.csrfToken(details.uid);
    if (!this.checkCsrf(details.uid, body.csrf)) return page(res, 403, messagePage('Sign-in refused', 'The form was not sent from this sign-in page (CSRF check failed).'));
    if (details.prompt.name !== 'login') return page(res, 400, messagePage('Sign-in error', 'This step is already done.'));
    const username = typeof body.username === 'string' ? body.username.trim() : '';
    const password = typeof body.password === 'string' ? body.password : '';
    if (!username || !password) return page(res, 400, loginPage({ action: u.login, csrf, clientName, username, error: 'Enter your user name and password.' }));
    const result = await this.users.login(username, password, this.clientAddress(req));
    const requestId = (res.locals as { requestId?: string }).requestId;
    const clientId = typeof details.params.client_id === 'string' ? details.params.client_id : undefined;
    if (!result.ok) {
      this.svc.log.warn({ event: result.reason === 'throttled' ? 'login.throttled' : 'login.failed', clientId: details.params.client_id }, 'login refused');
      await this.record('auth:login', { clientId, user: username, status: result.reason === 'throttled' ? 429 : 401, description: result.reason === 'throttled' ? 'sign-in throttled' : 'sign-in failed', address: this.clientAddress(req), requestId });
      if (result.reason === 'throttled') {
        res.setHeader('Retry-After', String(Math.ceil(this.svc.config.authLoginWindowMs / 1000)));
        return page(res, 429, loginPage({ action: u.login, csrf, clientName, username, error: 'Too many failed sign-ins. Try again later.' }));
      }
      return page(res, 401, loginPage({ action: u.login, csrf, clientName, username, error: 'The user name or password is not correct.' }));
    }
    this.svc.log.info({ event: 'login.succeeded', clientId: details.params.client_id, account: result.user.username }, 'login succeeded');
    await this.record('auth:login', { clientId, user: result.user.username, status: 200, description: 'signed in', address: this.clientAddress(req), requestId });
    await this.provider.interactionFinished(req, res, { login: { accountId: result.user.username } }, { mergeWithLastSubmission: false });
  }

  private async pick(req: Request, res: Response, page: (res: Response, status: number, html: string) => void): Promise<void> {
    const { details } = await this.details(req, res);
    const body = (req.body ?? {}) as Record<string, unknown>;
    if (!this.checkCsrf(details.uid, body.csrf)) return page(res, 403, messagePage('Sign-in refused', 'The form was not sent from this sign-in page (CSRF check failed).'));
    const user = details.session?.accountId ? await this.users.find(details.session.accountId) : undefined;
    if (!user || details.prompt.name !== 'consent') return page(res, 400, messagePage('Sign-in error', 'Sign in first.'));
    const patient = typeof body.patient === 'string' ? body.patient : '';
    // The choice must be a patient this user may read: checked with the user's own scopes.
    const label = FHIR_ID.test(patient) ? await this.patientLabel(user, patient) : undefined;
    if (!label) return this.showInteraction(req, res, page, { status: 400, error: 'That patient cannot be chosen.' });
    await upsertArtifact(this.svc.db.knex, 'SmartPick', details.uid, { patient }, undefined, undefined, new Date(Date.now() + PICK_TTL_S * 1000));
    res.redirect(303, this.urls(details.uid).self);
  }

  private async consent(req: Request, res: Response, page: (res: Response, status: number, html: string) => void): Promise<void> {
    const { details, client } = await this.details(req, res);
    const body = (req.body ?? {}) as Record<string, unknown>;
    if (!this.checkCsrf(details.uid, body.csrf)) return page(res, 403, messagePage('Sign-in refused', 'The form was not sent from this sign-in page (CSRF check failed).'));
    const accountId = details.session?.accountId;
    const user = accountId ? await this.users.find(accountId) : undefined;
    if (!user || user.disabled || details.prompt.name !== 'consent') return page(res, 400, messagePage('Sign-in error', 'Sign in first.'));
    const lc = await this.launchContext(details, user, client.clientId);
    if (lc.error || lc.needPick) return this.showInteraction(req, res, page);
    const offer = this.offer(details, client as never, user, lc.ctx.patient !== undefined);
    const chosen = new Set(([] as unknown[]).concat(body.scope ?? []).filter((s): s is string => typeof s === 'string'));
    const granted = offer.granted.filter((s) => chosen.has(s));
    const requested = String(details.params.scope ?? '').split(' ').filter(Boolean);
    const rejected = requested.filter((s) => !granted.includes(s));
    const grant = new this.provider.Grant({ accountId: accountId!, clientId: client.clientId });
    const nonClinical = new Set<string>(NON_CLINICAL_SCOPES);
    const oidc = granted.filter((s) => nonClinical.has(s));
    if (oidc.length) grant.addOIDCScope(oidc.join(' '));
    if (granted.length) grant.addResourceScope(this.fhirBase, granted.join(' '));
    const rejectedOidc = rejected.filter((s) => nonClinical.has(s));
    if (rejectedOidc.length) grant.rejectOIDCScope(rejectedOidc.join(' '));
    if (rejected.length) grant.rejectResourceScope(this.fhirBase, rejected.join(' '));
    const grantId = await grant.save();
    const expires = new Date(Date.now() + this.svc.config.authRefreshTokenTtlSeconds * 1000);
    await upsertArtifact(this.svc.db.knex, 'SmartContext', grantId, lc.ctx as Record<string, unknown>, grantId, undefined, expires);
    if (lc.launchId) await consumeArtifact(this.svc.db.knex, 'SmartLaunch', lc.launchId);
    this.svc.log.info({ event: 'consent.given', clientId: client.clientId, account: accountId, granted: granted.length, rejected: rejected.length }, 'consent given');
    await this.provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }

  private async abort(req: Request, res: Response, page: (res: Response, status: number, html: string) => void): Promise<void> {
    const { details } = await this.details(req, res);
    const body = (req.body ?? {}) as Record<string, unknown>;
    if (!this.checkCsrf(details.uid, body.csrf)) return page(res, 403, messagePage('Sign-in refused', 'The form was not sent from this sign-in page (CSRF check failed).'));
    await this.provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'the user denied access' }, { mergeWithLastSubmission: false });
  }

  // --- EHR launch ----------------------------------------------------------------------------------

  private oauthError(res: Response, status: number, error: string, description: string, headers: Record<string, string> = {}): void {
    for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
    res.status(status).setHeader('Cache-Control', 'no-store').json({ error, error_description: description });
  }

  /** A principal from the Authorization header, or a 401 already sent. */
  private async bearer(req: Request, res: Response): Promise<Principal | undefined> {
    try {
      const p = await this.svc.auth.authenticate(req.headers.authorization);
      if (p.kind === 'anonymous') {
        this.oauthError(res, 401, 'invalid_token', 'a bearer token is required', { 'WWW-Authenticate': 'Bearer' });
        return undefined;
      }
      return p;
    } catch (e) {
      if (!isFhirError(e)) throw e;
      this.oauthError(res, 401, 'invalid_token', e.message, e.headers);
      return undefined;
    }
  }

  /** POST [base]/auth/launch: an EHR (system-scoped token) creates a launch context for an app. */
  private async createLaunch(req: Request, res: Response): Promise<void> {
    const principal = await this.bearer(req, res);
    if (!principal) return;
    const canRead = (type: string) => principal.kind === 'open' || principal.grants.some((g) => g.context === 'system' && (g.type === '*' || g.type === type) && g.letters.has('r') && !g.constraint);
    if (!canRead('Patient')) return this.oauthError(res, 403, 'insufficient_scope', 'creating a launch context needs a system/ scope that reads Patient (e.g. system/Patient.r)');
    const b = req.body as Record<string, unknown> | undefined;
    if (!b || typeof b !== 'object' || Array.isArray(b)) return this.oauthError(res, 400, 'invalid_request', 'the body must be a JSON object');
    const ref = (v: unknown, type: string): string | undefined | null => {
      if (v === undefined) return undefined;
      if (typeof v !== 'string') return null;
      const id = v.startsWith(`${type}/`) ? v.slice(type.length + 1) : v;
      return FHIR_ID.test(id) ? id : null;
    };
    const patient = ref(b.patient, 'Patient');
    const encounter = ref(b.encounter, 'Encounter');
    if (patient === null) return this.oauthError(res, 400, 'invalid_request', 'patient must be a Patient id');
    if (encounter === null) return this.oauthError(res, 400, 'invalid_request', 'encounter must be an Encounter id');
    if (encounter && !canRead('Encounter')) return this.oauthError(res, 403, 'insufficient_scope', 'an encounter context needs a system/ scope that reads Encounter');
    if (b.need_patient_banner !== undefined && typeof b.need_patient_banner !== 'boolean') return this.oauthError(res, 400, 'invalid_request', 'need_patient_banner must be a boolean');
    if (b.client_id !== undefined && (typeof b.client_id !== 'string' || !(await this.provider.Client.find(b.client_id)))) return this.oauthError(res, 400, 'invalid_request', 'client_id must name a registered client');
    let fhirContext: unknown[] | undefined;
    if (b.fhirContext !== undefined) {
      const ok =
        Array.isArray(b.fhirContext) &&
        b.fhirContext.length <= 20 &&
        b.fhirContext.every(
          (c) =>
            c && typeof c === 'object' && !Array.isArray(c) && Object.entries(c as object).every(([k, v]) => ['reference', 'canonical', 'identifier', 'type', 'role'].includes(k) && (typeof v === 'string' || (k === 'identifier' && typeof v === 'object'))),
        );
      if (!ok) return this.oauthError(res, 400, 'invalid_request', 'fhirContext must be an array of at most 20 objects with reference, canonical, identifier, type or role');
      fhirContext = b.fhirContext as unknown[];
    }
    try {
      // Each check is a read by the launching system's token, audited as such.
      for (const [type, id] of [['Patient', patient], ['Encounter', encounter]] as const) {
        if (!id) continue;
        const ctx = this.requestContext(principal, 'read');
        ctx.audit.resourceType = type;
        await audited(this.svc, () => ctx, () => read(this.svc, ctx, { type, id }));
      }
    } catch (e) {
      if (!isFhirError(e)) throw e;
      return this.oauthError(res, e.status === 404 || e.status === 410 ? 400 : e.status, 'invalid_request', e.status === 404 || e.status === 410 ? 'the patient or encounter is not known' : e.message);
    }
    const id = randomBytes(24).toString('base64url');
    const record: LaunchRecord = {
      ...(patient ? { patient } : {}),
      ...(encounter ? { encounter } : {}),
      ...(fhirContext ? { fhirContext } : {}),
      ...(typeof b.need_patient_banner === 'boolean' ? { needPatientBanner: b.need_patient_banner } : {}),
      ...(typeof b.client_id === 'string' ? { clientId: b.client_id } : {}),
      createdBy: principal.clientId,
    };
    await upsertArtifact(this.svc.db.knex, 'SmartLaunch', id, record as unknown as Record<string, unknown>, undefined, undefined, new Date(Date.now() + LAUNCH_TTL_S * 1000));
    this.svc.log.info({ event: 'launch.created', clientId: principal.clientId }, 'EHR launch context created');
    await this.record('auth:launch', { clientId: principal.clientId, status: 200, description: 'EHR launch context created', address: req.socket.remoteAddress, tokenId: principal.tokenId, requestId: (res.locals as { requestId?: string }).requestId });
    res.status(201).setHeader('Cache-Control', 'no-store');
    res.json({ launch: id, expires_in: LAUNCH_TTL_S });
  }

  // --- RFC 7662 introspection and RFC 7009 revocation ----------------------------------------------

  /** POST [base]/auth/introspect (RFC 7662; SMART token introspection): callers present a system-scoped bearer token. */
  private async introspect(req: Request, res: Response): Promise<void> {
    const caller = await this.bearer(req, res);
    if (!caller) return;
    if (caller.kind !== 'open' && !caller.grants.some((g) => g.context === 'system')) return this.oauthError(res, 403, 'insufficient_scope', 'introspection needs a token with a system/ scope');
    const token = (req.body as Record<string, unknown> | undefined)?.token;
    res.setHeader('Cache-Control', 'no-store');
    if (typeof token !== 'string' || !token) return this.oauthError(res, 400, 'invalid_request', 'the token parameter is required');
    if (token.split('.').length === 3) {
      try {
        const p = await this.svc.auth.authenticate(`Bearer ${token}`);
        const claims = decodeJwt(token);
        res.status(200).json({
          active: true,
          token_type: 'Bearer',
          scope: p.scope,
          client_id: p.clientId,
          ...(claims.sub ? { sub: claims.sub } : {}),
          iss: claims.iss,
          ...(claims.aud ? { aud: claims.aud } : {}),
          ...(claims.exp ? { exp: claims.exp } : {}),
          ...(claims.iat ? { iat: claims.iat } : {}),
          ...(claims.jti ? { jti: claims.jti } : {}),
          ...(p.patient ? { patient: p.patient } : {}),
          ...(p.fhirUser ? { fhirUser: p.fhirUser } : {}),
          ...(claims.encounter ? { encounter: claims.encounter } : {}),
        });
      } catch {
        res.status(200).json({ active: false });
      }
      return;
    }
    const rt = await this.provider.RefreshToken.find(token);
    if (!rt || rt.isExpired || rt.consumed) {
      res.status(200).json({ active: false });
      return;
    }
    res.status(200).json({ active: true, token_type: 'refresh_token', scope: rt.scope, client_id: rt.clientId, sub: rt.accountId, iss: this.fhirBase, exp: rt.exp, iat: rt.iat });
  }

  /**
   * POST [base]/auth/revoke (RFC 7009): access tokens by jti on every node, refresh tokens with
   * their whole grant. The client names itself with client_id; a token of another client is refused.
   */
  private async revoke(req: Request, res: Response): Promise<void> {
    const b = (req.body ?? {}) as Record<string, unknown>;
    res.setHeader('Cache-Control', 'no-store');
    if (typeof b.token !== 'string' || !b.token) return this.oauthError(res, 400, 'invalid_request', 'the token parameter is required');
    if (typeof b.client_id !== 'string' || !b.client_id) return this.oauthError(res, 401, 'invalid_client', 'client_id is required');
    const client = await this.provider.Client.find(b.client_id);
    if (!client) return this.oauthError(res, 401, 'invalid_client', 'the client is not registered');
    const token = b.token;
    if (token.split('.').length === 3) {
      let p: Principal;
      try {
        p = await this.svc.auth.authenticate(`Bearer ${token}`);
      } catch {
        res.status(200).end(); // invalid, expired or already revoked: nothing to do (RFC 7009 section 2.2)
        return;
      }
      if (p.clientId !== client.clientId) return this.oauthError(res, 400, 'unauthorized_client', 'the token was not issued to this client');
      if (p.tokenId && p.expiresAt) await this.svc.auth.revocations.revoke(p.tokenId, p.expiresAt);
      this.svc.log.info({ event: 'token.revoked', kind: 'access_token', clientId: client.clientId, jti: p.tokenId }, 'token revoked');
      await this.record('auth:revoke', { clientId: client.clientId, user: p.subject !== client.clientId ? p.subject : undefined, status: 200, description: 'access token revoked', address: req.socket.remoteAddress, tokenId: p.tokenId, requestId: (res.locals as { requestId?: string }).requestId });
      res.status(200).end();
      return;
    }
    const rt = await this.provider.RefreshToken.find(token);
    if (rt) {
      if (rt.clientId !== client.clientId) return this.oauthError(res, 400, 'unauthorized_client', 'the token was not issued to this client');
      if (rt.grantId) {
        await this.revokeGrantTokens(rt.grantId);
        await destroyArtifactsOfGrant(this.svc.db.knex, rt.grantId);
      }
      this.svc.log.info({ event: 'token.revoked', kind: 'refresh_token', clientId: client.clientId }, 'token revoked');
      await this.record('auth:revoke', { clientId: client.clientId, user: rt.accountId, status: 200, description: 'refresh token revoked with its grant', address: req.socket.remoteAddress, requestId: (res.locals as { requestId?: string }).requestId });
    }
    res.status(200).end();
  }
}

function patientRow(p: Record<string, unknown>): PatientRow {
  const names = (p.name as { text?: string; family?: string; given?: string[] }[] | undefined) ?? [];
  const n = names[0];
  const name = n ? (n.text ?? [...(n.given ?? []), n.family ?? ''].join(' ').trim()) : '';
  return {
    id: String(p.id),
    name: name || `Patient/${String(p.id)}`,
    ...(typeof p.birthDate === 'string' ? { birthDate: p.birthDate } : {}),
    ...(typeof p.gender === 'string' ? { gender: p.gender } : {}),
  };
}
