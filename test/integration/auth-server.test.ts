// The built-in SMART authorization server (issue 15): discovery, App Launch (standalone and EHR)
// through the sign-in pages, Backend Services, introspection, revocation, and the attacks the issue
// lists, each refused. Drives the server over HTTP as an app and a browser would.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { exportJWK, generateKeyPair, SignJWT, decodeJwt, jwtVerify, createRemoteJWKSet, type JWK } from 'jose';
import { concurrencyBackends, startTestServer, type TestServer, authed } from '../support/backends.js';
import { Browser, hidden, action } from '../support/browser.js';
import { addClient, addUser } from '../../src/auth-server/admin.js';

const backend = concurrencyBackends()[0];
const REDIRECT = 'http://127.0.0.1:9/callback';
let t: TestServer;
let base: string;
let tokenUrl: string;

const b64url = (b: Buffer) => b.toString('base64url');
function pkce() {
  const verifier = b64url(randomBytes(32));
  return { verifier, challenge: b64url(createHash('sha256').update(verifier).digest()) };
}

interface Keys {
  kid: string;
  alg: 'ES384' | 'RS384';
  privateKey: CryptoKey;
  publicJwk: JWK;
}
async function keyPair(alg: 'ES384' | 'RS384'): Promise<Keys> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const kid = `${alg}-${randomBytes(4).toString('hex')}`;
  return { kid, alg, privateKey: privateKey as CryptoKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}
let es384: Keys;
let rs384: Keys;

async function assertion(clientId: string, k: Keys, over: { aud?: string; exp?: number; jti?: string; sub?: string; iss?: string; header?: Record<string, unknown> } = {}) {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({})
    .setProtectedHeader({ alg: k.alg, kid: k.kid, typ: 'JWT', ...(over.header ?? {}) })
    .setIssuer(over.iss ?? clientId)
    .setSubject(over.sub ?? clientId)
    .setAudience(over.aud ?? tokenUrl)
    .setJti(over.jti ?? b64url(randomBytes(12)))
    .setIssuedAt(now)
    .setExpirationTime(over.exp ?? now + 240)
    .sign(k.privateKey);
}

async function backendToken(clientId: string, k: Keys, scope = 'system/*.rs', over: Parameters<typeof assertion>[2] = {}) {
  const res = await fetch(tokenUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'client_credentials',
      scope,
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: await assertion(clientId, k, over),
    }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown>, headers: res.headers };
}

/** Runs an authorization request through login, picker and consent; returns the redirect back to the app. */
async function authorize(
  o: { clientId?: string; scope: string; user?: string; password?: string; launch?: string; pick?: string; challenge?: string; method?: string; aud?: string; redirect?: string; uncheck?: string[] },
  browser = new Browser(),
): Promise<{ location: URL; browser: Browser; pages: string[] }> {
  const p = new URLSearchParams({
    response_type: 'code',
    client_id: o.clientId ?? 'app-public',
    redirect_uri: o.redirect ?? REDIRECT,
    scope: o.scope,
    state: 'st-123',
    aud: o.aud ?? base,
  });
  if (o.challenge !== '') p.set('code_challenge', o.challenge ?? pkce().challenge);
  if (o.method !== '') p.set('code_challenge_method', o.method ?? 'S256');
  if (o.launch) p.set('launch', o.launch);
  const atApp = (l: string) => l.startsWith('http://127.0.0.1:9/');
  const pages: string[] = [];
  let page = await browser.go(`${base}/auth/authorize?${p}`, {}, atApp);
  for (let step = 0; step < 6 && page.status !== 0; step++) {
    pages.push(page.html);
    if (page.status !== 200) throw new Error(`sign-in page ${page.url} answered ${page.status}: ${page.html.slice(0, 400)}`);
    const csrf = page.html.includes('name="csrf"') ? hidden(page.html, 'csrf') : '';
    if (page.html.includes('name="password"')) {
      page = await browser.go(action(page.html, '/login'), { form: { csrf, username: o.user ?? 'doc', password: o.password ?? 'doc-password-1' } }, atApp);
    } else if (page.html.includes('Choose a patient')) {
      if (!page.html.includes('<table>')) {
        page = await browser.go(`${page.url.replace(/\?.*$/, '')}?name=${encodeURIComponent('Pick')}`, {}, atApp);
        continue;
      }
      page = await browser.go(action(page.html, '/patient'), { form: { csrf, patient: o.pick ?? 'pt1' } }, atApp);
    } else if (page.html.includes('Allow access')) {
      const scopes = [...page.html.matchAll(/name="scope" value="([^"]*)"/g)].map((m) => m[1]).filter((s) => !(o.uncheck ?? []).includes(s));
      page = await browser.go(action(page.html, '/consent'), { form: { csrf, scope: scopes } }, atApp);
    } else throw new Error(`unexpected page: ${page.html.slice(0, 400)}`);
  }
  if (page.status !== 0) throw new Error(`the flow did not return to the app: ${pages.map((p) => /<title>([^<]*)/.exec(p)?.[1]).join(' > ')} > ${page.status} ${page.html.slice(page.html.indexOf('<body>'), page.html.indexOf('<body>') + 1500)}`);
  return { location: new URL(page.url), browser, pages };
}

async function exchange(code: string, verifier: string, extra: Record<string, string> = {}) {
  const res = await fetch(tokenUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT, client_id: 'app-public', code_verifier: verifier, ...extra }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown>, headers: res.headers };
}

beforeAll(async () => {
  t = await startTestServer(backend, { AUTH_JWKS_URI_LOOPBACK: 'on' });
  base = t.svc.config.baseUrl;
  tokenUrl = `${base}/auth/token`;
  es384 = await keyPair('ES384');
  rs384 = await keyPair('RS384');
  const api = authed(t);
  await api.put('/Patient/pt1').send({ resourceType: 'Patient', id: 'pt1', name: [{ family: 'Picker', given: ['Pat'] }], birthDate: '1970-01-01' }).expect(201);
  await api.put('/Patient/pt2').send({ resourceType: 'Patient', id: 'pt2', name: [{ family: 'Other', given: ['Olga'] }] }).expect(201);
  await api.put('/Encounter/enc1').send({ resourceType: 'Encounter', id: 'enc1', status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, subject: { reference: 'Patient/pt1' } }).expect(201);
  const q = t.svc.db.knex;
  await addUser(q, { username: 'doc', password: 'doc-password-1', fhirUser: 'Practitioner/p1' });
  await addUser(q, { username: 'pat', password: 'pat-password-1', fhirUser: 'Patient/pt1' });
  const loop = { allowLoopbackJwksUri: true };
  await addClient(q, { client_id: 'app-public', type: 'public', redirect_uris: [REDIRECT], scope: 'openid fhirUser launch launch/patient offline_access online_access patient/*.rs user/*.rs' }, loop);
  await addClient(q, { client_id: 'app-other', type: 'public', redirect_uris: ['http://127.0.0.1:9/other'], scope: 'launch/patient patient/*.rs' }, loop);
  await addClient(q, { client_id: 'backend', type: 'confidential-asymmetric', redirect_uris: [], scope: 'system/*.rs', jwks: { keys: [es384.publicJwk, rs384.publicJwk] } }, loop);
}, 120_000);

afterAll(async () => {
  await t?.close();
});

describe(`SMART authorization server (${backend})`, () => {
  test('discovery: smart-configuration has every REQUIRED field with absolute URLs', async () => {
    const res = await fetch(`${base}/.well-known/smart-configuration`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    const c = (await res.json()) as Record<string, unknown>;
    for (const k of ['issuer', 'jwks_uri', 'authorization_endpoint', 'token_endpoint', 'grant_types_supported', 'capabilities', 'code_challenge_methods_supported', 'introspection_endpoint', 'revocation_endpoint']) expect(c[k]).toBeDefined();
    for (const k of ['issuer', 'jwks_uri', 'authorization_endpoint', 'token_endpoint', 'introspection_endpoint', 'revocation_endpoint']) expect(new URL(String(c[k])).href.startsWith('http')).toBe(true);
    expect(c.code_challenge_methods_supported).toEqual(['S256']);
    expect(c.grant_types_supported).toEqual(expect.arrayContaining(['authorization_code', 'client_credentials', 'refresh_token']));
    for (const cap of ['launch-ehr', 'launch-standalone', 'client-public', 'client-confidential-asymmetric', 'context-ehr-patient', 'context-ehr-encounter', 'context-standalone-patient', 'sso-openid-connect', 'permission-v1', 'permission-v2', 'permission-patient', 'permission-user', 'permission-offline', 'authorize-post'])
      expect(c.capabilities).toContain(cap);
  });

  test('standalone launch: login, picker, consent, code exchange, token with patient', async () => {
    const { verifier, challenge } = pkce();
    const { location, pages } = await authorize({ scope: 'launch/patient openid fhirUser offline_access patient/*.rs', challenge });
    expect(location.searchParams.get('state')).toBe('st-123');
    const code = location.searchParams.get('code')!;
    expect(pages.some((p) => p.includes('Choose a patient'))).toBe(true);
    const r = await exchange(code, verifier);
    expect(r.status).toBe(200);
    expect(r.headers.get('cache-control')).toBe('no-store');
    expect(r.headers.get('pragma')).toBe('no-cache');
    expect(r.body).toMatchObject({ token_type: 'Bearer', patient: 'pt1', need_patient_banner: true });
    expect(String(r.body.scope).split(' ').sort()).toEqual(['fhirUser', 'launch/patient', 'offline_access', 'openid', 'patient/*.rs']);
    expect(typeof r.body.refresh_token).toBe('string');
    expect(typeof r.body.id_token).toBe('string');
    const read = await fetch(`${base}/Patient/pt1`, { headers: { authorization: `Bearer ${String(r.body.access_token)}` } });
    expect(read.status).toBe(200);
    const other = await fetch(`${base}/Patient/pt2`, { headers: { authorization: `Bearer ${String(r.body.access_token)}` } });
    expect(other.status).toBe(404);
    const { payload, protectedHeader } = await jwtVerify(String(r.body.id_token), createRemoteJWKSet(new URL(`${base}/.well-known/jwks.json`)), { issuer: base, audience: 'app-public' });
    expect(protectedHeader.alg).toBe('RS256');
    expect(payload.fhirUser).toBe(`${base}/Practitioner/p1`);
  });
});
