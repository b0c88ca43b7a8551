// The built-in SMART authorization server (issue 15): discovery, App Launch (standalone and EHR)
// through the sign-in pages, Backend Services, introspection, revocation, and the attacks the issue
// lists, each refused. Drives the server over HTTP as an app and a browser would.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { exportJWK, generateKeyPair, SignJWT, decodeJwt, jwtVerify, createRemoteJWKSet, type JWK } from 'jose';
import { concurrencyBackends, startTestServer, type TestServer, authed } from '../support/backends.js';
import { Browser, hidden, action } from '../support/browser.js';
import { prng } from '../support/prng.js';
import { addClient, addUser } from '../../src/auth-server/admin.js';
import { pino } from 'pino';
import { RevocationList } from '../../src/auth/revocations.js';
import { createServer, type Server } from 'node:http';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Every log line of the server, and every secret handed out or typed: no line may contain one. */
const logLines: string[] = [];
const secrets: string[] = ['doc-password-1', 'pat-password-1', 'victim-password-1'];

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
  const body = (await res.json()) as Record<string, unknown>;
  if (typeof body.access_token === 'string') secrets.push(body.access_token);
  return { status: res.status, body, headers: res.headers };
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
  const code = page.status === 0 ? new URL(page.url).searchParams.get('code') : null;
  if (code) secrets.push(code);
  if (page.status !== 0) throw new Error(`the flow did not return to the app: ${pages.map((p) => /<title>([^<]*)/.exec(p)?.[1]).join(' > ')} > ${page.status} ${page.html.slice(page.html.indexOf('<body>'), page.html.indexOf('<body>') + 1500)}`);
  return { location: new URL(page.url), browser, pages };
}

async function exchange(code: string, verifier: string, extra: Record<string, string> = {}) {
  const res = await fetch(tokenUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT, client_id: 'app-public', code_verifier: verifier, ...extra }),
  });
  const body = (await res.json()) as Record<string, unknown>;
  for (const k of ['access_token', 'refresh_token', 'id_token']) if (typeof body[k] === 'string') secrets.push(body[k] as string);
  return { status: res.status, body, headers: res.headers };
}

beforeAll(async () => {
  t = await startTestServer(backend, { AUTH_JWKS_URI_LOOPBACK: 'on' }, { log: pino({ level: 'info' }, { write: (l: string) => void logLines.push(l) }) });
  base = t.svc.config.baseUrl;
  tokenUrl = `${base}/auth/token`;
  es384 = await keyPair('ES384');
  rs384 = await keyPair('RS384');
  const api = authed(t);
  await api.put('/Patient/pt1').send({ resourceType: 'Patient', id: 'pt1', name: [{ family: 'Picker', given: ['Pat'] }], birthDate: '1970-01-01' }).expect(201);
  await api.put('/Practitioner/p1').send({ resourceType: 'Practitioner', id: 'p1', name: [{ family: 'Doctor' }] }).expect(201);
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
    // The CapabilityStatement carries the same endpoints (SMART oauth-uris extension).
    const cs = (await (await fetch(`${base}/metadata`)).json()) as { rest: { security: { extension?: { url: string; extension: { url: string; valueUri: string }[] }[] } }[] };
    const uris = cs.rest[0].security.extension?.find((e) => e.url === 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris');
    expect(Object.fromEntries((uris?.extension ?? []).map((e) => [e.url, e.valueUri]))).toEqual({
      authorize: c.authorization_endpoint,
      token: c.token_endpoint,
      introspect: c.introspection_endpoint,
      revoke: c.revocation_endpoint,
    });
    // OpenID Connect discovery at the issuer names the same endpoints.
    const oidc = (await (await fetch(`${base}/.well-known/openid-configuration`)).json()) as Record<string, unknown>;
    expect([oidc.issuer, oidc.authorization_endpoint, oidc.token_endpoint]).toEqual([c.issuer, c.authorization_endpoint, c.token_endpoint]);
    expect(oidc.code_challenge_methods_supported).toEqual(['S256']);
    expect([oidc.introspection_endpoint, oidc.revocation_endpoint, oidc.jwks_uri]).toEqual([c.introspection_endpoint, c.revocation_endpoint, c.jwks_uri]);
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
    // fhirUser resolves: the user's own record, read with a user-scoped token.
    const p2 = pkce();
    const { location: l2 } = await authorize({ scope: 'openid fhirUser user/Practitioner.rs', challenge: p2.challenge });
    const r2 = await exchange(l2.searchParams.get('code')!, p2.verifier);
    const idt = decodeJwt(String(r2.body.id_token));
    const me = await fetch(String(idt.fhirUser), { headers: { authorization: `Bearer ${String(r2.body.access_token)}` } });
    expect([me.status, ((await me.json()) as { id: string }).id]).toEqual([200, 'p1']);
  });

  test('sign-in cookies are HttpOnly and SameSite; pages forbid framing and scripts', async () => {
    const b = new Browser();
    const p = new URLSearchParams({ response_type: 'code', client_id: 'app-public', redirect_uri: REDIRECT, scope: 'patient/*.rs', state: 's', aud: base, code_challenge: pkce().challenge, code_challenge_method: 'S256' });
    const first = await b.fetch(`${base}/auth/authorize?${p}`);
    const cookies = first.headers.getSetCookie();
    expect(cookies.length).toBeGreaterThan(0);
    for (const c of cookies) expect([c.split('=')[0], /;\s*httponly/i.test(c), /;\s*samesite=lax/i.test(c)]).toEqual([c.split('=')[0], true, true]);
    const page = await b.go(new URL(first.headers.get('location')!, base).href);
    expect(page.headers.get('x-frame-options')).toBe('DENY');
    expect(page.headers.get('content-security-policy')).toMatch(/default-src 'none'/);
    // form-action would also govern the redirects after the consent form: Chromium then blocks the way
    // back to the app (seen with a real browser).
    expect(page.headers.get('content-security-policy')).not.toMatch(/form-action/);
    expect(page.html).not.toMatch(/<script/i);
  });

  test('consent: the user may grant fewer scopes; the token says what was granted', async () => {
    const { verifier, challenge } = pkce();
    const { location } = await authorize({ scope: 'launch/patient patient/*.rs openid fhirUser', challenge, uncheck: ['openid', 'fhirUser'] });
    const r = await exchange(location.searchParams.get('code')!, verifier);
    expect(r.status).toBe(200);
    expect(String(r.body.scope).split(' ').sort()).toEqual(['launch/patient', 'patient/*.rs']);
    expect(r.body.id_token).toBeUndefined();
  });

  test('a client never gets more than its registration allows', async () => {
    // app-other may have launch/patient and patient/*.rs only. A clinical scope beyond that is
    // dropped (the consent page says so); an OpenID or refresh scope it may not have fails the request.
    const p = pkce();
    const { location, pages } = await authorize({ clientId: 'app-other', redirect: 'http://127.0.0.1:9/other', scope: 'launch/patient patient/Observation.rs user/*.rs patient/*.cruds', challenge: p.challenge });
    expect(pages.at(-1)).toMatch(/<code>user\/\*\.rs<\/code> \(not allowed for this app\)/);
    expect(pages.at(-1)).toMatch(/<code>patient\/\*\.cruds<\/code> \(not allowed for this app\)/);
    const oidcScope = await authorize({ clientId: 'app-other', redirect: 'http://127.0.0.1:9/other', scope: 'launch/patient patient/*.rs openid offline_access' });
    expect([oidcScope.location.searchParams.get('error'), oidcScope.location.searchParams.get('code')]).toEqual(['invalid_scope', null]);
    const res = await fetch(tokenUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'authorization_code', code: location.searchParams.get('code')!, redirect_uri: 'http://127.0.0.1:9/other', client_id: 'app-other', code_verifier: p.verifier }),
    });
    const body = (await res.json()) as Record<string, unknown>;
    expect(res.status).toBe(200);
    secrets.push(String(body.access_token));
    expect(String(body.scope).split(' ').sort()).toEqual(['launch/patient', 'patient/Observation.rs']);
    expect(body.refresh_token).toBeUndefined();
  });

  test('online_access also gives a refresh token (one that ends with the sign-in session)', async () => {
    const { verifier, challenge } = pkce();
    const { location } = await authorize({ scope: 'launch/patient patient/*.rs online_access', challenge });
    const r = await exchange(location.searchParams.get('code')!, verifier);
    expect(String(r.body.scope).split(' ')).toContain('online_access');
    expect(typeof r.body.refresh_token).toBe('string');
  });

  test('the picker offers and accepts only patients the user may read: a posted id cannot get around it', async () => {
    // The nurse may read one patient (pt1), not pt2.
    await addUser(t.svc.db.knex, { username: 'nurse', password: 'nurse-password-1', fhirUser: 'Practitioner/p2', scopes: 'user/Patient.rs?_id=pt1 patient/*.rs' });
    const b = new Browser();
    const p = new URLSearchParams({ response_type: 'code', client_id: 'app-public', redirect_uri: REDIRECT, scope: 'launch/patient patient/*.rs', state: 's', aud: base, code_challenge: pkce().challenge, code_challenge_method: 'S256' });
    const login = await b.go(`${base}/auth/authorize?${p}`);
    const picker = await b.go(action(login.html, '/login'), { form: { csrf: hidden(login.html, 'csrf'), username: 'nurse', password: 'nurse-password-1' } });
    expect(picker.html).toContain('Choose a patient');
    const self = picker.url.replace(/\?.*$/, '');
    expect((await b.go(`${self}?name=Other`)).html).not.toContain('<table>');
    const found = await b.go(`${self}?name=Picker`);
    expect(found.html).toContain('value="pt1"');
    const forged = await b.fetch(action(found.html, '/patient'), { form: { csrf: hidden(found.html, 'csrf'), patient: 'pt2' } });
    expect(forged.status).toBe(400);
    expect(await forged.text()).toContain('That patient cannot be chosen.');
  });

  test('a patient user needs no picker and gets their own record; never user/ scopes', async () => {
    const { verifier, challenge } = pkce();
    const { location, pages } = await authorize({ scope: 'launch/patient patient/*.rs user/*.rs', challenge, user: 'pat', password: 'pat-password-1' });
    expect(pages.some((p) => p.includes('Choose a patient'))).toBe(false);
    const r = await exchange(location.searchParams.get('code')!, verifier);
    expect(r.body.patient).toBe('pt1');
    expect(String(r.body.scope).split(' ').sort()).toEqual(['launch/patient', 'patient/*.rs']);
  });

  test('EHR launch: the launch id resolves to patient and encounter; a used launch id is refused', async () => {
    const created = await fetch(`${base}/auth/launch`, {
      method: 'POST',
      headers: { authorization: `Bearer ${t.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ patient: 'pt1', encounter: 'Encounter/enc1', fhirContext: [{ reference: 'Encounter/enc1' }] }),
    });
    expect(created.status).toBe(201);
    const { launch, expires_in } = (await created.json()) as { launch: string; expires_in: number };
    expect(expires_in).toBeLessThanOrEqual(300);
    const { verifier, challenge } = pkce();
    const { location, pages } = await authorize({ scope: 'launch patient/*.rs', launch, challenge });
    expect(pages.some((p) => p.includes('Choose a patient'))).toBe(false);
    const r = await exchange(location.searchParams.get('code')!, verifier);
    expect(r.body).toMatchObject({ patient: 'pt1', encounter: 'enc1', fhirContext: [{ reference: 'Encounter/enc1' }], need_patient_banner: false });
    const again = await authorize({ scope: 'launch patient/*.rs', launch });
    expect(again.location.searchParams.get('error')).toBe('invalid_request');
    expect(again.location.searchParams.get('code')).toBeNull();
    // Creating a launch context needs a system-scoped token.
    const patientToken = String(r.body.access_token);
    const denied = await fetch(`${base}/auth/launch`, { method: 'POST', headers: { authorization: `Bearer ${patientToken}`, 'content-type': 'application/json' }, body: '{"patient":"pt1"}' });
    expect(denied.status).toBe(403);
    const unknown = await fetch(`${base}/auth/launch`, { method: 'POST', headers: { authorization: `Bearer ${t.token}`, 'content-type': 'application/json' }, body: '{"patient":"nope"}' });
    expect(unknown.status).toBe(400);
  });

  test('authorize-post: a form POST to the authorization endpoint continues as the same request', async () => {
    const res = await fetch(`${base}/auth/authorize`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'response_type=code&client_id=app-public&state=x', redirect: 'manual' });
    expect(res.status).toBe(303);
    expect(res.headers.get('location')).toBe(`${base}/auth/authorize?response_type=code&client_id=app-public&state=x`);
  });

  test('browser apps may call the token endpoint cross-origin (CORS preflight and response)', async () => {
    const pre = await fetch(tokenUrl, { method: 'OPTIONS', headers: { origin: 'https://app.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' } });
    expect([pre.status, pre.headers.get('access-control-allow-origin')]).toEqual([204, '*']);
    const res = await fetch(tokenUrl, { method: 'POST', headers: { origin: 'https://app.example', 'content-type': 'application/x-www-form-urlencoded' }, body: 'grant_type=refresh_token&refresh_token=nope&client_id=app-public' });
    expect([res.status, res.headers.get('access-control-allow-origin')]).toEqual([400, '*']);
  });
});

describe(`attacks on the authorization server, each refused (${backend})`, () => {
  const refusedAtApp = (l: URL) => [l.searchParams.get('error'), l.searchParams.get('code')];

  test('PKCE missing or plain: no code is issued', async () => {
    const missing = await authorize({ scope: 'launch/patient patient/*.rs', challenge: '', method: '' }).catch((e: Error) => e);
    expect(missing).not.toBeInstanceOf(Error);
    expect(refusedAtApp((missing as { location: URL }).location)).toEqual(['invalid_request', null]);
    const plain = await authorize({ scope: 'launch/patient patient/*.rs', challenge: 'a'.repeat(43), method: 'plain' });
    expect(refusedAtApp(plain.location)).toEqual(['invalid_request', null]);
  });

  test('PKCE wrong, blank, or the challenge itself as verifier: invalid_grant', async () => {
    for (const bad of ['wrong', '', 'challenge']) {
      const { challenge } = pkce();
      const { location } = await authorize({ scope: 'launch/patient patient/*.rs', challenge });
      const r = await exchange(location.searchParams.get('code')!, bad === 'wrong' ? b64url(randomBytes(32)) : bad === '' ? '' : challenge);
      expect([bad, r.status]).toEqual([bad, 400]);
      expect(['invalid_grant', 'invalid_request']).toContain(r.body.error);
      expect(r.body.access_token).toBeUndefined();
    }
  });

  test('codes live at most 60 s; oversized or malformed token requests are 4xx, never 5xx', async () => {
    const { location } = await authorize({ scope: 'launch/patient patient/*.rs' });
    const rows = (await t.svc.db.knex.raw("select payload from oauth_artifact where kind = 'AuthorizationCode'")) as { rows: { payload: { jti: string; iat: number; exp: number } | string }[] };
    const codes = rows.rows.map((r) => (typeof r.payload === 'string' ? JSON.parse(r.payload) : r.payload) as { jti: string; iat: number; exp: number });
    const mine = codes.find((c) => c.jti === location.searchParams.get('code'));
    expect(mine && mine.exp - mine.iat).toBe(60);
    for (const body of ['grant_type=authorization_code&code=' + 'x'.repeat(100 * 1024), 'grant_type=nonsense', '%%%', '']) {
      const res = await fetch(tokenUrl, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body });
      expect([body.slice(0, 30), res.status >= 400 && res.status < 500]).toEqual([body.slice(0, 30), true]);
    }
    const json = await fetch(`${base}/auth/launch`, { method: 'POST', headers: { authorization: `Bearer ${t.token}`, 'content-type': 'application/json' }, body: '{"patient":' });
    expect(json.status).toBe(400);
  });

  test('300 random token, introspection, revocation and launch requests: 4xx or 200, never 5xx', async () => {
    const rnd = prng(1515);
    const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)];
    const junk = () => pick(['', 'x', '%00', 'a'.repeat(3000), '{"a":1}', 'eyJhbGciOiJub25lIn0.e30.', 'eyJhbGciOiJFUzM4NCJ9.eyJpc3MiOiJiYWNrZW5kIn0.AAAA', '\u0000', '../../etc/passwd', ' ', '🙂', 'null', '[]']);
    const fields = ['grant_type', 'code', 'redirect_uri', 'client_id', 'code_verifier', 'refresh_token', 'scope', 'client_assertion', 'client_assertion_type', 'resource', 'token', 'aud', 'patient'];
    const statuses = new Map<number, number>();
    const fails: string[] = [];
    for (let i = 0; i < 300; i++) {
      const form = new URLSearchParams();
      for (const f of fields) if (rnd() < 0.4) form.append(f, rnd() < 0.3 ? pick(['authorization_code', 'client_credentials', 'refresh_token', 'backend', 'app-public', 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', 'system/*.rs']) : junk());
      const url = pick([tokenUrl, `${base}/auth/introspect`, `${base}/auth/revoke`, `${base}/auth/launch`, `${base}/auth/token?x=${junk()}`]);
      const json = url.endsWith('/launch') && rnd() < 0.5;
      const res = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': json ? 'application/json' : pick(['application/x-www-form-urlencoded', 'text/plain', 'application/json']), ...(rnd() < 0.5 ? { authorization: `Bearer ${rnd() < 0.5 ? t.token : encodeURIComponent(junk()) || "x"}` } : {}) },
        body: json ? JSON.stringify(Object.fromEntries(form)) : form.toString(),
      });
      const text = await res.text();
      if (res.status >= 500) fails.push(`${url} ${json ? 'json' : 'form'} ${form.toString().slice(0, 300)} -> ${res.status} ${text.slice(0, 200)}`);
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
    }
    expect(fails).toEqual([]);
    expect([...statuses.keys()].every((s) => s === 200 || s === 201 || (s >= 400 && s < 500))).toBe(true);
  });

  test('a code is single-use: reuse fails and revokes the tokens it gave', async () => {
    const { verifier, challenge } = pkce();
    const { location } = await authorize({ scope: 'launch/patient patient/*.rs', challenge });
    const code = location.searchParams.get('code')!;
    const first = await exchange(code, verifier);
    expect(first.status).toBe(200);
    const ok = await fetch(`${base}/Patient/pt1`, { headers: { authorization: `Bearer ${String(first.body.access_token)}` } });
    expect(ok.status).toBe(200);
    const second = await exchange(code, verifier);
    expect([second.status, second.body.error]).toEqual([400, 'invalid_grant']);
    const after = await fetch(`${base}/Patient/pt1`, { headers: { authorization: `Bearer ${String(first.body.access_token)}` } });
    expect(after.status).toBe(401);
  });

  test("a code exchanged by another client, or with another redirect URI: invalid_grant", async () => {
    const { verifier, challenge } = pkce();
    const { location } = await authorize({ scope: 'launch/patient patient/*.rs', challenge });
    const r = await exchange(location.searchParams.get('code')!, verifier, { client_id: 'app-other', redirect_uri: 'http://127.0.0.1:9/other' });
    expect([r.status, r.body.error]).toEqual([400, 'invalid_grant']);
    const p2 = pkce();
    const l2 = await authorize({ scope: 'launch/patient patient/*.rs', challenge: p2.challenge });
    const r2 = await exchange(l2.location.searchParams.get('code')!, p2.verifier, { redirect_uri: 'http://127.0.0.1:9/callback2' });
    expect(r2.status).toBe(400);
  });

  test('a redirect URI not registered: an error page, never a redirect', async () => {
    const b = new Browser();
    const p = new URLSearchParams({ response_type: 'code', client_id: 'app-public', redirect_uri: 'http://127.0.0.1:9/callback/evil', scope: 'patient/*.rs', state: 's', aud: base, code_challenge: pkce().challenge, code_challenge_method: 'S256' });
    const res = await b.fetch(`${base}/auth/authorize?${p}`);
    expect(res.status).toBe(400);
    expect(res.headers.get('location')).toBeNull();
    expect(await res.text()).toMatch(/redirect_uri/);
  });

  test('aud other than this FHIR server: no code', async () => {
    const { location } = await authorize({ scope: 'launch/patient patient/*.rs', aud: 'https://evil.example/fhir' });
    expect(refusedAtApp(location)).toEqual(['invalid_request', null]);
  });

  test('login is throttled per user: past the limit even the right password is refused', async () => {
    await addUser(t.svc.db.knex, { username: 'victim', password: 'victim-password-1', fhirUser: 'Practitioner/p9' });
    const b = new Browser();
    const p = new URLSearchParams({ response_type: 'code', client_id: 'app-public', redirect_uri: REDIRECT, scope: 'patient/*.rs', state: 's', aud: base, code_challenge: pkce().challenge, code_challenge_method: 'S256' });
    const page = await b.go(`${base}/auth/authorize?${p}`);
    const csrf = hidden(page.html, 'csrf');
    const login = action(page.html, '/login');
    const limit = t.svc.config.authLoginMaxFailures;
    for (let i = 0; i < limit; i++) expect((await b.fetch(login, { form: { csrf, username: 'victim', password: `guess-${i}` } })).status).toBe(401);
    const right = await b.fetch(login, { form: { csrf, username: 'victim', password: 'victim-password-1' } });
    expect(right.status).toBe(429);
    expect(right.headers.get('retry-after')).not.toBeNull();
  });

  test('a login form without the CSRF token is refused', async () => {
    const b = new Browser();
    const p = new URLSearchParams({ response_type: 'code', client_id: 'app-public', redirect_uri: REDIRECT, scope: 'patient/*.rs', state: 's', aud: base, code_challenge: pkce().challenge, code_challenge_method: 'S256' });
    const page = await b.go(`${base}/auth/authorize?${p}`);
    const res = await b.fetch(action(page.html, '/login'), { form: { csrf: 'forged', username: 'doc', password: 'doc-password-1' } });
    expect(res.status).toBe(403);
    // Any string a form can carry is a wrong user name, never a server error.
    for (const username of ['doc\u0000', 'x'.repeat(5000), '\u0001\u0002']) {
      const odd = await b.fetch(action(page.html, '/login'), { form: { csrf: hidden(page.html, 'csrf'), username, password: 'whatever-password' } });
      expect([username.slice(0, 8), odd.status]).toEqual([username.slice(0, 8), 401]);
    }
    const cookies = page.headers.getSetCookie?.() ?? [];
    void cookies;
  });

  test('refresh tokens rotate; reusing an old one revokes the family and its access tokens', async () => {
    const { verifier, challenge } = pkce();
    const { location } = await authorize({ scope: 'launch/patient patient/*.rs offline_access', challenge });
    const first = await exchange(location.searchParams.get('code')!, verifier);
    const rt1 = String(first.body.refresh_token);
    const refresh = (rt: string, clientId = 'app-public') =>
      fetch(tokenUrl, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: rt, client_id: clientId }) }).then(
        async (r) => ({ status: r.status, body: (await r.json()) as Record<string, unknown> }),
      );
    expect((await refresh(rt1, 'app-other')).status).toBe(400); // bound to its client
    const second = await refresh(rt1);
    expect(second.status).toBe(200);
    expect(second.body.patient).toBe('pt1');
    const rt2 = String(second.body.refresh_token);
    expect(rt2).not.toBe(rt1);
    expect((await fetch(`${base}/Patient/pt1`, { headers: { authorization: `Bearer ${String(second.body.access_token)}` } })).status).toBe(200);
    const reuse = await refresh(rt1);
    expect([reuse.status, reuse.body.error]).toEqual([400, 'invalid_grant']);
    expect((await refresh(rt2)).status).toBe(400);
    expect((await fetch(`${base}/Patient/pt1`, { headers: { authorization: `Bearer ${String(second.body.access_token)}` } })).status).toBe(401);
  });

  test('revocation and introspection of access and refresh tokens', async () => {
    const { verifier, challenge } = pkce();
    const { location } = await authorize({ scope: 'launch/patient patient/*.rs offline_access fhirUser', challenge });
    const r = await exchange(location.searchParams.get('code')!, verifier);
    const at = String(r.body.access_token);
    const introspect = async (token: string, bearer: string | null = t.token) => {
      const res = await fetch(`${base}/auth/introspect`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', ...(bearer ? { authorization: `Bearer ${bearer}` } : {}) },
        body: new URLSearchParams({ token }),
      });
      return { status: res.status, body: (await res.json()) as Record<string, unknown> };
    };
    expect((await introspect(at, null)).status).toBe(401);
    expect((await introspect(at, at)).status).toBe(403); // a patient-scoped token may not introspect
    const live = await introspect(at);
    expect(live.body).toMatchObject({ active: true, client_id: 'app-public', patient: 'pt1', iss: base, sub: 'doc', fhirUser: `${base}/Practitioner/p1` });
    expect(String(live.body.scope)).toContain('patient/*.rs');
    expect(typeof live.body.exp).toBe('number');
    expect((await introspect(String(r.body.refresh_token))).body).toMatchObject({ active: true, client_id: 'app-public' });
    const revoke = (token: string, clientId = 'app-public') =>
      fetch(`${base}/auth/revoke`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ token, client_id: clientId }) });
    expect((await revoke(at, 'app-other')).status).toBe(400);
    expect((await revoke(at)).status).toBe(200);
    expect((await fetch(`${base}/Patient/pt1`, { headers: { authorization: `Bearer ${at}` } })).status).toBe(401);
    // Every other node reads it on its next refresh (AUTH_REVOCATION_REFRESH, 10 s by default).
    const otherNode = new RevocationList(t.svc.db.knex, 0);
    await otherNode.start();
    expect(otherNode.has(String(decodeJwt(at).jti))).toBe(true);
    expect((await introspect(at)).body).toEqual({ active: false });
    expect((await revoke(String(r.body.refresh_token))).status).toBe(200);
    expect((await introspect(String(r.body.refresh_token))).body).toEqual({ active: false });
    expect((await introspect('not-a-token')).body).toEqual({ active: false });
  });

  test('Backend Services: ES384 and RS384 assertions give a short token without refresh token', async () => {
    for (const k of [es384, rs384]) {
      const r = await backendToken('backend', k, 'system/Patient.rs');
      expect([k.alg, r.status, r.status === 200 ? 'ok' : r.body]).toEqual([k.alg, 200, 'ok']);
      expect(r.body).toMatchObject({ token_type: 'Bearer', scope: 'system/Patient.rs' });
      expect(Number(r.body.expires_in)).toBeLessThanOrEqual(300);
      expect(r.body.refresh_token).toBeUndefined();
      expect(r.headers.get('cache-control')).toBe('no-store');
      const claims = decodeJwt(String(r.body.access_token));
      expect([claims.aud, claims.client_id]).toEqual([base, 'backend']);
      const search = await fetch(`${base}/Patient?_count=1`, { headers: { authorization: `Bearer ${String(r.body.access_token)}` } });
      expect(search.status).toBe(200);
    }
    // More than the registration allows: invalid_scope.
    const wide = await backendToken('backend', es384, 'system/*.cruds');
    expect([wide.status, wide.body.error]).toEqual([400, 'invalid_scope']);
  });

  test('client assertions: alg none, HS256, expired, exp too far, replayed jti, jku, wrong aud, wrong sub: invalid_client', async () => {
    const now = Math.floor(Date.now() / 1000);
    const post = async (clientAssertion: string) => {
      const res = await fetch(tokenUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'system/Patient.rs', client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: clientAssertion }),
      });
      return { status: res.status, body: (await res.json()) as Record<string, unknown> };
    };
    const claims = { iss: 'backend', sub: 'backend', aud: tokenUrl, jti: b64url(randomBytes(8)), exp: now + 120, iat: now };
    const enc = (o: unknown) => b64url(Buffer.from(JSON.stringify(o)));
    const none = `${enc({ alg: 'none', typ: 'JWT' })}.${enc(claims)}.`;
    const hs256 = await new SignJWT(claims).setProtectedHeader({ alg: 'HS256', kid: es384.kid }).sign(new TextEncoder().encode('a-shared-secret-nobody-registered!!'));
    const cases: [string, string][] = [
      ['alg none', none],
      ['HS256', hs256],
      ['expired', await assertion('backend', es384, { exp: now - 120 })],
      ['exp more than five minutes ahead', await assertion('backend', es384, { exp: now + 3600 })],
      ['jku not registered', await assertion('backend', es384, { header: { jku: 'https://evil.example/jwks.json' } })],
      ['aud is the issuer, not the token URL', await assertion('backend', es384, { aud: base })],
      ['sub is not the client', await assertion('backend', es384, { sub: 'someone-else' })],
      ['unknown kid', await assertion('backend', { ...es384, kid: 'no-such-kid' })],
    ];
    for (const [name, a] of cases) {
      const r = await post(a);
      expect([name, r.status, r.body.error]).toEqual([name, 401, 'invalid_client']);
      expect(r.body.access_token).toBeUndefined();
    }
    const once = await assertion('backend', es384);
    expect((await post(once)).status).toBe(200);
    const replay = await post(once);
    expect([replay.status, replay.body.error]).toEqual([401, 'invalid_client']);
    // Concurrent replays of a fresh assertion: exactly one wins.
    const fresh = await assertion('backend', rs384);
    const all = await Promise.all([1, 2, 3, 4].map(() => post(fresh)));
    expect(all.filter((r) => r.status === 200)).toHaveLength(1);
  });

  test('client JWKS URLs: a body over the size cap or an answer slower than the timeout is refused', async () => {
    const big = await keyPair('ES384');
    let mode: 'big' | 'slow' = 'big';
    const srv: Server = createServer((_req, res) => {
      if (mode === 'big') {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ keys: [big.publicJwk], padding: 'x'.repeat(100 * 1024) }));
      } else setTimeout(() => res.end(JSON.stringify({ keys: [big.publicJwk] })), 4000).unref();
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const url = `http://127.0.0.1:${(srv.address() as { port: number }).port}/jwks.json`;
    try {
      await addClient(t.svc.db.knex, { client_id: 'backend-big', type: 'confidential-asymmetric', redirect_uris: [], scope: 'system/*.rs', jwks_uri: url }, { allowLoopbackJwksUri: true });
      const r = await backendToken('backend-big', big, 'system/Patient.rs');
      expect([r.status, r.body.error]).toEqual([401, 'invalid_client']);
      mode = 'slow';
      await addClient(t.svc.db.knex, { client_id: 'backend-slow', type: 'confidential-asymmetric', redirect_uris: [], scope: 'system/*.rs', jwks_uri: url }, { allowLoopbackJwksUri: true });
      const started = Date.now();
      const s2 = await backendToken('backend-slow', big, 'system/Patient.rs');
      expect([s2.status, s2.body.error]).toEqual([401, 'invalid_client']);
      expect(Date.now() - started).toBeLessThan(3900);
    } finally {
      srv.closeAllConnections();
      srv.close();
    }
  });

  test('vesta users add and clients add: stored, listed, and bad input refused with one line per problem', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vesta-admin-'));
    const cli = join(process.cwd(), 'dist/src/cli/vesta.js');
    const env = { ...process.env, DATA_DIR: dir, LOG_LEVEL: 'silent', DATABASE_URL: '' };
    const run = (args: string[], input?: string) => spawnSync(process.execPath, [cli, ...args], { env, input: input ?? '', encoding: 'utf8', timeout: 60_000 });
    try {
      const added = run(['users', 'add', 'carol', '--fhir-user', 'Practitioner/123', '--password-stdin'], 'carol-password-1\n');
      expect([added.status, added.stdout.trim(), added.stderr]).toEqual([0, 'user carol created', '']);
      const short = run(['users', 'add', 'dave', '--password-stdin'], 'short\n');
      expect([short.status, short.stderr.trim()]).toEqual([1, 'vesta: the password must have at least 8 characters']);
      const client = run(['clients', 'add', 'bad-app', '--type', 'public', '--scope', 'system/*.rs nonsense']);
      expect(client.status).toBe(1);
      expect(client.stderr.trim().split('\n')).toEqual([
        'vesta: scope nonsense is neither a SMART clinical scope nor one of openid, fhirUser, profile, launch, launch/patient, launch/encounter, offline_access, online_access',
        'vesta: a public client needs at least one redirect URI',
        'vesta: a public client cannot be allowed system/ scopes',
      ]);
      const ok = run(['clients', 'add', 'good-app', '--type', 'public', '--scope', 'launch/patient patient/*.rs', '--redirect-uri', 'https://app.example/cb']);
      expect([ok.status, ok.stdout.trim()]).toEqual([0, 'client good-app created']);
      const list = run(['users', 'list']);
      expect(list.stdout).toMatch(/^carol\tPractitioner\/123\tenabled\tuser\/\*\.cruds patient\/\*\.cruds$/m);
      expect(list.stdout).not.toMatch(/scrypt|carol-password/);
      expect(run(['clients', 'list']).stdout).toMatch(/^good-app\tpublic\tlaunch\/patient patient\/\*\.rs\thttps:\/\/app\.example\/cb$/m);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);

  test('logs name the events and never a password, token, code or assertion', () => {
    const text = logLines.join('');
    for (const event of ['login.succeeded', 'login.failed', 'login.throttled', 'token.issued', 'token.refused', 'consent.given', 'token.revoked', 'grant.revoked', 'launch.created']) expect([event, text.includes(`"event":"${event}"`)]).toEqual([event, true]);
    const leaked = secrets.filter((sct) => sct && text.includes(sct));
    expect(leaked).toEqual([]);
  });

  test('the audit ledger records every sign-in, token issued or refused, revocation and launch, and no secret', async () => {
    const rows = ((await t.svc.db.knex.raw("select canonical from audit_ledger where canonical like '%\"code\":\"auth:%'")) as { rows: { canonical: string }[] }).rows;
    const events = rows.map((r) => JSON.parse(r.canonical) as { subtype: { code: string }[]; outcome: string; agent: { who?: { identifier?: { value?: string } }; altId?: string; policy?: string[] }[] });
    const seen = new Set(events.map((e) => `${e.subtype[0].code} ${e.outcome === '0' ? 'success' : 'failure'}`));
    for (const kind of ['auth:login success', 'auth:login failure', 'auth:token success', 'auth:token failure', 'auth:revoke success', 'auth:launch success']) expect([kind, seen.has(kind)]).toEqual([kind, true]);
    // A sign-in names the account it was for; an issued token is named by its jti, never by itself.
    expect(events.some((e) => e.subtype[0].code === 'auth:login' && e.agent.some((a) => a.altId === 'doc'))).toBe(true);
    expect(events.some((e) => e.subtype[0].code === 'auth:token' && e.outcome === '0' && e.agent.some((a) => a.policy?.length))).toBe(true);
    const text = rows.map((r) => r.canonical).join('\n');
    expect(secrets.filter((sct) => sct && text.includes(sct))).toEqual([]);
  });

  // Last: it leaves this server's test address throttled for the rest of the window.
  test('login is throttled per address across user names', async () => {
    const perUser = t.svc.config.authLoginMaxFailures;
    const perAddress = t.svc.config.authLoginMaxFailuresAddress;
    const b = new Browser();
    const p = new URLSearchParams({ response_type: 'code', client_id: 'app-public', redirect_uri: REDIRECT, scope: 'patient/*.rs', state: 's', aud: base, code_challenge: pkce().challenge, code_challenge_method: 'S256' });
    const page = await b.go(`${base}/auth/authorize?${p}`);
    const csrf = hidden(page.html, 'csrf');
    const login = action(page.html, '/login');
    let failures = 0;
    let n = 0;
    let last = 0;
    // Spread guesses over many names, fewer than the per-user limit each, until the address limit bites.
    while (failures < perAddress + 1) {
      const name = `nobody-${Math.floor(n++ / (perUser - 1))}`;
      last = (await b.fetch(login, { form: { csrf, username: name, password: 'guess-guess' } })).status;
      if (last === 429) break;
      expect(last).toBe(401);
      failures++;
    }
    expect(last).toBe(429);
    const right = await b.fetch(login, { form: { csrf, username: 'doc', password: 'doc-password-1' } });
    expect(right.status).toBe(429);
  });
});
