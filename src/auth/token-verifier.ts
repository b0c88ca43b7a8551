// Bearer token verification (RFC 6750; RFC 7519 JWT, RFC 7515 JWS; SMART App Launch access tokens):
// a JWT signed by a trusted issuer (Vesta's own key ring, or an external issuer discovered with
// openid-client), with an allowlisted algorithm, the expected audience, a live exp/nbf (bounded skew),
// and a jti that has not been revoked. Anything else is `invalid_token`, never a hint about which part
// of a forged token was close.
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify, type JSONWebKeySet, type JWTPayload } from 'jose';
import * as oidc from 'openid-client';
import { FhirError } from '../fhir/errors.js';
import { parseScopes } from './scopes.js';
import type { Principal } from './principal.js';
import type { RevocationList } from './revocations.js';

export const ALGORITHMS = ['RS256', 'RS384', 'ES256', 'ES384'];

export interface ExternalIssuer {
  issuer: string;
  audience: string;
}

export interface VerifierOptions {
  ownIssuer: string;
  ownAudience: string;
  ownKeys: JSONWebKeySet;
  external: ExternalIssuer[];
  /** Accepted clock skew on exp / nbf / iat, seconds (at most 60). */
  skewSeconds: number;
  revocations: RevocationList;
  /** Most seconds between refetches of a remote JWKS when a token names an unknown kid. */
  unknownKidRefetchSeconds?: number;
  clock?: () => Date;
}

/** A 401 with `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 section 3.1). */
export function invalidToken(reason: string): FhirError {
  return new FhirError('unauthorized', `the bearer token is not valid: ${reason}`, {
    headers: { 'WWW-Authenticate': `Bearer error="invalid_token", error_description="${reason.replace(/["\\]/g, '')}"` },
  });
}

const MAX_JWKS_BYTES = 256 * 1024;
/** Verified-token cache: entries and their longest life. */
const CACHE_MAX = 10_000;
const CACHE_MS = 60_000;
const FETCH_TIMEOUT_MS = 5000;

/** localhost, 127.0.0.1 or [::1]: where plain http is tolerated (development and tests). */
export function isLoopbackHost(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '127.0.0.1' || hostname === '[::1]';
}

/** Seconds a JWKS response may be kept: its Cache-Control max-age within [60 s, 24 h]; 5 minutes without one. */
export function jwksMaxAge(cacheControl: string | null): number {
  const m = /(?:^|,)\s*(?:s-)?max-age\s*=\s*"?(\d+)"?/i.exec(cacheControl ?? '');
  if (cacheControl && /no-store|no-cache/i.test(cacheControl) && !m) return 60;
  if (!m) return 300;
  return Math.min(86400, Math.max(60, Number(m[1])));
}

/** The JWKS of an external issuer: discovered once, cached as Cache-Control allows, refetched on an unknown kid at most once a minute. */
class RemoteKeys {
  private jwksUri: URL | undefined;
  private set: ReturnType<typeof createLocalJWKSet> | undefined;
  private kids = new Set<string>();
  private expires = 0;
  private lastFetch = 0;
  private inflight: Promise<void> | undefined;

  constructor(
    readonly issuer: ExternalIssuer,
    private readonly refetchMs: number,
    private readonly now: () => number,
  ) {}

  private async discover(): Promise<URL> {
    if (this.jwksUri) return this.jwksUri;
    const url = new URL(this.issuer.issuer);
    const config = await oidc.discovery(url, 'vesta-resource-server', undefined, undefined, {
      timeout: FETCH_TIMEOUT_MS / 1000,
      ...(url.protocol === 'http:' && isLoopbackHost(url.hostname) ? { execute: [oidc.allowInsecureRequests] } : {}),
    });
    const uri = config.serverMetadata().jwks_uri;
    if (!uri) throw new Error('the issuer publishes no jwks_uri');
    const u = new URL(uri);
    if (u.protocol !== 'https:' && !(u.protocol === 'http:' && isLoopbackHost(u.hostname))) throw new Error('the jwks_uri must use https');
    this.jwksUri = u;
    return u;
  }

  private async fetchKeys(): Promise<void> {
    this.inflight ??= (async () => {
      try {
        this.lastFetch = this.now();
        const uri = await this.discover();
        const res = await fetch(uri, { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS), redirect: 'error', headers: { accept: 'application/json' } });
        if (!res.ok) throw new Error(`the JWKS answered ${res.status}`);
        const text = await res.text();
        if (text.length > MAX_JWKS_BYTES) throw new Error('the JWKS is too large');
        const jwks = JSON.parse(text) as JSONWebKeySet;
        this.set = createLocalJWKSet(jwks);
        this.kids = new Set(jwks.keys.map((k) => k.kid).filter((k): k is string => typeof k === 'string'));
        this.expires = this.now() + jwksMaxAge(res.headers.get('cache-control')) * 1000;
      } finally {
        this.inflight = undefined;
      }
    })();
    return this.inflight;
  }

  async keys(kid: string | undefined): Promise<ReturnType<typeof createLocalJWKSet>> {
    const t = this.now();
    if (!this.set || t >= this.expires) await this.fetchKeys();
    else if (kid !== undefined && !this.kids.has(kid) && t - this.lastFetch >= this.refetchMs) await this.fetchKeys();
    return this.set!;
  }
}

export class TokenVerifier {
  private readonly own: ReturnType<typeof createLocalJWKSet>;
  private readonly remote = new Map<string, RemoteKeys>();
  private readonly clock: () => Date;

  constructor(private readonly opts: VerifierOptions) {
    if (opts.skewSeconds < 0 || opts.skewSeconds > 60) throw new Error('clock skew must be 0 to 60 seconds');
    this.own = createLocalJWKSet(opts.ownKeys);
    this.clock = opts.clock ?? (() => new Date());
    for (const e of opts.external) this.remote.set(e.issuer, new RemoteKeys(e, (opts.unknownKidRefetchSeconds ?? 60) * 1000, () => this.clock().getTime()));
  }

  /**
   * Verified tokens, so that a client's next request skips the signature check (ES256/RS256 verify is
   * the costliest step of authentication). An entry lives at most CACHE_MS and never past the token's
   * exp; time (exp, with the skew) and revocation are checked again on every use.
   */
  private readonly cache = new Map<string, { principal: Principal; until: number }>();

  /** Verifies a compact JWT and returns the principal it carries; throws a 401 FhirError otherwise. */
  async verify(token: string): Promise<Principal> {
    const now = this.clock().getTime();
    const hit = this.cache.get(token);
    if (hit) {
      if (now < hit.until) {
        if (hit.principal.tokenId && this.opts.revocations.has(hit.principal.tokenId)) throw invalidToken('the token has been revoked');
        return hit.principal;
      }
      this.cache.delete(token);
    }
    const principal = await this.verifyUncached(token);
    const exp = principal.expiresAt ? principal.expiresAt.getTime() + this.opts.skewSeconds * 1000 : now;
    if (this.cache.size >= CACHE_MAX) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(token, { principal, until: Math.min(exp, now + CACHE_MS) });
    return principal;
  }

  private async verifyUncached(token: string): Promise<Principal> {
    let header: ReturnType<typeof decodeProtectedHeader>;
    let unverified: JWTPayload;
    try {
      header = decodeProtectedHeader(token);
      unverified = decodeJwt(token);
    } catch {
      throw invalidToken('not a JWT');
    }
    if (typeof header.alg !== 'string' || !ALGORITHMS.includes(header.alg)) throw invalidToken('the signing algorithm is not accepted');
    const iss = unverified.iss;
    let keys: ReturnType<typeof createLocalJWKSet>;
    let audience: string;
    if (iss === this.opts.ownIssuer) {
      keys = this.own;
      audience = this.opts.ownAudience;
    } else {
      const remote = typeof iss === 'string' ? this.remote.get(iss) : undefined;
      if (!remote) throw invalidToken('the issuer is not trusted');
      try {
        keys = await remote.keys(header.kid);
      } catch {
        throw invalidToken("the issuer's keys could not be obtained");
      }
      audience = remote.issuer.audience;
    }
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, keys, {
        algorithms: ALGORITHMS,
        issuer: iss as string,
        audience,
        clockTolerance: this.opts.skewSeconds,
        requiredClaims: ['exp'],
        currentDate: this.clock(),
      }));
    } catch (e) {
      throw invalidToken(reasonOf(e));
    }
    if (payload.jti !== undefined && typeof payload.jti !== 'string') throw invalidToken('jti must be a string');
    if (payload.jti && this.opts.revocations.has(payload.jti)) throw invalidToken('the token has been revoked');
    const scope = typeof payload.scope === 'string' ? payload.scope : '';
    const clientId = [payload.client_id, payload.azp, payload.sub].find((v): v is string => typeof v === 'string' && v !== '') ?? 'unknown-client';
    const patient = typeof payload.patient === 'string' && /^[A-Za-z0-9\-.]{1,64}$/.test(payload.patient) ? payload.patient : undefined;
    const fhirUser = typeof payload.fhirUser === 'string' ? payload.fhirUser : undefined;
    return {
      kind: 'token',
      clientId,
      ...(typeof payload.sub === 'string' ? { subject: payload.sub } : {}),
      ...(fhirUser ? { fhirUser } : {}),
      ...(patient ? { patient } : {}),
      scope,
      grants: parseScopes(scope).grants,
      ...(payload.jti ? { tokenId: payload.jti } : {}),
      issuer: iss as string,
      ...(typeof payload.exp === 'number' ? { expiresAt: new Date(payload.exp * 1000) } : {}),
    };
  }
}

/** The reason given to the client: the failed check's name, never the token's content. */
function reasonOf(e: unknown): string {
  const code = (e as { code?: string })?.code;
  const claim = (e as { claim?: string })?.claim;
  switch (code) {
    case 'ERR_JWT_EXPIRED':
      return 'the token has expired';
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
      return claim === 'nbf' ? 'the token is not valid yet' : claim === 'aud' ? 'the audience is wrong' : claim === 'iss' ? 'the issuer is wrong' : `the ${claim ?? 'claims'} claim is not valid`;
    case 'ERR_JWKS_NO_MATCHING_KEY':
      return 'no key of the issuer matches the token';
    case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS':
      return 'several keys of the issuer match the token';
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
      return 'the signature does not verify';
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
      return 'the signing algorithm is not accepted';
    default:
      return 'the token could not be verified';
  }
}
