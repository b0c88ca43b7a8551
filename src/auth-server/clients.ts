// Registered SMART clients (`vesta clients add`): public apps (PKCE, no secret) and confidential
// apps that authenticate with a private_key_jwt assertion (SMART "client-confidential-asymmetric",
// and Backend Services). A client's `scope` is its allow-list: no token ever carries more.
import { isLoopbackHost } from '../auth/token-verifier.js';
import { parseScope } from '../auth/scopes.js';

export type ClientType = 'public' | 'confidential-asymmetric';

export interface ClientRegistration {
  client_id: string;
  client_name?: string;
  type: ClientType;
  redirect_uris: string[];
  /** Space-separated scopes the client may be granted (clinical scopes cover narrower ones). */
  scope: string;
  jwks?: { keys: Record<string, unknown>[] };
  jwks_uri?: string;
}

/** Scopes that are not clinical: launch, identity and refresh-token scopes (SMART App Launch 2.x). */
export const NON_CLINICAL_SCOPES = ['openid', 'fhirUser', 'profile', 'launch', 'launch/patient', 'launch/encounter', 'offline_access', 'online_access'] as const;
const NON_CLINICAL = new Set<string>(NON_CLINICAL_SCOPES);

export class ClientRegistrationError extends Error {}

const CLIENT_ID = /^[A-Za-z0-9._~-]{1,128}$/;
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];


/** Checks a registration; throws ClientRegistrationError with one clear line per problem. */
export function checkRegistration(raw: ClientRegistration, opts: { allowLoopbackJwksUri: boolean }): ClientRegistration {
  const errors: string[] = [];
  if (!CLIENT_ID.test(raw.client_id ?? '')) errors.push('client_id must be 1-128 characters of A-Z a-z 0-9 . _ ~ -');
  if (raw.type !== 'public' && raw.type !== 'confidential-asymmetric') errors.push('type must be public or confidential-asymmetric');
  const redirects = raw.redirect_uris ?? [];
  for (const r of redirects) {
    let u: URL | undefined;
    try {
      u = new URL(r);
    } catch {
      errors.push(`redirect URI ${JSON.stringify(r)} is not an absolute URL`);
      continue;
    }
    if (u.hash || r.includes('#')) errors.push(`redirect URI ${r} must not have a fragment`);
    if (u.protocol !== 'https:' && !(u.protocol === 'http:' && isLoopbackHost(u.hostname))) errors.push(`redirect URI ${r} must use https (http only on localhost)`);
  }
  const scopes = (raw.scope ?? '').split(' ').filter(Boolean);
  if (!scopes.length) errors.push('at least one allowed scope is required');
  for (const s of scopes) if (!NON_CLINICAL.has(s) && !parseScope(s)) errors.push(`scope ${s} is neither a SMART clinical scope nor one of ${[...NON_CLINICAL].join(', ')}`);
  if (raw.type === 'public') {
    if (!redirects.length) errors.push('a public client needs at least one redirect URI');
    if (raw.jwks || raw.jwks_uri) errors.push('a public client has no keys');
    if (scopes.some((s) => s.startsWith('system/'))) errors.push('a public client cannot be allowed system/ scopes');
  }
  if (raw.type === 'confidential-asymmetric') {
    if (!raw.jwks === !raw.jwks_uri) errors.push('a confidential-asymmetric client needs exactly one of a JWKS (by value) or a JWKS URL');
    if (raw.jwks) {
      if (!Array.isArray(raw.jwks.keys) || !raw.jwks.keys.length) errors.push('the JWKS must have a non-empty "keys" array');
      else
        for (const k of raw.jwks.keys) {
          if (PRIVATE_MEMBERS.some((m) => m in k)) errors.push(`key ${String(k.kid ?? '(no kid)')} is private: register the public key only`);
          if (k.kty !== 'RSA' && k.kty !== 'EC') errors.push(`key ${String(k.kid ?? '(no kid)')} must be an RSA or EC key`);
          if (typeof k.kid !== 'string' || !k.kid) errors.push('every key needs a kid (the client assertion names its key by kid)');
        }
    }
    if (raw.jwks_uri) {
      try {
        const u = new URL(raw.jwks_uri);
        if (u.protocol !== 'https:' && !(opts.allowLoopbackJwksUri && u.protocol === 'http:' && isLoopbackHost(u.hostname))) errors.push('the JWKS URL must use https');
      } catch {
        errors.push('the JWKS URL is not an absolute URL');
      }
    }
  }
  if (errors.length) throw new ClientRegistrationError(errors.join('\n'));
  return {
    client_id: raw.client_id,
    ...(raw.client_name ? { client_name: raw.client_name } : {}),
    type: raw.type,
    redirect_uris: redirects,
    scope: scopes.join(' '),
    ...(raw.jwks ? { jwks: raw.jwks } : {}),
    ...(raw.jwks_uri ? { jwks_uri: raw.jwks_uri } : {}),
  };
}

/** The client metadata oidc-provider works with, derived from a registration. */
export function toProviderMetadata(reg: ClientRegistration): Record<string, unknown> {
  const scopes = reg.scope.split(' ').filter(Boolean);
  const interactive = reg.redirect_uris.length > 0;
  const grants: string[] = [];
  if (interactive) grants.push('authorization_code', 'refresh_token');
  if (reg.type === 'confidential-asymmetric' && scopes.some((s) => s.startsWith('system/'))) grants.push('client_credentials');
  return {
    client_id: reg.client_id,
    ...(reg.client_name ? { client_name: reg.client_name } : {}),
    application_type: 'web',
    token_endpoint_auth_method: reg.type === 'public' ? 'none' : 'private_key_jwt',
    grant_types: grants,
    response_types: interactive ? ['code'] : [],
    redirect_uris: reg.redirect_uris,
    // oidc-provider checks its own (non-clinical) scopes against this list (it refuses an empty
    // one); every scope, these included, is also narrowed by smart_scopes at consent and in the
    // resource server's scope list (smart-scopes.ts), so a client without any gets none.
    ...(scopes.some((s) => NON_CLINICAL.has(s)) ? { scope: scopes.filter((s) => NON_CLINICAL.has(s)).join(' ') } : {}),
    smart_scopes: reg.scope,
    ...(reg.jwks ? { jwks: reg.jwks } : {}),
    ...(reg.jwks_uri ? { jwks_uri: reg.jwks_uri } : {}),
  };
}
