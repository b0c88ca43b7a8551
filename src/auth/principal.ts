// Who is asking (SMART App Launch "Scopes and Launch Context"): the verified claims of a bearer token,
// the system principal of a background job, or the unrestricted principal of AUTH=off.
import { parseScopes, type Grant } from './scopes.js';

export interface Principal {
  /** token: a verified bearer token; job: a background job of this server; open: AUTH=off (development only). */
  kind: 'token' | 'job' | 'open' | 'anonymous';
  /** The client (token `client_id`, else `azp`, else `sub`), or the job's name. */
  clientId: string;
  /** The token's subject. */
  subject?: string;
  /** The user the client acts for (fhirUser claim), as a relative reference. */
  fhirUser?: string;
  /** Patient in context (`patient` claim): confines patient/ grants to this Patient's compartment. */
  patient?: string;
  /** The granted scope string as given. */
  scope: string;
  grants: Grant[];
  /** Token id (jti), for revocation and audit; never the token itself. */
  tokenId?: string;
  issuer?: string;
  expiresAt?: Date;
}

/** No credential: may reach only the public endpoints. */
export const ANONYMOUS: Principal = Object.freeze({ kind: 'anonymous', clientId: 'anonymous', scope: '', grants: [] });

/** A background job of this server, with only the scopes it needs (design.md "Jobs"). */
export function jobPrincipal(name: string, scope: string): Principal {
  return { kind: 'job', clientId: `vesta-job:${name}`, scope, grants: parseScopes(scope).grants };
}

/** AUTH=off: every interaction is allowed (local development only; the server warns at start). */
export const OPEN: Principal = Object.freeze({ kind: 'open', clientId: 'auth-off', scope: 'system/*.cruds', grants: parseScopes('system/*.cruds').grants });
