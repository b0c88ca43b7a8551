// Vesta's SMART authorization server driven by third-party clients, not by hand-written requests:
// SMART's own JS client (fhirclient, node build) for the standalone and EHR launches, and
// openid-client 6.x for Backend Services (private_key_jwt with keys by value and by JWKS URL).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { createRemoteJWKSet, exportJWK, generateKeyPair, jwtVerify, type JWK } from 'jose';
import FHIR from 'fhirclient';
import * as oidc from 'openid-client';
import { authed, concurrencyBackends, startTestServer, type TestServer } from '../support/backends.js';
import { Browser, action, decode, hidden } from '../support/browser.js';
import { addClient, addUser } from '../../src/auth-server/admin.js';

const backend = concurrencyBackends()[0];
const REDIRECT = 'http://127.0.0.1:9/callback';
let t: TestServer;
let base: string;
let jwksServer: Server;
let jwksBase: string;
const jwksRequests: string[] = [];

interface Keys {
  kid: string;
  privateKey: CryptoKey;
  publicJwk: JWK;
}
async function keyPair(alg: 'ES384' | 'RS384'): Promise<Keys> {
  const { privateKey, publicKey } = await generateKeyPair(alg);
  const kid = `${alg}-${randomBytes(4).toString('hex')}`;
  return { kid, privateKey: privateKey as CryptoKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}
const keys: Partial<Record<'ES384' | 'RS384' | 'uri', Keys>> = {};

// --- fhirclient in node: a fake request/response pair per "page" of the app, one storage between them.
function memoryStorage() {
  const m = new Map<string, unknown>();
  return {
    get: async (k: string) => m.get(k),
    set: async (k: string, v: unknown) => {
      m.set(k, v);
      return v;
    },
    unset: async (k: string) => m.delete(k),
  };
}
type Storage = ReturnType<typeof memoryStorage>;
function appPage(url: string) {
  let location: string | undefined;
  const req = { url, headers: { host: '127.0.0.1:9' }, method: 'GET', socket: {} } as unknown as IncomingMessage;
  const res = {
    writeHead: (_status: number, headers: Record<string, string>) => {
      location = headers.location ?? headers.Location;
    },
    end: () => undefined,
  } as unknown as ServerResponse;
  return { req, res, location: () => location };
}

/** The app's launch page: fhirclient's authorize(); returns the authorization URL it redirected to. */
async function fhirclientAuthorize(storage: Storage, o: { scope: string; launch?: string }): Promise<string> {
  const p = appPage('/launch');
  await FHIR(p.req, p.res, storage).authorize({ iss: base, clientId: 'app-public', scope: o.scope, redirectUri: REDIRECT, pkceMode: 'required', ...(o.launch ? { launch: o.launch } : {}) });
  const loc = p.location();
  if (!loc) throw new Error('fhirclient did not redirect to the authorization endpoint');
  return loc;
}

/** The app's redirect page: fhirclient's ready() exchanges the code (with the PKCE verifier). */
function fhirclientReady(storage: Storage, callback: URL) {
  const p = appPage(`${callback.pathname}${callback.search}`);
  return FHIR(p.req, p.res, storage).ready();
}

/** A user in a browser: login, patient picker (search by name, then choose), consent with every offered scope. */
async function signIn(authorizeUrl: string, o: { pick?: string; search?: string } = {}): Promise<{ location: URL; pages: string[] }> {
  const browser = new Browser();
  const atApp = (l: string) => l.startsWith('http://127.0.0.1:9/');
  const pages: string[] = [];
  let page = await browser.go(authorizeUrl, {}, atApp);
  for (let step = 0; step < 6 && page.status !== 0; step++) {
    pages.push(page.html);
    if (page.status !== 200) throw new Error(`sign-in page ${page.url} answered ${page.status}: ${page.html.slice(0, 400)}`);
    const csrf = page.html.includes('name="csrf"') ? hidden(page.html, 'csrf') : '';
    if (page.html.includes('name="password"')) {
      page = await browser.go(action(page.html, '/login'), { form: { csrf, username: 'doc', password: 'doc-password-1' } }, atApp);
    } else if (page.html.includes('Choose a patient')) {
      if (!page.html.includes('<table>')) page = await browser.go(`${page.url.replace(/\?.*$/, '')}?name=${encodeURIComponent(o.search ?? 'Picker')}`, {}, atApp);
      else page = await browser.go(action(page.html, '/patient'), { form: { csrf, patient: o.pick ?? 'pt1' } }, atApp);
    } else if (page.html.includes('Allow access')) {
      const scopes = [...page.html.matchAll(/name="scope" value="([^"]*)"[^>]*\bchecked\b/g)].map((m) => decode(m[1]));
      page = await browser.go(action(page.html, '/consent'), { form: { csrf, scope: scopes } }, atApp);
    } else throw new Error(`unexpected page: ${page.html.slice(0, 400)}`);
  }
  if (page.status !== 0) throw new Error(`the flow did not return to the app: ${pages.map((h) => /<title>([^<]*)/.exec(h)?.[1]).join(' > ')}`);
  return { location: new URL(page.url), pages };
}

// --- openid-client for Backend Services
/** A client configuration from Vesta's discovery document; the raw token responses are kept (oauth4webapi lowercases token_type). */
async function backendClient(clientId: string, k: Keys, header: Record<string, unknown> = {}) {
  const raw: Record<string, unknown>[] = [];
  const config = await oidc.discovery(
    new URL(base),
    clientId,
    undefined,
    // openid-client's PrivateKeyJwt puts the issuer in aud; SMART Backend Services (and Vesta) require the
    // token endpoint URL, so modifyAssertion sets aud to it. Extra header members (jku) are set the same way.
    oidc.PrivateKeyJwt(
      { key: k.privateKey, kid: k.kid },
      {
        [oidc.modifyAssertion]: (h, payload) => {
          payload.aud = config.serverMetadata().token_endpoint;
          Object.assign(h, header);
        },
      },
    ),
    {
      execute: [oidc.allowInsecureRequests],
      [oidc.customFetch]: async (url, init) => {
        const res = await fetch(url, init as RequestInit);
        if (url.endsWith('/auth/token')) raw.push((await res.clone().json()) as Record<string, unknown>);
        return res;
      },
    },
  );
  return { config, raw };
}

async function expectSystemSearch(accessToken: string) {
  const res = await fetch(`${base}/Patient?_count=5`, { headers: { authorization: `Bearer ${accessToken}` } });
  expect(res.status).toBe(200);
  const bundle = (await res.json()) as { resourceType: string; entry?: { resource: { id: string } }[] };
  expect(bundle.resourceType).toBe('Bundle');
  expect(bundle.entry?.map((e) => e.resource.id)).toContain('pt1');
}

beforeAll(async () => {
  t = await startTestServer(backend, { AUTH_JWKS_URI_LOOPBACK: 'on' });
  base = t.svc.config.baseUrl;
  keys.ES384 = await keyPair('ES384');
  keys.RS384 = await keyPair('RS384');
  keys.uri = await keyPair('ES384');
  jwksServer = createServer((req, res) => {
    jwksRequests.push(req.url ?? '');
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [keys.uri!.publicJwk] }));
  });
  await new Promise<void>((resolve) => jwksServer.listen(0, '127.0.0.1', resolve));
  jwksBase = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}`;

  const api = authed(t);
  await api.put('/Patient/pt1').send({ resourceType: 'Patient', id: 'pt1', name: [{ family: 'Picker', given: ['Pat'] }], birthDate: '1970-01-01' }).expect(201);
  await api.put('/Patient/pt2').send({ resourceType: 'Patient', id: 'pt2', name: [{ family: 'Other', given: ['Olga'] }] }).expect(201);
  await api.put('/Encounter/enc1').send({ resourceType: 'Encounter', id: 'enc1', status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, subject: { reference: 'Patient/pt1' } }).expect(201);
  const q = t.svc.db.knex;
  await addUser(q, { username: 'doc', password: 'doc-password-1', fhirUser: 'Practitioner/p1' });
  const loop = { allowLoopbackJwksUri: true };
  await addClient(q, { client_id: 'app-public', type: 'public', redirect_uris: [REDIRECT], scope: 'openid fhirUser launch launch/patient patient/*.rs' }, loop);
  await addClient(q, { client_id: 'backend-oc', type: 'confidential-asymmetric', redirect_uris: [], scope: 'system/*.rs', jwks: { keys: [keys.ES384.publicJwk, keys.RS384.publicJwk] } }, loop);
  await addClient(q, { client_id: 'backend-uri', type: 'confidential-asymmetric', redirect_uris: [], scope: 'system/*.rs', jwks_uri: `${jwksBase}/jwks.json` }, loop);
}, 120_000);

afterAll(async () => {
  await t?.close();
  await new Promise((resolve) => (jwksServer ? jwksServer.close(resolve) : resolve(undefined)));
});

describe(`SMART clients against Vesta's authorization server (${backend})`, () => {
  test('fhirclient standalone launch', async () => {
    const storage = memoryStorage();
    const authorizeUrl = new URL(await fhirclientAuthorize(storage, { scope: 'launch/patient openid fhirUser patient/*.rs' }));
    expect(authorizeUrl.href.startsWith(`${base}/auth/authorize?`)).toBe(true);
    expect(authorizeUrl.searchParams.get('code_challenge_method')).toBe('S256');
    expect(authorizeUrl.searchParams.get('aud')).toBe(base);

    const { location, pages } = await signIn(authorizeUrl.href);
    expect(pages.some((p) => p.includes('Choose a patient'))).toBe(true);
    expect(`${location.origin}${location.pathname}`).toBe(REDIRECT);
    expect(location.searchParams.get('code')).toBeTruthy();
    expect(location.searchParams.get('state')).toBe(authorizeUrl.searchParams.get('state'));

    const client = await fhirclientReady(storage, location);
    expect(client.patient.id).toBe('pt1');
    const tr = client.state.tokenResponse!;
    expect(tr.need_patient_banner).toBe(true);
    expect(tr.token_type).toBe('Bearer');
    expect(String(tr.scope).split(' ').sort()).toEqual(['fhirUser', 'launch/patient', 'openid', 'patient/*.rs']);
    const patient = (await client.patient.read()) as { resourceType: string; id: string; name: { family: string }[] };
    expect(patient).toMatchObject({ resourceType: 'Patient', id: 'pt1', name: [{ family: 'Picker' }] });
    // The id_token: fhirclient reads it, and it verifies against Vesta's JWKS.
    expect(client.getIdToken()?.fhirUser).toBe(`${base}/Practitioner/p1`);
    expect(client.getFhirUser()).toBe('Practitioner/p1');
    const { payload } = await jwtVerify(String(tr.id_token), createRemoteJWKSet(new URL(`${base}/.well-known/jwks.json`)), { issuer: base, audience: 'app-public' });
    expect(payload.fhirUser).toBe(`${base}/Practitioner/p1`);
    // The token is confined to the chosen patient.
    await expect(client.request('Patient/pt2')).rejects.toMatchObject({ status: 404 });
  });

  test('fhirclient EHR launch with encounter', async () => {
    const created = await fetch(`${base}/auth/launch`, {
      method: 'POST',
      headers: { authorization: `Bearer ${t.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ patient: 'pt1', encounter: 'enc1', need_patient_banner: false }),
    });
    expect(created.status).toBe(201);
    const { launch, expires_in } = (await created.json()) as { launch: string; expires_in: number };
    expect(typeof launch).toBe('string');
    expect(expires_in).toBeGreaterThan(0);

    const storage = memoryStorage();
    const authorizeUrl = await fhirclientAuthorize(storage, { scope: 'launch openid fhirUser patient/*.rs', launch });
    expect(new URL(authorizeUrl).searchParams.get('launch')).toBe(launch);
    const { location, pages } = await signIn(authorizeUrl);
    expect(pages.some((p) => p.includes('Choose a patient'))).toBe(false);
    expect(pages.some((p) => p.includes('Allow access'))).toBe(true);
    expect(location.searchParams.get('code')).toBeTruthy();

    const client = await fhirclientReady(storage, location);
    expect(client.patient.id).toBe('pt1');
    expect(client.encounter.id).toBe('enc1');
    expect(client.state.tokenResponse!.need_patient_banner).toBe(false);
    expect(client.getIdToken()?.fhirUser).toBe(`${base}/Practitioner/p1`);
    const encounter = (await client.encounter.read()) as { resourceType: string; id: string; subject: { reference: string } };
    expect(encounter).toMatchObject({ resourceType: 'Encounter', id: 'enc1', subject: { reference: 'Patient/pt1' } });
    expect(await client.patient.read()).toMatchObject({ resourceType: 'Patient', id: 'pt1' });

    // The launch context was consumed at consent: the same launch id again ends at the app with an error.
    const storage2 = memoryStorage();
    const again = await signIn(await fhirclientAuthorize(storage2, { scope: 'launch openid fhirUser patient/*.rs', launch }));
    expect(again.location.searchParams.get('error')).toBe('invalid_request');
    expect(again.location.searchParams.get('code')).toBeNull();
    expect(again.pages.some((p) => p.includes('Allow access'))).toBe(false);
    await expect(fhirclientReady(storage2, again.location)).rejects.toThrow(/invalid_request/);
  });

  describe('openid-client backend services', () => {
    for (const alg of ['ES384', 'RS384'] as const) {
      test(`${alg} private_key_jwt, keys registered by value`, async () => {
        const k = keys[alg]!;
        const { config, raw } = await backendClient('backend-oc', k);
        expect(config.serverMetadata().token_endpoint).toBe(`${base}/auth/token`);
        const tr = await oidc.clientCredentialsGrant(config, { scope: 'system/Patient.rs' });
        expect(raw).toHaveLength(1);
        expect(raw[0].token_type).toBe('Bearer');
        expect(tr.scope).toBe('system/Patient.rs');
        expect(tr.expires_in).toBeGreaterThan(0);
        expect(tr.expires_in).toBeLessThanOrEqual(300);
        expect(tr.refresh_token).toBeUndefined();
        expect(raw[0].refresh_token).toBeUndefined();
        await expectSystemSearch(tr.access_token);
      });
    }

    test('keys registered by JWKS URL; a jku other than the registered URL is refused', async () => {
      const registered = `${jwksBase}/jwks.json`;
      const plain = await backendClient('backend-uri', keys.uri!);
      const tr = await oidc.clientCredentialsGrant(plain.config, { scope: 'system/Patient.rs' });
      expect(plain.raw[0].token_type).toBe('Bearer');
      expect(tr.expires_in).toBeLessThanOrEqual(300);
      expect(tr.refresh_token).toBeUndefined();
      expect(jwksRequests).toContain('/jwks.json');
      await expectSystemSearch(tr.access_token);

      // jku naming the registered URL is fine ...
      const same = await backendClient('backend-uri', keys.uri!, { jku: registered });
      expect((await oidc.clientCredentialsGrant(same.config, { scope: 'system/Patient.rs' })).access_token).toBeTruthy();
      // ... another URL (serving the very same keys, so only the jku check can refuse it) is not, and is not fetched.
      const other = await backendClient('backend-uri', keys.uri!, { jku: `${jwksBase}/elsewhere.json` });
      const err = await oidc.clientCredentialsGrant(other.config, { scope: 'system/Patient.rs' }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(oidc.ResponseBodyError);
      expect(err).toMatchObject({ status: 401, error: 'invalid_client' });
      expect(other.raw[0]).toMatchObject({ error: 'invalid_client' });
      expect(other.raw[0].access_token).toBeUndefined();
      expect(jwksRequests).not.toContain('/elsewhere.json');
    });
  });
});
