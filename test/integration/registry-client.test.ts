// The registry client (src/jobs/registry/client.ts) against a real second Vesta server acting as the
// immunization registry: its own database, FHIR mounted at /fhir, SMART Backend Services with a
// client registered by key, reached through a fault-injecting proxy (test/support/registry-proxy.ts)
// that is the registry's public address (its BASE_URL), so the registry's links and token audience
// name the proxy.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createPrivateKey, randomUUID, type JsonWebKey } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import { pino } from 'pino';
import { startTestServer, type BackendName, type TestServer } from '../support/backends.js';
import { RegistryProxy } from '../support/registry-proxy.js';
import { addClient } from '../../src/auth-server/admin.js';
import type { RegistryClientOptions, RegistryError as RegistryErrorType, Resource, SearchBundle } from '../../src/jobs/registry/client.js';

// An operator's DEBUG naming fhir-kit-client, in force before the client module loads: the module must
// switch fhir-kit-client's debug output off (it would print the bearer token and the query).
const debug = createRequire(import.meta.url)('debug') as { enable(ns: string): void; enabled(ns: string): boolean };
debug.enable('fhir-kit-client:*');
const { RegistryClient, RegistryError } = await import('../../src/jobs/registry/client.js');

const backend: BackendName = process.env.TEST_DATABASE_URL ? 'pg' : 'embedded';
const SYS = 'urn:test:registry-client';
const CLIENT_ID = 'iis-sync';

let proxy: RegistryProxy;
let registry: TestServer;
let base: string;
const keys: Partial<Record<'ES384' | 'RS384', JWK>> = {};
let foreign: Server;
let foreignOrigin: string;
const foreignSeen: string[] = [];
const logLines: string[] = [];
const log = pino({ level: 'trace' }, { write: (l: string) => void logLines.push(l) });
/** Identifier values and other query values the tests send: none may reach a log line or an error message. */
const queryValues: string[] = [];
const errorMessages: string[] = [];
const stderr: string[] = [];
const realStderrWrite = process.stderr.write.bind(process.stderr);

async function privateJwk(alg: 'ES384' | 'RS384') {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const kid = `${alg}-${randomUUID().slice(0, 8)}`;
  return { priv: { ...(await exportJWK(privateKey)), kid, alg }, pub: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

function client(over: Partial<RegistryClientOptions> = {}) {
  return new RegistryClient({
    id: 'test-iis',
    baseUrl: base,
    auth: { type: 'backend-services', tokenUrl: `${base}/auth/token`, clientId: CLIENT_ID, privateKey: keys.ES384!, alg: 'ES384', scope: 'system/*.cruds' },
    requestTimeoutMs: 5000,
    rateLimit: { requests: 1000, perSeconds: 1 },
    pageSize: 2,
    log,
    ...over,
  });
}

/** A fresh identifier value (remembered as a query value). */
function value(prefix: string): string {
  const v = `${prefix}-${randomUUID()}`;
  queryValues.push(v);
  return v;
}

function patient(v: string): Resource {
  return { resourceType: 'Patient', identifier: [{ system: SYS, value: v }], name: [{ family: 'Registry', given: ['Ria'] }], birthDate: '2019-05-01' };
}

function immunization(patientId: string, v: string, lot = 'LOT-1'): Resource {
  return {
    resourceType: 'Immunization',
    identifier: [{ system: SYS, value: v }],
    status: 'completed',
    vaccineCode: { coding: [{ system: 'http://hl7.org/fhir/sid/cvx', code: '08', display: 'Hep B, adolescent or pediatric' }] },
    patient: { reference: `Patient/${patientId}` },
    occurrenceDateTime: '2024-03-01',
    lotNumber: lot,
  };
}

/** The RegistryError a call rejects with (its message kept for the leak check). */
async function failure(p: Promise<unknown>): Promise<RegistryErrorType> {
  try {
    await p;
  } catch (e) {
    if (!(e instanceof RegistryError)) throw e;
    errorMessages.push(e.message);
    return e;
  }
  throw new Error('the call succeeded');
}

async function registryPatient(c = client()): Promise<string> {
  const r = await c.conditionalCreate(patient(value('pt')), { identifier: `${SYS}|${queryValues[queryValues.length - 1]}` });
  return r.resource!.id!;
}

beforeAll(async () => {
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    stderr.push(String(chunk));
    return (realStderrWrite as (...a: unknown[]) => boolean)(chunk, ...rest);
  }) as typeof process.stderr.write;
  proxy = await RegistryProxy.start();
  base = `${proxy.url}/fhir`;
  registry = await startTestServer(backend, { BASE_URL: base });
  proxy.target = registry.url;
  const es = await privateJwk('ES384');
  const rs = await privateJwk('RS384');
  keys.ES384 = es.priv;
  keys.RS384 = rs.priv;
  await addClient(registry.svc.db.knex, { client_id: CLIENT_ID, type: 'confidential-asymmetric', redirect_uris: [], scope: 'system/*.cruds', jwks: { keys: [es.pub, rs.pub] } }, { allowLoopbackJwksUri: false });
  foreign = createServer((req, res) => {
    foreignSeen.push(`${req.method} ${req.url}`);
    res.writeHead(200, { 'content-type': 'application/fhir+json' }).end('{"resourceType":"Bundle","type":"searchset"}');
  });
  await new Promise<void>((resolve) => foreign.listen(0, '127.0.0.1', resolve));
  foreignOrigin = `http://127.0.0.1:${(foreign.address() as AddressInfo).port}`;
}, 120_000);

afterAll(async () => {
  process.stderr.write = realStderrWrite;
  await proxy?.close();
  await registry?.close();
  await new Promise((resolve) => (foreign ? foreign.close(resolve) : resolve(undefined)));
});

describe(`registry client against a Vesta registry (${backend})`, () => {
  test('conditional create twice: one resource, the second answer names it', async () => {
    const c = client();
    const v = value('cc');
    const criteria = { identifier: `${SYS}|${v}` };
    const first = await c.conditionalCreate(patient(v), criteria);
    expect(first).toMatchObject({ status: 201, created: true, resource: { resourceType: 'Patient' } });
    const second = await c.conditionalCreate(patient(v), criteria);
    expect(second).toMatchObject({ status: 200, created: false });
    expect(second.resource?.id).toBe(first.resource?.id);
    const found = await c.search('Patient', criteria);
    expect(found.entry?.map((e) => e.resource?.id)).toEqual([first.resource!.id]);
  });

  test('conditional update is idempotent: the same record twice is one resource with the same content', async () => {
    const c = client();
    const pid = await registryPatient(c);
    const v = value('imm');
    const criteria = `identifier=${encodeURIComponent(`${SYS}|${v}`)}`;
    const a = await c.conditionalUpdate('Immunization', criteria, immunization(pid, v));
    expect(a).toMatchObject({ status: 201, created: true });
    const b = await c.conditionalUpdate('Immunization', criteria, immunization(pid, v));
    expect(b).toMatchObject({ status: 200, created: false });
    expect(b.resource?.id).toBe(a.resource?.id);
    const changed = await c.conditionalUpdate('Immunization', criteria, immunization(pid, v, 'LOT-2'));
    expect(changed.resource?.id).toBe(a.resource?.id);
    const found = await c.search('Immunization', criteria);
    expect(found.entry).toHaveLength(1);
    const stored = await c.read('Immunization', a.resource!.id!);
    expect(stored).toMatchObject({ lotNumber: 'LOT-2', status: 'completed', identifier: [{ system: SYS, value: v }] });
    expect(changed.versionId).toBe(stored.meta?.versionId);
  });

  test('paging: three pages through next links with _count, then none', async () => {
    const c = client({ pageSize: 2 });
    const pid = await registryPatient(c);
    const ids = new Set<string>();
    for (let i = 0; i < 5; i++) {
      const v = value('page');
      ids.add((await c.conditionalUpdate('Immunization', { identifier: `${SYS}|${v}` }, immunization(pid, v))).resource!.id!);
    }
    const sizes: number[] = [];
    const seen: string[] = [];
    let page: SearchBundle | undefined = await c.search('Immunization', { patient: `Patient/${pid}` });
    while (page) {
      sizes.push(page.entry?.length ?? 0);
      seen.push(...(page.entry ?? []).map((e) => e.resource!.id!));
      page = await c.nextPage(page);
    }
    expect(sizes).toEqual([2, 2, 1]);
    expect(new Set(seen)).toEqual(ids);
    expect(seen).toHaveLength(5);
  });

  test('read and delete; deleting what is gone is not an error', async () => {
    const c = client();
    const pid = await registryPatient(c);
    const v = value('del');
    const { resource } = await c.conditionalUpdate('Immunization', { identifier: `${SYS}|${v}` }, immunization(pid, v));
    expect(await c.read('Immunization', resource!.id!)).toMatchObject({ resourceType: 'Immunization', id: resource!.id });
    expect([200, 204]).toContain((await c.delete('Immunization', resource!.id!)).status);
    const gone = await failure(c.read('Immunization', resource!.id!));
    expect(gone).toMatchObject({ code: 'http', status: 410 });
    const again = await c.delete('Immunization', resource!.id!);
    expect([200, 204, 404, 410]).toContain(again.status);
    expect([200, 204, 404, 410]).toContain((await c.delete('Immunization', 'never-existed')).status);
    await expect(c.read('Immunization', '../auth/token')).rejects.toThrow(TypeError);
    // The raw request: paths stay under the base.
    expect(await c.request('GET', 'metadata')).toMatchObject({ resourceType: 'CapabilityStatement' });
    expect(await c.request('GET', `Patient/${pid}/_history`, { query: { _count: 1 } })).toMatchObject({ resourceType: 'Bundle', type: 'history' });
    for (const path of ['../auth/token', '%2e%2e/auth/token', `${foreignOrigin}/fhir/metadata`, '//127.0.0.1:9/fhir/metadata']) {
      await expect(c.request('GET', path)).rejects.toThrow('a registry request path must be relative to its base and stay under it');
    }
    expect(foreignSeen).toEqual([]);
  });

  test('the token is fetched once for many calls, and again once it is within 60 s of expiry', async () => {
    let now = Date.now();
    const c = client({ now: () => now });
    const pid = await registryPatient(c);
    const before = proxy.count('/auth/token', 'POST') - 1;
    await Promise.all(Array.from({ length: 20 }, () => c.read('Patient', pid)));
    for (let i = 0; i < 5; i++) await c.read('Patient', pid);
    expect(proxy.count('/auth/token', 'POST') - before).toBe(1);
    // Vesta's Backend Services tokens live 300 s: kept until 240 s.
    now += 239_000;
    await c.read('Patient', pid);
    expect(proxy.count('/auth/token', 'POST') - before).toBe(1);
    now += 2_000;
    await Promise.all([c.read('Patient', pid), c.read('Patient', pid), c.read('Patient', pid)]);
    expect(proxy.count('/auth/token', 'POST') - before).toBe(2);
    // The token went to the registry's token endpoint and FHIR paths only.
    expect(proxy.seen.filter((s) => s.authorized).every((s) => s.path.startsWith('/fhir/'))).toBe(true);
  });

  test('a 401 drops the token and fetches one more; a second 401 fails the call', async () => {
    const c = client();
    const pid = await registryPatient(c);
    const t0 = proxy.count('/auth/token', 'POST');
    proxy.failNext(1, 401);
    expect(await c.read('Patient', pid)).toMatchObject({ id: pid });
    expect(proxy.count('/auth/token', 'POST') - t0).toBe(1);
    proxy.failNext(2, 401);
    const e = await failure(c.read('Patient', pid));
    expect(e).toMatchObject({ code: 'http', status: 401 });
    expect(proxy.count('/auth/token', 'POST') - t0).toBe(2);
    expect(await c.read('Patient', pid)).toMatchObject({ id: pid });
  });

  test('an RS384 key, also as a KeyObject with its kid apart (as config.ts loads it), gets a token too', async () => {
    const auth = { type: 'backend-services', tokenUrl: `${base}/auth/token`, clientId: CLIENT_ID, alg: 'RS384', scope: 'system/Patient.rs' } as const;
    const jwk = client({ auth: { ...auth, privateKey: keys.RS384! } });
    expect((await jwk.search('Patient', { _count: 1 })).resourceType).toBe('Bundle');
    const { kid, ...withoutKid } = keys.RS384!;
    const keyObject = client({ auth: { ...auth, privateKey: createPrivateKey({ key: withoutKid as JsonWebKey, format: 'jwk' }), kid } });
    expect((await keyObject.search('Patient', { _count: 1 })).resourceType).toBe('Bundle');
  });

  test('a 5xx burst: each failed call is an http error with the OperationOutcome; the client recovers', async () => {
    const c = client();
    const pid = await registryPatient(c);
    proxy.failNext(3, 503, { 'retry-after': '2' });
    for (let i = 0; i < 3; i++) {
      const e = await failure(c.read('Patient', pid));
      expect(e).toMatchObject({ code: 'http', status: 503, retryAfterMs: 2000, outcome: { resourceType: 'OperationOutcome', issue: [{ code: 'transient' }] } });
      expect(e.message).toBe('registry test-iis: read Patient answered 503 (transient)');
    }
    expect(await c.read('Patient', pid)).toMatchObject({ id: pid });
    // A registry's own 4xx keeps its OperationOutcome (what a push keeps with a rejected record).
    const bad = await failure(c.conditionalUpdate('Immunization', { identifier: `${SYS}|${value('bad')}` }, { resourceType: 'Immunization', status: 'not-a-status' }));
    expect(bad.code).toBe('http');
    expect([400, 422]).toContain(bad.status);
    expect(bad.outcome?.issue.length).toBeGreaterThan(0);
    // Logged as `{ err }`, the error carries its code and status, not the registry's diagnostics.
    const lines: string[] = [];
    pino({ level: 'info' }, { write: (l: string) => void lines.push(l) }).warn({ err: bad }, 'push rejected');
    expect(JSON.parse(lines[0]).err).toMatchObject({ type: 'RegistryError', code: 'http', status: bad.status, registry: 'test-iis' });
    expect(lines[0]).not.toContain('OperationOutcome');
  });

  test('429 with Retry-After in seconds or as an HTTP date', async () => {
    let now = Date.parse('2031-02-03T04:05:06Z');
    const c = client({ now: () => now });
    const pid = await registryPatient(c);
    proxy.failNext(1, 429, { 'retry-after': '7' });
    expect(await failure(c.read('Patient', pid))).toMatchObject({ code: 'http', status: 429, retryAfterMs: 7000 });
    proxy.failNext(1, 429, { 'retry-after': new Date(now + 30_000).toUTCString() });
    expect(await failure(c.read('Patient', pid))).toMatchObject({ code: 'http', status: 429, retryAfterMs: 30_000 });
    proxy.failNext(1, 429, { 'retry-after': 'soon' });
    const e = await failure(c.read('Patient', pid));
    expect(e.status).toBe(429);
    expect(e.retryAfterMs).toBeUndefined();
    now += 1000;
    expect(await c.read('Patient', pid)).toMatchObject({ id: pid });
  });

  test('slow answers within the timeout succeed; past it a timeout error, also at the token endpoint', async () => {
    const c = client({ requestTimeoutMs: 500 });
    const pid = await registryPatient(c);
    proxy.inject({ kind: 'delay', ms: 200 });
    expect(await c.read('Patient', pid)).toMatchObject({ id: pid });
    proxy.inject({ kind: 'delay', ms: 10_000 });
    const started = performance.now();
    const e = await failure(c.read('Patient', pid));
    expect(e.code).toBe('timeout');
    expect(performance.now() - started).toBeGreaterThanOrEqual(450);
    expect(performance.now() - started).toBeLessThan(3000);
    expect(await c.read('Patient', pid)).toMatchObject({ id: pid });

    const fresh = client({ requestTimeoutMs: 500 });
    proxy.inject({ kind: 'delay', ms: 10_000 }, { on: 'token' });
    expect(await failure(fresh.read('Patient', pid))).toMatchObject({ code: 'timeout' });
    expect(await fresh.read('Patient', pid)).toMatchObject({ id: pid });
  });

  test('a dropped connection or a closed port is a network error', async () => {
    const c = client();
    const pid = await registryPatient(c);
    proxy.inject({ kind: 'drop' });
    expect(await failure(c.read('Patient', pid))).toMatchObject({ code: 'network' });
    const closed = client({ baseUrl: 'http://127.0.0.1:9/fhir', auth: { type: 'none' } });
    const e = await failure(closed.read('Patient', pid));
    expect(e.code).toBe('network');
    expect(e.message).toContain('127.0.0.1:9');
  });

  test('a malformed Bundle, invalid JSON or the wrong resource is refused as malformed', async () => {
    const c = client();
    const pid = await registryPatient(c);
    const criteria = { identifier: `${SYS}|${value('m')}` };
    const withoutType = (text: string) => {
      const b = JSON.parse(text) as Record<string, unknown>;
      delete b.type;
      return JSON.stringify(b);
    };
    const cases: [string, (text: string) => string, () => Promise<unknown>][] = [
      ['a Bundle without type', withoutType, () => c.search('Patient', criteria)],
      ['a Bundle without resourceType', (t) => t.replace('"resourceType":"Bundle"', '"kind":"Bundle"'), () => c.search('Patient', criteria)],
      ['entries that are not objects', (t) => JSON.stringify({ ...(JSON.parse(t) as object), entry: [1, 2] }), () => c.search('Patient', criteria)],
      ['truncated JSON', (t) => t.slice(0, Math.floor(t.length / 2)), () => c.search('Patient', criteria)],
      ['JSON null', () => 'null', () => c.search('Patient', criteria)],
      ['an HTML page', () => '<html>maintenance</html>', () => c.read('Patient', pid)],
      ['another resource type', () => '{"resourceType":"Observation","id":"x"}', () => c.read('Patient', pid)],
    ];
    for (const [what, rewrite, call] of cases) {
      proxy.inject({ kind: 'rewrite', body: rewrite });
      const e = await failure(call());
      expect({ what, code: e.code }).toEqual({ what, code: 'malformed' });
    }
    expect(await c.read('Patient', pid)).toMatchObject({ id: pid });
  });

  test('a next link to another host is refused and that host receives nothing', async () => {
    const c = client({ pageSize: 1 });
    const pid = await registryPatient(c);
    for (let i = 0; i < 2; i++) {
      const v = value('fl');
      await c.conditionalUpdate('Immunization', { identifier: `${SYS}|${v}` }, immunization(pid, v));
    }
    proxy.rewriteNextLink((u) => `${foreignOrigin}${u.pathname}${u.search}`);
    const first = await c.search('Immunization', { patient: `Patient/${pid}` });
    expect(first.entry).toHaveLength(1);
    const e = await failure(c.nextPage(first));
    expect(e).toMatchObject({ code: 'foreign-next-link', host: new URL(foreignOrigin).host });
    expect(e.message).toContain(new URL(foreignOrigin).host);
    expect(e.message).not.toMatch(/_page|patient|\?/);

    // Hand-made links: another scheme, port, host or path outside the base; none is requested.
    const p = new URL(proxy.url);
    const refused = [
      `https://${p.host}/fhir/Immunization?_page=x`,
      `http://localhost:${p.port}/fhir/Immunization?_page=x`,
      `http://127.0.0.1:${Number(p.port) + 1}/fhir/Immunization`,
      `${proxy.url}/fhirx/Immunization?_page=x`,
      `${proxy.url}/other/Immunization`,
      `${proxy.url}/fhir/../auth/token`,
      `${proxy.url}/fhir/%2e%2e/auth/token`,
      `http://someone@${foreignOrigin.slice(7)}/fhir/Immunization`,
      `${foreignOrigin}/fhir/Immunization?patient=${queryValues[0]}`,
      'javascript:alert(1)',
    ];
    const before = proxy.seen.length;
    for (const url of refused) {
      const err = await failure(c.nextPage({ resourceType: 'Bundle', type: 'searchset', link: [{ relation: 'next', url }] }));
      expect({ url, code: err.code }).toEqual({ url, code: 'foreign-next-link' });
    }
    expect(proxy.seen.length).toBe(before);

    // A redirect is an answer, not a request elsewhere with the token.
    proxy.inject({ kind: 'status', status: 302, headers: { location: `${foreignOrigin}/fhir/Patient/${pid}` } });
    expect(await failure(c.read('Patient', pid))).toMatchObject({ code: 'http', status: 302 });
    expect(foreignSeen).toEqual([]);
  });

  test('the token endpoint refusing the client is an auth error carrying its error code only', async () => {
    const stranger = (await privateJwk('ES384')).priv;
    const c = client({ auth: { type: 'backend-services', tokenUrl: `${base}/auth/token`, clientId: CLIENT_ID, privateKey: stranger, alg: 'ES384', scope: 'system/*.cruds' } });
    const e = await failure(c.search('Patient', { identifier: `${SYS}|${value('auth')}` }));
    expect(e).toMatchObject({ code: 'auth', status: 401, oauthError: 'invalid_client' });
    expect(e.message).toBe('registry test-iis: the token endpoint refused the client (401 invalid_client)');
    expect(proxy.seen[proxy.seen.length - 1]).toMatchObject({ method: 'POST', path: '/fhir/auth/token' });
    // A 5xx from the token endpoint is a retryable http error.
    proxy.inject({ kind: 'status', status: 503, headers: { 'retry-after': '3' }, body: { error: 'temporarily_unavailable' } }, { on: 'token' });
    expect(await failure(client().search('Patient', { _count: 1 }))).toMatchObject({ code: 'http', status: 503, retryAfterMs: 3000 });
  });

  test('the rate limit spaces requests: 12 calls at 4 per second take about 2 s', async () => {
    const c = client({ rateLimit: { requests: 4, perSeconds: 1 } });
    const pid = await registryPatient(client());
    const started = performance.now();
    const results = await Promise.all(Array.from({ length: 12 }, () => c.read('Patient', pid)));
    const ms = performance.now() - started;
    expect(results.every((r) => r.id === pid)).toBe(true);
    // A burst of 4, then 8 more at 250 ms each.
    expect(ms).toBeGreaterThanOrEqual(1950);
    expect(ms).toBeLessThan(6000);
  });

  test('a caller signal stops a wait for the rate limit', async () => {
    const c = client({ rateLimit: { requests: 1, perSeconds: 60 } });
    const pid = await registryPatient(client());
    await c.read('Patient', pid);
    const ac = new AbortController();
    const waiting = c.read('Patient', pid, { signal: ac.signal });
    ac.abort(new Error('stopping'));
    await expect(waiting).rejects.toThrow('stopping');
  });

  test('no log line, error message or stderr output holds a token, the key or a query value', () => {
    const tokens = [...proxy.authorizations].map((a) => a.replace(/^Bearer /, ''));
    expect(tokens.length).toBeGreaterThan(3);
    const secrets = [...tokens, keys.ES384!.d!, keys.RS384!.d!, ...queryValues];
    const text = [...logLines, ...errorMessages].join('\n');
    expect(logLines.length).toBeGreaterThan(10);
    expect(errorMessages.length).toBeGreaterThan(10);
    for (const s of secrets) expect(text.includes(s)).toBe(false);
    expect(stderr.join('').includes('fhir-kit-client')).toBe(false);
    expect(debug.enabled('fhir-kit-client:info')).toBe(false);
  });
});
