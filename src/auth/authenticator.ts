// The resource server's side of SMART on FHIR (RFC 6750): turns the Authorization header into a
// verified Principal. The token-verification machinery is token-verifier.ts; the key ring is
// signing-keys.ts; revocations.ts shares revoked token ids between nodes.
import type { JSONWebKeySet } from 'jose';
import { FhirError } from '../fhir/errors.js';
import { ANONYMOUS, OPEN, type Principal } from './principal.js';
import type { RevocationList } from './revocations.js';
import { publicJwks, signAccessToken, type SigningRingFile, type TokenClaims } from './signing-keys.js';
import { TokenVerifier, invalidToken, type ExternalIssuer } from './token-verifier.js';

export interface AuthServiceOptions {
  enabled: boolean;
  issuer: string;
  audience: string;
  ring: SigningRingFile;
  external: ExternalIssuer[];
  skewSeconds: number;
  revocations: RevocationList;
}

export class AuthService {
  readonly enabled: boolean;
  readonly issuer: string;
  readonly audience: string;
  readonly revocations: RevocationList;
  private readonly verifier: TokenVerifier;
  private readonly jwks: JSONWebKeySet;

  constructor(private readonly opts: AuthServiceOptions) {
    this.enabled = opts.enabled;
    this.issuer = opts.issuer;
    this.audience = opts.audience;
    this.revocations = opts.revocations;
    this.jwks = publicJwks(opts.ring);
    this.verifier = new TokenVerifier({
      ownIssuer: opts.issuer,
      ownAudience: opts.audience,
      ownKeys: this.jwks,
      external: opts.external,
      skewSeconds: opts.skewSeconds,
      revocations: opts.revocations,
    });
  }

  /** The private signing ring (the built-in authorization server signs with it). */
  signingRing(): SigningRingFile {
    return this.opts.ring;
  }

  /** The public keys that verify Vesta's own tokens (served at [base]/.well-known/jwks.json). */
  publicKeys(): JSONWebKeySet {
    return this.jwks;
  }

  /**
   * The principal of a request: ANONYMOUS without credentials (public endpoints only), the verified
   * token's principal, or a 401 for a malformed or invalid bearer token. With AUTH=off, OPEN.
   */
  async authenticate(authorization: string | undefined): Promise<Principal> {
    if (!this.enabled) return OPEN;
    if (authorization === undefined || authorization === '') return ANONYMOUS;
    const m = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i.exec(authorization);
    if (!m) {
      if (/^Bearer\b/i.test(authorization)) throw invalidToken('malformed Authorization header');
      // Another scheme (Basic, ...): as if no bearer token was sent.
      throw new FhirError('unauthorized', 'this server accepts only bearer tokens (Authorization: Bearer <token>)', { headers: { 'WWW-Authenticate': 'Bearer' } });
    }
    if (m[1].length > 16384) throw invalidToken('the token is too long');
    return this.verifier.verify(m[1]);
  }

  /** Signs a token with the active key of the ring (the `vesta token` command and tests). */
  issue(claims: Omit<TokenClaims, 'issuer' | 'audience'>) {
    return signAccessToken(this.opts.ring, { ...claims, issuer: this.issuer, audience: this.audience });
  }

  close(): void {
    this.revocations.stop();
  }
}
