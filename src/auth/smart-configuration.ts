// [base]/.well-known/smart-configuration (SMART App Launch 2.x "Conformance"): what this server
// implements today. Vesta verifies tokens and enforces scopes; its own authorization server (the
// authorize and token endpoints, App Launch and Backend Services) is not built yet, so no endpoint
// or launch capability is advertised that does not exist. Tokens come from `vesta token` or from a
// trusted external issuer (AUTH_ISSUERS).

/** Scope forms the resource server enforces (auth/scopes.ts). */
export const SCOPES_SUPPORTED = ['patient/*.cruds', 'user/*.cruds', 'system/*.cruds', 'patient/*.read', 'user/*.read', 'system/*.read', 'patient/*.write', 'user/*.write', 'system/*.write'];

export function smartConfiguration(baseUrl: string): Record<string, unknown> {
  return {
    issuer: baseUrl,
    jwks_uri: `${baseUrl}/.well-known/jwks.json`,
    grant_types_supported: [],
    code_challenge_methods_supported: ['S256'],
    scopes_supported: SCOPES_SUPPORTED,
    capabilities: ['permission-v1', 'permission-v2', 'permission-patient', 'permission-user'],
  };
}
