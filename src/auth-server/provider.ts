// The OAuth 2.0 / OpenID Connect machinery of Vesta's SMART authorization server is oidc-provider
// (panva, OpenID-certified): authorization endpoint, PKCE, codes, refresh-token rotation and reuse
// detection, private_key_jwt client authentication, client_credentials, id_token, sessions. This
// file configures it for SMART App Launch 2.x and Backend Services; what oidc-provider leaves open
// (SMART scopes, launch context, the stricter client-assertion rules) is decided here.
import { isLoopbackHost } from '../auth/token-verifier.js';
import { createHash, createHmac } from 'node:crypto';
import type Provider from 'oidc-provider';
import type { Configuration, KoaContextWithOIDC } from 'oidc-provider';
import type { Queryable } from '../storage/db.js';
import { findArtifact, findUserRow, insertArtifactOnce } from '../storage/auth-store.js';
import type { SigningRingFile } from '../auth/signing-keys.js';
import { adapterFactory, type AdapterHooks } from './adapter.js';
import { NON_CLINICAL_SCOPES } from './clients.js';
import { narrowScopes } from './smart-scopes.js';
import type { Logger } from '../log/logger.js';

/** Where the SMART context of a grant lives (patient, encounter, fhirContext): kind SmartContext, id = grant id. */
export interface SmartContext {
  patient?: string;
  encounter?: string;
  fhirContext?: unknown[];
  needPatientBanner?: boolean;
  fhirUser?: string;
}

export interface ProviderOptions {
  issuer: string;
  /** The FHIR base URL: the only resource (and token audience). */
  fhirBase: string;
  /** Absolute URL of the authorization server's mount point (`${fhirBase}/auth`). */
  authBase: string;
  ring: SigningRingFile;
  db: Queryable;
  hooks: AdapterHooks;
  log: Logger;
  userTokenTtlSeconds: number;
  backendTokenTtlSeconds: number;
  refreshTokenTtlSeconds: number;
  sessionTtlSeconds: number;
  /** Allow client JWKS URLs on http://localhost (development and tests only). */
  allowLoopbackJwksUri: boolean;
}

/** Client-assertion `exp` may be at most this far ahead (SMART Backend Services: five minutes). */
export const MAX_ASSERTION_LIFETIME_S = 300;
const MAX_JWKS_BYTES = 64 * 1024;

/** Private JWKs of the ring, newest first per algorithm so the newest key signs. */
function providerKeys(ring: SigningRingFile): Record<string, unknown>[] {
  const keys = [...ring.keys].reverse();
  const active = keys.find((k) => k.kid === ring.active)!;
  return [active, ...keys.filter((k) => k !== active)].map((k) => ({ ...k, use: 'sig' }));
}

/** Cookie-signing keys derived from the ring (every node derives the same; the newest first). */
function cookieKeys(ring: SigningRingFile): string[] {
  return [...ring.keys].reverse().map((k) => createHmac('sha256', String(k.d)).update('vesta auth cookies v1').digest('base64url'));
}

export function csrfKey(ring: SigningRingFile): Buffer {
  const active = ring.keys.find((k) => k.kid === ring.active)!;
  return createHmac('sha256', String(active.d)).update('vesta auth csrf v1').digest();
}


export function clientScopes(client: { [k: string]: unknown } | undefined): string {
  const s = (client as { smart_scopes?: unknown } | undefined)?.smart_scopes;
  return typeof s === 'string' ? s : '';
}

type OidcModule = typeof import('oidc-provider');
let loaded: OidcModule | undefined;

/**
 * oidc-provider, imported when the authorization server starts (not by every `vesta` command). Its
 * import prints a support notice on Node.js 20 with console.warn; that line goes to Vesta's log
 * instead, so command output and JSON logs stay clean.
 */
export async function loadOidcProvider(log: Logger): Promise<OidcModule> {
  if (loaded) return loaded;
  const warn = console.warn;
  const notices: string[] = [];
  console.warn = (...args: unknown[]) => {
    const line = String(args[0] ?? '');
    if (line.includes('oidc-provider WARNING')) notices.push(line.replace(/\x1b\[[0-9;]*m/g, ''));
    else warn(...args);
  };
  try {
    loaded = await import('oidc-provider');
  } finally {
    console.warn = warn;
  }
  for (const n of notices) log.warn({ node: process.version }, n);
  return loaded;
}

export async function buildProvider(o: ProviderOptions): Promise<Provider> {
  const { default: ProviderClass, errors } = await loadOidcProvider(o.log);
  const Adapter = adapterFactory(o.db, o.hooks);
  const tokenUrl = `${o.authBase}/token`;
  const hasRs256 = o.ring.keys.some((k) => k.alg === 'RS256');

  const config: Configuration = {
    adapter: Adapter as unknown as Configuration['adapter'],
    clients: [],
    scopes: [...NON_CLINICAL_SCOPES],
    claims: { openid: ['sub'], fhirUser: ['fhirUser'], profile: ['name', 'preferred_username'] },
    extraClientMetadata: { properties: ['smart_scopes'] },
    jwks: { keys: providerKeys(o.ring) as never },
    cookies: {
      keys: cookieKeys(o.ring),
      long: { signed: true, httpOnly: true, sameSite: 'lax' },
      short: { signed: true, httpOnly: true, sameSite: 'lax' },
    },
    routes: { authorization: '/authorize', token: '/token', jwks: '/jwks' },
    responseTypes: ['code'],
    clientAuthMethods: ['none', 'private_key_jwt'],
    enabledJWA: {
      clientAuthSigningAlgValues: ['RS384', 'ES384', 'RS256', 'ES256'],
      idTokenSigningAlgValues: ['RS256'],
    },
    clientDefaults: { id_token_signed_response_alg: 'RS256', grant_types: ['authorization_code'], response_types: ['code'], token_endpoint_auth_method: 'none' },
    pkce: { required: () => true },
    allowOmittingSingleRegisteredRedirectUri: false,
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // Introspection and revocation are Vesta's own (introspect-revoke.ts): oidc-provider's refuse
      // JWT access tokens, which are the ones SMART clients hold.
      introspection: { enabled: false },
      revocation: { enabled: false },
      userinfo: { enabled: false },
      rpInitiatedLogout: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => o.fhirBase,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource, client) => {
          if (resource !== o.fhirBase) throw new errors.InvalidTarget('the only resource is this FHIR server');
          const grantType = ctx.oidc.params?.grant_type;
          let scope: string;
          const grant = ctx.oidc.entities.Grant;
          if (grant) {
            scope = grant.resources?.[resource] ?? '';
          } else {
            const requested = String(ctx.oidc.params?.scope ?? '').split(' ');
            const n = narrowScopes(requested, [{ name: 'the client registration', scopes: clientScopes(client as never) }]);
            scope = n.granted.filter((s) => (grantType === 'client_credentials' ? s.startsWith('system/') : true)).join(' ');
            if (grantType === 'client_credentials' && !scope) throw new errors.InvalidScope('none of the requested scopes is allowed for this client (Backend Services grant system/ scopes only)', requested.join(' '));
          }
          const backend = grantType === 'client_credentials';
          return {
            scope,
            audience: o.fhirBase,
            accessTokenTTL: backend ? o.backendTokenTtlSeconds : o.userTokenTtlSeconds,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: o.ring.keys.find((k) => k.kid === o.ring.active)!.alg as 'ES256', kid: o.ring.active } },
          };
        },
      },
    },
    extraParams: {
      aud: (ctx: KoaContextWithOIDC, value: string | undefined) => {
        // SMART App Launch: the app names the FHIR server it wants a token for; any other value
        // (or none) means the app may send the token somewhere else, so no code is issued.
        if (value !== o.fhirBase && value !== `${o.fhirBase}/`) throw new errors.InvalidRequest(`aud must be this FHIR server's base URL (${o.fhirBase})`);
        void ctx;
      },
      launch: undefined,
    } as never,
    extraTokenClaims: async (_ctx, token) => {
      const grantId = (token as { grantId?: string }).grantId;
      if (!grantId) return undefined;
      const row = await findArtifact(o.db, 'SmartContext', grantId);
      if (!row) return undefined;
      const c = row.payload as SmartContext;
      return {
        ...(c.patient ? { patient: c.patient } : {}),
        ...(c.encounter ? { encounter: c.encounter } : {}),
        ...(c.fhirContext?.length ? { fhirContext: c.fhirContext } : {}),
        ...(c.needPatientBanner !== undefined ? { need_patient_banner: c.needPatientBanner } : {}),
        ...(c.fhirUser && (token as { scope?: string }).scope?.split(' ').includes('fhirUser') ? { fhirUser: c.fhirUser } : {}),
      };
    },
    issueRefreshToken: (_ctx, client, code) => {
      const scopes = (code as { scopes: Set<string> }).scopes;
      return client.grantTypeAllowed('refresh_token') && (scopes.has('offline_access') || scopes.has('online_access'));
    },
    // Every use of a refresh token returns a new one; using an old one again revokes the whole grant.
    rotateRefreshToken: () => true,
    ttl: {
      AuthorizationCode: 60,
      AccessToken: (_ctx, token) => (token as { resourceServer?: { accessTokenTTL?: number } }).resourceServer?.accessTokenTTL ?? o.userTokenTtlSeconds,
      ClientCredentials: (_ctx, token) => Math.min((token as { resourceServer?: { accessTokenTTL?: number } }).resourceServer?.accessTokenTTL ?? o.backendTokenTtlSeconds, o.backendTokenTtlSeconds),
      IdToken: 3600,
      RefreshToken: (_ctx, token) => {
        const t = token as { scopes?: Set<string> };
        return t.scopes?.has('offline_access') ? o.refreshTokenTtlSeconds : o.sessionTtlSeconds;
      },
      Interaction: 900,
      Session: o.sessionTtlSeconds,
      Grant: o.refreshTokenTtlSeconds,
    },
    // A new consent for every authorization: the patient picker and the scope choice belong to one launch.
    loadExistingGrant: async (ctx) => {
      const grantId = ctx.oidc.result?.consent?.grantId as string | undefined;
      return grantId ? ctx.oidc.provider.Grant.find(grantId) : undefined;
    },
    interactions: { url: (_ctx, interaction) => `${o.authBase}/interaction/${interaction.uid}` },
    findAccount: async (_ctx, sub) => {
      const row = await findUserRow(o.db, sub);
      if (!row || row.disabled) return undefined;
      return {
        accountId: sub,
        claims: async () => ({
          sub,
          preferred_username: row.username,
          ...(row.fhirUser ? { fhirUser: `${o.fhirBase}/${row.fhirUser}` } : {}),
        }),
      };
    },
    // SMART Backend Services and RFC 7523 are stricter than oidc-provider's defaults: the assertion's
    // aud is the token URL, sub is the client, exp at most five minutes ahead, jku (if any) is the
    // registered JWKS URL, and a jti is accepted once per client, atomically across nodes.
    assertJwtClientAuthClaimsAndHeader: async (_ctx, claims, header, client) => {
      const aud = claims.aud;
      const auds = Array.isArray(aud) ? aud : [aud];
      if (auds.length !== 1 || auds[0] !== tokenUrl) throw new errors.InvalidClientAuth(`the client assertion's aud must be the token URL (${tokenUrl})`);
      if (claims.sub !== client.clientId) throw new errors.InvalidClientAuth("the client assertion's sub must be the client_id");
      const now = Math.floor(Date.now() / 1000);
      if (typeof claims.exp !== 'number' || claims.exp > now + MAX_ASSERTION_LIFETIME_S) throw new errors.InvalidClientAuth('the client assertion expires more than five minutes ahead');
      const jku = (header as { jku?: unknown }).jku;
      if (jku !== undefined && jku !== client.jwksUri) throw new errors.InvalidClientAuth("the client assertion's jku is not the client's registered JWKS URL");
      if (typeof claims.jti !== 'string' || !claims.jti || claims.jti.length > 256) throw new errors.InvalidClientAuth('the client assertion needs a jti');
      const id = createHash('sha256').update(`${client.clientId}\u0000${claims.jti}`).digest('base64url');
      const fresh = await insertArtifactOnce(o.db, 'AssertionJti', id, { client: client.clientId }, new Date((claims.exp + 60) * 1000));
      if (!fresh) throw new errors.InvalidClientAuth('the client assertion was used before (jti replayed)');
    },
    // Client JWKS URLs: https only (http://localhost only when allowed for development), a 2.5 s
    // timeout (oidc-provider's), a size cap, no redirects, and oidc-provider's guard against
    // special-use addresses (kept except for an allowed loopback URL).
    fetch: (url, options) => {
      const u = new URL(String(url));
      if (u.protocol !== 'https:') {
        if (!(o.allowLoopbackJwksUri && u.protocol === 'http:' && isLoopbackHost(u.hostname))) return Promise.reject(new Error('only https URLs are fetched'));
        const { dispatcher: _d, ...rest } = options as RequestInit & { dispatcher?: unknown };
        return globalThis.fetch(url, { ...rest, redirect: 'error' });
      }
      return globalThis.fetch(url, { ...(options as RequestInit), redirect: 'error' });
    },
    fetchResponseBodyLimits: { jwks_uri: MAX_JWKS_BYTES } as never,
    // CORS is Vesta's (CORS_ORIGINS, answered before oidc-provider sees the request); for an origin
    // outside that list, a public client's own redirect origins may still call the token endpoint.
    clientBasedCORS: (_ctx, origin, client) => origin !== 'null' && client.clientAuthMethod === 'none' && (client.redirectUris ?? []).some((uri) => URL.parse(uri)?.origin === origin),
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      const esc = (s: unknown) => String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
      ctx.body = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Vesta sign-in error</title></head><body><h1>Sign-in error</h1><p><strong>${esc(out.error)}</strong></p><p>${esc(out.error_description)}</p></body></html>`;
    },
  };
  if (!hasRs256) o.log.warn('the token-signing key ring has no RS256 key: id tokens (openid) cannot be issued; add one with vesta keys rotate-signing');
  const provider = new ProviderClass(o.issuer, config);
  const canonical = new URL(o.authBase);
  provider.proxy = true;
  void canonical;
  return provider;
}
