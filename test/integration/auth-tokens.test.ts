// Bearer tokens (RFC 6750, RFC 7519/7515), each attack a test: alg none, HS256 keyed with the public
// key, wrong aud, wrong iss, expired, nbf ahead, unknown kid, a kid matching two keys, a tampered
// payload, a revoked jti. Public endpoints answer without a token; an external issuer is discovered
// with openid-client and its JWKS cached and refetched as configured.
import { AuditTrail } from '../../src/audit/trail.js';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import express from 'express';
import type { Server } from 'node:http';
import { createServer } from 'node:http';
import { decodeProtectedHeader, exportJWK, exportSPKI, generateKeyPair, importJWK, SignJWT, type JWK } from 'jose';
import { publicJwks, rotateSigningRing, signAccessToken } from '../../src/auth/signing-keys.js';
import request from 'supertest';
import { RevocationList } from '../../src/auth/revocations.js';
import { OPEN } from '../../src/auth/principal.js';
import { buildAuth } from '../../src/server.js';
import { capabilities } from '../../src/interactions/capabilities.js';
import { pino } from 'pino';
import { TokenVerifier } from '../../src/auth/token-verifier.js';
import { freePort, startTestServer, TEST_SIGNING_RING, tokenFor, type TestServer } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const now = () => Math.floor(Date.now() / 1000);

/** A fake external issuer: OpenID discovery and a JWKS whose keys the test changes. */
async function fakeIssuer(): Promise<{ url: string; keys: JWK[]; fetches: () => number; close: () => Promise<void>; cacheControl: string }> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const state = { keys: [] as JWK[], fetches: 0, cacheControl: 'max-age=3600' };
  const app = express();
  app.get('/.well-known/openid-configuration', (_req, res) => {
    res.json({ issuer: url, jwks_uri: `${url}/jwks`, authorization_endpoint: `${url}/authorize`, token_endpoint: `${url}/token`, response_types_supported: ['code'], subject_types_supported: ['public'], id_token_signing_alg_values_supported: ['ES256'] });
  });
  app.get('/jwks', (_req, res) => {
    state.fetches++;
    res.setHeader('Cache-Control', state.cacheControl);
    res.json({ keys: state.keys });
  });
  const server: Server = createServer(app);
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', () => r()));
  return {
    url,
    get keys() {
      return state.keys;
    },
    set keys(k: JWK[]) {
      state.keys = k;
    },
    fetches: () => state.fetches,
    get cacheControl() {
      return state.cacheControl;
    },
    set cacheControl(c: string) {
      state.cacheControl = c;
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  } as never;
}

async function esKey(kid: string) {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  return { privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' } as JWK };
}

function b64(o: unknown): string {
  return Buffer.from(JSON.stringify(o)).toString('base64url');
}

describe('bearer tokens', () => {
  let t: TestServer;
  let issuer: Awaited<ReturnType<typeof fakeIssuer>>;
  let ext: Awaited<ReturnType<typeof esKey>>;
  const own = TEST_SIGNING_RING.keys[0];

  beforeAll(async () => {
    issuer = await fakeIssuer();
    ext = await esKey('ext-1');
    issuer.keys = [ext.jwk];
    t = await startTestServer('embedded', { AUTH_ISSUERS: JSON.stringify([{ issuer: issuer.url, audience: 'vesta-test-audience' }]) });
  });
  afterAll(async () => {
    await t.close();
    await issuer.close();
  });

  /** Signs with the server's own key unless told otherwise; the claims of a valid system/*.cruds token by default. */
  async function sign(claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}): Promise<string> {
    const body = { iss: t.url, aud: t.url, sub: 'attacker', client_id: 'attacker', scope: 'system/*.cruds', exp: now() + 300, iat: now(), jti: `j-${Math.random()}`, ...claims };
    return new SignJWT(body).setProtectedHeader({ alg: own.alg, kid: own.kid, ...header }).sign(await importJWK(own, own.alg));
  }

  const get = (token?: string) => {
    const r = request(t.url).get('/Patient');
    return token === undefined ? r : r.set('Authorization', `Bearer ${token}`);
  };

  async function refused(token: string, why: RegExp): Promise<void> {
    const res = await get(token);
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toMatch(/^Bearer error="invalid_token"/);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(res.body.issue[0].code).toBe('login');
    expect(res.body.issue[0].diagnostics).toMatch(why);
    // The token is never echoed.
    expect(JSON.stringify(res.body)).not.toContain(token.slice(-20));
  }

  test('a valid token is accepted; no token is a 401 with WWW-Authenticate: Bearer', async () => {
    expect((await get(await sign())).status).toBe(200);
    const none = await get();
    expect(none.status).toBe(401);
    expect(none.headers['www-authenticate']).toBe('Bearer');
    expect(none.body.resourceType).toBe('OperationOutcome');
    const basic = await request(t.url).get('/Patient').set('Authorization', 'Basic dXNlcjpwYXNz');
    expect(basic.status).toBe(401);
    expect(basic.headers['www-authenticate']).toBe('Bearer');
    const empty = await request(t.url).get('/Patient').set('Authorization', 'Bearer');
    expect(empty.status).toBe(401);
    expect(empty.headers['www-authenticate']).toMatch(/invalid_token/);
    await refused('not.a.jwt', /not a JWT/);
  });

  test('public endpoints need no token: metadata, smart-configuration, JWKS, healthz, readyz', async () => {
    for (const p of ['/metadata', '/.well-known/smart-configuration', '/.well-known/jwks.json', '/healthz', '/readyz']) {
      expect([p, (await request(t.url).get(p)).status]).toEqual([p, 200]);
    }
    const jwks = (await request(t.url).get('/.well-known/jwks.json')).body as { keys: JWK[] };
    expect(jwks.keys.map((k) => k.kid)).toEqual(TEST_SIGNING_RING.keys.map((k) => k.kid));
    for (const k of jwks.keys) expect(k.d).toBeUndefined();
    const smart = (await request(t.url).get('/.well-known/smart-configuration')).body;
    expect(smart.jwks_uri).toBe(`${t.url}/.well-known/jwks.json`);
    expect(smart.capabilities).toEqual(expect.arrayContaining(['permission-v1', 'permission-v2', 'permission-patient']));
    const cap = (await request(t.url).get('/metadata')).body;
    expect(cap.rest[0].security.service[0].coding[0].code).toBe('SMART-on-FHIR');
  });

  test('alg none is refused', async () => {
    const token = `${b64({ alg: 'none', typ: 'JWT' })}.${b64({ iss: t.url, aud: t.url, scope: 'system/*.cruds', exp: now() + 300 })}.`;
    await refused(token, /algorithm/);
  });

  test('HS256 keyed with the public key is refused', async () => {
    const pub = await importJWK({ ...own, d: undefined }, own.alg);
    const pem = await exportSPKI(pub as Parameters<typeof exportSPKI>[0]);
    for (const secret of [pem, JSON.stringify({ ...own, d: undefined })]) {
      const token = await new SignJWT({ iss: t.url, aud: t.url, scope: 'system/*.cruds', exp: now() + 300 })
        .setProtectedHeader({ alg: 'HS256', kid: own.kid })
        .sign(new TextEncoder().encode(secret));
      await refused(token, /algorithm/);
    }
  });

  test('wrong audience, wrong or untrusted issuer, expiry, nbf ahead are refused; skew within the allowance is accepted', async () => {
    await refused(await sign({ aud: 'https://other.example.org/fhir' }), /audience/);
    await refused(await sign({ iss: 'https://evil.example.org' }), /issuer is not trusted/);
    await refused(await sign({ exp: now() - 120 }), /expired/);
    await refused(await sign({ nbf: now() + 120 }), /not valid yet/);
    await refused(await sign({ exp: undefined }), /exp/);
    // AUTH_CLOCK_SKEW defaults to 30 s: 10 s past expiry still passes, 10 s of nbf ahead too.
    expect((await get(await sign({ exp: now() - 10 }))).status).toBe(200);
    expect((await get(await sign({ nbf: now() + 10 }))).status).toBe(200);
  });

  test('an unknown kid and a tampered payload are refused', async () => {
    await refused(await sign({}, { kid: 'no-such-kid' }), /no key/);
    const good = await sign({ scope: 'system/Patient.r' });
    const [h, , s] = good.split('.');
    const forged = `${h}.${b64({ iss: t.url, aud: t.url, sub: 'attacker', scope: 'system/*.cruds', exp: now() + 300 })}.${s}`;
    await refused(forged, /signature/);
    // A valid signature over different bytes: swap the signature of another valid token.
    const other = (await sign()).split('.')[2];
    await refused(`${good.split('.')[0]}.${good.split('.')[1]}.${other}`, /signature/);
  });

  test('a revoked jti is refused, on this node at once and on another node after its refresh', async () => {
    const token = await sign({ jti: 'to-revoke-1' });
    expect((await get(token)).status).toBe(200);
    await t.svc.auth.revocations.revoke('to-revoke-1', new Date(Date.now() + 3600_000));
    await refused(token, /revoked/);
    // Another node: a second list over the same table sees it on its next read.
    const other = new RevocationList(t.svc.db.knex, 0);
    await other.start();
    expect(other.has('to-revoke-1')).toBe(true);
    // A revocation written by "another node" reaches this one on its refresh.
    const token2 = await sign({ jti: 'to-revoke-2' });
    await other.revoke('to-revoke-2', new Date(Date.now() + 3600_000));
    expect((await get(token2)).status).toBe(200);
    await t.svc.auth.revocations.refresh();
    await refused(token2, /revoked/);
  });

  test('an external issuer: discovered, its JWKS used; a kid matching two keys is refused', async () => {
    const signExt = (claims: Record<string, unknown> = {}, kid = 'ext-1', key = ext.privateKey) =>
      new SignJWT({ iss: issuer.url, aud: 'vesta-test-audience', sub: 'svc', scope: 'system/Patient.rs', exp: now() + 300, ...claims }).setProtectedHeader({ alg: 'ES256', kid }).sign(key);
    expect((await get(await signExt())).status).toBe(200);
    await refused(await signExt({ aud: t.url }), /audience/);
    // Vesta's own audience does not apply to an external issuer's tokens, nor its keys.
    await refused(await sign({ iss: issuer.url, aud: 'vesta-test-audience' }), /no key|signature/);
    // Scopes from an external token are enforced like any other.
    expect((await request(t.url).get('/Observation').set('Authorization', `Bearer ${await signExt()}`)).status).toBe(403);

    const twin = await esKey('dup');
    const twin2 = await esKey('dup');
    const v = new TokenVerifier({ ownIssuer: 'https://self.invalid', ownAudience: 'x', ownKeys: { keys: [] }, external: [{ issuer: issuer.url, audience: 'vesta-test-audience' }], skewSeconds: 30, revocations: t.svc.auth.revocations });
    issuer.keys = [ext.jwk, twin.jwk, twin2.jwk];
    await expect(v.verify(await signExt({}, 'dup', twin.privateKey))).rejects.toThrow(/several keys/);
    issuer.keys = [ext.jwk];
  });

  test('a remote JWKS is kept as Cache-Control allows and refetched on an unknown kid at most once a minute', async () => {
    let clock = Date.now();
    issuer.cacheControl = 'max-age=600';
    const v = new TokenVerifier({ ownIssuer: 'https://self.invalid', ownAudience: 'x', ownKeys: { keys: [] }, external: [{ issuer: issuer.url, audience: 'aud' }], skewSeconds: 30, revocations: t.svc.auth.revocations, clock: () => new Date(clock) });
    const signWith = (key: Parameters<SignJWT["sign"]>[0], kid: string) => new SignJWT({ iss: issuer.url, aud: 'aud', scope: 'system/*.rs', exp: Math.floor(clock / 1000) + 3000 }).setProtectedHeader({ alg: 'ES256', kid }).sign(key);
    const before = issuer.fetches();
    await v.verify(await signWith(ext.privateKey, 'ext-1'));
    await v.verify(await signWith(ext.privateKey, 'ext-1'));
    expect(issuer.fetches() - before).toBe(1);
    // The issuer rotates: a new kid. Within a minute of the last fetch the JWKS is not fetched again.
    const next = await esKey('ext-2');
    issuer.keys = [ext.jwk, next.jwk];
    clock += 20_000;
    await expect(v.verify(await signWith(next.privateKey, 'ext-2'))).rejects.toThrow(/no key/);
    await expect(v.verify(await signWith(next.privateKey, 'ext-2'))).rejects.toThrow(/no key/);
    expect(issuer.fetches() - before).toBe(1);
    // A minute after the last fetch, an unknown kid triggers one refetch.
    clock += 41_000;
    await v.verify(await signWith(next.privateKey, 'ext-2'));
    expect(issuer.fetches() - before).toBe(2);
    // After max-age (600 s) the JWKS is refetched even for a known kid.
    clock += 601_000;
    await v.verify(await signWith(next.privateKey, 'ext-2'));
    expect(issuer.fetches() - before).toBe(3);
    issuer.keys = [ext.jwk];
  });

  test('after a signing-key rotation, tokens signed with the older key still verify; new ones use the new kid', async () => {
    const rotated = await rotateSigningRing(TEST_SIGNING_RING);
    const verifier = (ring: typeof rotated) => new TokenVerifier({ ownIssuer: t.url, ownAudience: t.url, ownKeys: publicJwks(ring), external: [], skewSeconds: 30, revocations: t.svc.auth.revocations });
    // Each rotation adds an ES256 access-token key (the active one) and an RS256 id-token key.
    expect(publicJwks(rotated).keys.filter((k) => k.alg === 'ES256').map((k) => k.kid)).toEqual([TEST_SIGNING_RING.active, rotated.active]);
    expect(publicJwks(rotated).keys.filter((k) => k.alg === 'RS256')).toHaveLength(2);
    const old = await tokenFor(t.url);
    expect((await verifier(rotated).verify(old)).scope).toBe('system/*.cruds');
    const fresh = await signAccessToken(rotated, { issuer: t.url, audience: t.url, subject: 'ops', clientId: 'ops', scope: 'system/Patient.s', ttlSeconds: 60 });
    expect(decodeProtectedHeader(fresh.token).kid).toBe(rotated.active);
    expect((await verifier(rotated).verify(fresh.token)).scope).toBe('system/Patient.s');
    // A ring without the old key (retired): its tokens no longer verify.
    const retired = { active: rotated.active, keys: rotated.keys.filter((k) => k.kid === rotated.active) };
    await expect(verifier(retired).verify(old)).rejects.toThrow(/no key/);
  });

  test('AUTH=off warns at start, lets every request through, and the CapabilityStatement says no security applies', async () => {
    const lines: string[] = [];
    const log = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) });
    const off = await buildAuth({ ...t.svc.config, auth: false }, log, t.svc.db);
    try {
      expect(lines.join('')).toMatch(/AUTH=off/);
      expect((await off.authenticate(undefined)).kind).toBe('open');
      const cap = await capabilities({ ...t.svc, auth: off }, { requestId: 'x', principal: OPEN, clock: () => new Date(), baseUrl: 'http://auth-off.invalid', audit: new AuditTrail('capabilities') });
      const sec = (cap.body as unknown as { rest: { security: { description: string; service?: unknown } }[] }).rest[0].security;
      expect(sec.description).toMatch(/NO SECURITY APPLIES/);
      expect(sec.service).toBeUndefined();
    } finally {
      off.close();
    }
  });

  test('a token made for this server by the test ring works with the scopes it carries', async () => {
    const only = await tokenFor(t.url, { scope: 'system/Patient.c' });
    expect((await request(t.url).post('/Patient').set('Authorization', `Bearer ${only}`).set('Content-Type', FHIR).send({ resourceType: 'Patient' })).status).toBe(201);
    const denied = await request(t.url).get('/Patient').set('Authorization', `Bearer ${only}`);
    expect(denied.status).toBe(403);
    expect(denied.body.issue[0].code).toBe('forbidden');
    expect(denied.body.issue[0].diagnostics).toMatch(/"s" \(search\) on Patient/);
  });
});
