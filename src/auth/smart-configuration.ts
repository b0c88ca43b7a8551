// [base]/.well-known/smart-configuration (SMART App Launch 2.x "Conformance"): what this server
// implements. With the built-in authorization server (AUTH_SERVER=on, the default) that is App
// Launch (EHR and standalone, public and confidential-asymmetric clients), OpenID Connect sign-in
// and Backend Services; without it, only the resource server's side (tokens from `vesta token` or a
// trusted external issuer), and no endpoint is advertised that does not exist.

/** Scope forms the resource server enforces (auth/scopes.ts). */
export const SCOPES_SUPPORTED = ['patient/*.cruds', 'user/*.cruds', 'system/*.cruds', 'patient/*.read', 'user/*.read', 'system/*.read', 'patient/*.write', 'user/*.write', 'system/*.write'];

/** Absolute URLs of the built-in authorization server (mounted at [base]/auth). */
export function smartEndpoints(baseUrl: string) {
  const auth = `${baseUrl}/auth`;
  return {
    authorize: `${auth}/authorize`,
    token: `${auth}/token`,
    introspect: `${auth}/introspect`,
    revoke: `${auth}/revoke`,
    launch: `${auth}/launch`,
    jwks: `${baseUrl}/.well-known/jwks.json`,
    openidConfiguration: `${baseUrl}/.well-known/openid-configuration`,
  };
}

export const AUTH_SERVER_CAPABILITIES = [
  'launch-ehr',
  'launch-standalone',
  'authorize-post',
  'client-public',
  'client-confidential-asymmetric',
  'context-ehr-patient',
  'context-ehr-encounter',
  'context-standalone-patient',
  'context-banner',
  'sso-openid-connect',
  'permission-offline',
  'permission-online',
  'permission-patient',
  'permission-user',
  'permission-v1',
  'permission-v2',
];

export function smartConfiguration(baseUrl: string, authServer: boolean): Record<string, unknown> {
  if (!authServer) {
    return {
      issuer: baseUrl,
      jwks_uri: `${baseUrl}/.well-known/jwks.json`,
      grant_types_supported: [],
      code_challenge_methods_supported: ['S256'],
      scopes_supported: SCOPES_SUPPORTED,
      capabilities: ['permission-v1', 'permission-v2', 'permission-patient', 'permission-user'],
    };
  }
  const e = smartEndpoints(baseUrl);
  return {
    issuer: baseUrl,
    jwks_uri: e.jwks,
    authorization_endpoint: e.authorize,
    token_endpoint: e.token,
    introspection_endpoint: e.introspect,
    revocation_endpoint: e.revoke,
    grant_types_supported: ['authorization_code', 'refresh_token', 'client_credentials'],
    response_types_supported: ['code'],
    token_endpoint_auth_methods_supported: ['none', 'private_key_jwt'],
    token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384', 'RS256', 'ES256'],
    code_challenge_methods_supported: ['S256'],
    scopes_supported: ['openid', 'fhirUser', 'profile', 'launch', 'launch/patient', 'offline_access', 'online_access', ...SCOPES_SUPPORTED],
    capabilities: AUTH_SERVER_CAPABILITIES,
  };
}
