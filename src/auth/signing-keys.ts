// Vesta's own token-signing key ring (RFC 7515/7517): private JWKs with kids, one active. New tokens
// are signed with the active key; every key of the ring verifies until it is removed, so a rotation
// never breaks tokens already issued. The public half is published as the server's JWKS.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { exportJWK, generateKeyPair, importJWK, SignJWT, type JWK, type JSONWebKeySet } from 'jose';

export const SIGNING_ALG = 'ES256';

export interface SigningRingFile {
  active: string;
  keys: (JWK & { kid: string; alg: string })[];
}

export class SigningRingError extends Error {}

/** OpenID Connect id tokens are RS256 (SMART App Launch "sso-openid-connect"); the ring keeps one beside the ES256 access-token key. */
export const ID_TOKEN_ALG = 'RS256';

async function newKey(alg: string = SIGNING_ALG): Promise<JWK & { kid: string; alg: string }> {
  const { privateKey } = await generateKeyPair(alg, { extractable: true, ...(alg.startsWith('RS') ? { modulusLength: 2048 } : {}) });
  const jwk = await exportJWK(privateKey);
  const prefix = alg === SIGNING_ALG ? 'sig' : `sig-${alg.toLowerCase()}`;
  return { ...jwk, kid: `${prefix}-${new Date().toISOString().slice(0, 10)}-${randomBytes(4).toString('hex')}`, alg, use: 'sig' };
}

/** A new ring: the ES256 key that signs access tokens (active) and an RS256 key for id tokens. */
export async function generateSigningRing(): Promise<SigningRingFile> {
  const [k, id] = await Promise.all([newKey(), newKey(ID_TOKEN_ALG)]);
  return { active: k.kid, keys: [k, id] };
}

/**
 * Adds a new active access-token key and a new id-token key (the newest RS256 key signs id tokens);
 * the older ones keep verifying the tokens they signed until removed.
 */
export async function rotateSigningRing(ring: SigningRingFile): Promise<SigningRingFile> {
  const [k, id] = await Promise.all([newKey(), newKey(ID_TOKEN_ALG)]);
  return { active: k.kid, keys: [...ring.keys, k, id] };
}

const ALLOWED = new Set(['RS256', 'RS384', 'ES256', 'ES384']);

export function checkSigningRing(raw: unknown): SigningRingFile {
  const r = raw as SigningRingFile;
  if (!r || typeof r !== 'object' || !Array.isArray(r.keys) || !r.keys.length) throw new SigningRingError('signing key ring: "keys" must list at least one key');
  for (const k of r.keys) {
    if (typeof k.kid !== 'string' || !k.kid || !ALLOWED.has(k.alg) || typeof k.d !== 'string') {
      throw new SigningRingError('signing key ring: every key must be a private JWK with a kid and alg RS256, RS384, ES256 or ES384');
    }
  }
  if (new Set(r.keys.map((k) => k.kid)).size !== r.keys.length) throw new SigningRingError('signing key ring: duplicate kid');
  if (!r.keys.some((k) => k.kid === r.active)) throw new SigningRingError('signing key ring: "active" must name one of the keys');
  return r;
}

/** Reads the ring file, or creates it (mode 0600) when `create` and it does not exist. */
export async function readOrCreateSigningRing(path: string, create: boolean): Promise<{ ring: SigningRingFile; created: boolean }> {
  if (existsSync(path)) return { ring: checkSigningRing(JSON.parse(readFileSync(path, 'utf8'))), created: false };
  if (!create) throw new SigningRingError(`signing key ring ${path} does not exist (create one with: vesta keys init-signing > ${path})`);
  const ring = await generateSigningRing();
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify(ring, null, 2) + '\n', { mode: 0o600, flag: 'wx' });
  return { ring, created: true };
}

/** The public JWKS of the ring (private members removed). */
export function publicJwks(ring: SigningRingFile): JSONWebKeySet {
  return {
    keys: ring.keys.map((k) => {
      const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, oth: _oth, k: _k, ...pub } = k;
      return { ...pub, use: 'sig' };
    }),
  };
}

export interface TokenClaims {
  issuer: string;
  audience: string;
  subject: string;
  clientId: string;
  scope: string;
  ttlSeconds: number;
  patient?: string;
  fhirUser?: string;
  now?: Date;
}

/** Signs an access token (a JWT as RFC 9068 shapes it, with SMART's scope and context claims). */
export async function signAccessToken(ring: SigningRingFile, c: TokenClaims): Promise<{ token: string; jti: string; expiresAt: Date }> {
  const key = ring.keys.find((k) => k.kid === ring.active)!;
  const now = Math.floor((c.now ?? new Date()).getTime() / 1000);
  const jti = randomBytes(16).toString('base64url');
  const token = await new SignJWT({ scope: c.scope, client_id: c.clientId, ...(c.patient ? { patient: c.patient } : {}), ...(c.fhirUser ? { fhirUser: c.fhirUser } : {}) })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'at+jwt' })
    .setIssuer(c.issuer)
    .setAudience(c.audience)
    .setSubject(c.subject)
    .setJti(jti)
    .setIssuedAt(now)
    .setExpirationTime(now + c.ttlSeconds)
    .sign(await importJWK(key, key.alg));
  return { token, jti, expiresAt: new Date((now + c.ttlSeconds) * 1000) };
}
