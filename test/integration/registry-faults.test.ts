// Registry sync under faults (issue 17: "Faults, each a test"): 5xx bursts, timeouts, slow answers, 429
// with Retry-After, a malformed Bundle, a `next` link to another host, an expired token mid-run. Set up
// as registry-sync.test.ts: a local Vesta server and a second one acting as the registry (SMART Backend
// Services), reached through the fault-injecting proxy. Each test has registry ids and a patient
// identifier system of its own, so its watermarks, breaker and records start fresh whatever ran before.
// After each fault: the run did not throw, its report and the status (getState) say what happened in one
// line without a token or a patient value, no record is partial on either side, a later fault-free run
// ends with exactly the expected records (the watermark skipped nothing), and the breaker (getBreaker)
// is where the specification puts it. Time is driven through SyncOptions.now (the breaker's cool-down)
// and `random` (no backoff), so the only waits are one Retry-After of 1 s, five 1 s request timeouts
// and four 400 ms slow answers. Both backends are kept (each about 15-25 s of tests after set-up).
// Two tests below found defects in src/ (a retry counted that never happened; a probe without a verdict
// leaving the breaker half-open); both are mended and the tests keep them so.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import { pino } from 'pino';
import { authed, backends, startTestServer, type TestServer } from '../support/backends.js';
import { RegistryProxy, type Seen } from '../support/registry-proxy.js';
import { addClient } from '../../src/auth-server/admin.js';
import { RegistryClient, type Resource, type SearchBundle } from '../../src/jobs/registry/client.js';
import { pullOnce, pushOnce, type SyncOptions, type SyncReport } from '../../src/jobs/registry/sync.js';
import { advanceWatermark, getBreaker, getRecord, getState, type SyncDirection } from '../../src/storage/registry-store.js';

type Registry = Parameters<typeof pushOnce>[1];
type Identifier = { system: string; value: string };

const CLIENT_ID = 'iis-faults';
const IIS_IMM = 'urn:test:faults-iis-immunization';
const COOLDOWN_S = 60;

let proxy: RegistryProxy;
let registryServer: TestServer;
let local: TestServer;
let base: string;
let ownSystem: string;
let privateJwk: JWK;
/** A client with no fault-test role: it sets up and reads the registry's side. */
let admin: RegistryClient;

/** A client of the registry as `id` (its errors name it), with its own token cache. */
function registryClient(id: string, requestTimeoutMs = 5000): RegistryClient {
  return new RegistryClient({
    id,
    baseUrl: base,
    auth: { type: 'backend-services', tokenUrl: `${base}/auth/token`, clientId: CLIENT_ID, privateKey: privateJwk, alg: 'ES384', scope: 'system/*.cruds' },
    requestTimeoutMs,
    rateLimit: { requests: 10_000, perSeconds: 1 },
    pageSize: 3,
    log: pino({ level: 'silent' }),
  });
}

function registryConfig(id: string, over: Partial<Registry> = {}): Registry {
  return {
    id,
    baseUrl: base,
    pageSize: 3,
    patientIdentifierSystem: `urn:test:faults-patient:${id}`,
    retry: { attempts: 3, baseDelayMs: 1, maxDelayMs: 5 },
    deadLetterAfter: 10,
    breaker: { failures: 3, cooldownSeconds: COOLDOWN_S },
    ...over,
  };
}

/** Run options: no lag, no backoff wait, and the wall clock moved on by `aheadMs` (the breaker's cool-down). */
// One record at a time: each fault lands on a known request (concurrency has tests of its own).
const at = (aheadMs = 0): SyncOptions => ({ lagMs: 0, batchSize: 50, concurrency: 1, random: () => 0, now: () => Date.now() + aheadMs });

async function post(resource: Record<string, unknown>): Promise<Resource> {
  const r = await authed(local).post(`/${resource.resourceType as string}`).send(resource);
  expect(r.status).toBe(201);
  return r.body as Resource;
}

function immunization(patient: string, lot: string, extra: Record<string, unknown> = {}) {
  return {
    resourceType: 'Immunization',
    status: 'completed',
    vaccineCode: { coding: [{ system: 'http://hl7.org/fhir/sid/cvx', code: '08', display: 'Hep B, adolescent or pediatric' }] },
    patient: { reference: patient },
    occurrenceDateTime: '2024-03-01',
    lotNumber: lot,
    ...extra,
  };
}

/** A patient of one test: its identifier value and name are the "patient values" no status may show. */
interface TestPatient {
  localId: string;
  value: string;
  family: string;
}

async function localPatient(reg: Registry): Promise<TestPatient> {
  const value = `${reg.id}-${randomUUID()}`;
  const family = `Faultname${randomUUID().slice(0, 8)}`;
  const p = await post({ resourceType: 'Patient', identifier: [{ system: reg.patientIdentifierSystem, value }], name: [{ family, given: ['Fay'] }], birthDate: '2017-11-23' });
  return { localId: p.id!, value, family };
}

/** Every resource of a registry search, through all its pages (no fault is queued while it runs). */
async function all(type: string, params: Record<string, string>): Promise<Resource[]> {
  const out: Resource[] = [];
  let page: SearchBundle | undefined = await admin.search(type, { ...params, _count: '100' });
  while (page) {
    out.push(...(page.entry ?? []).map((e) => e.resource!).filter((r) => r.resourceType === type));
    page = await admin.nextPage(page);
  }
  return out;
}

const valueOf = (r: Resource, system: string) => (r.identifier as Identifier[] | undefined)?.find((i) => i.system === system)?.value;

/**
 * Push: the registry holds exactly `expected` (local Immunizations) for the test's patient, each once
 * and whole (as the local version says), all pointing at the one registry Patient with its identifier.
 */
async function expectRegistryHolds(reg: Registry, p: TestPatient, expected: Resource[]): Promise<void> {
  const held = await all('Immunization', { 'patient.identifier': `${reg.patientIdentifierSystem}|${p.value}` });
  const ids = held.map((r) => valueOf(r, ownSystem));
  expect(new Set(ids).size).toBe(held.length);
  expect(new Set(ids)).toEqual(new Set(expected.map((r) => r.id)));
  const patients = await all('Patient', { identifier: `${reg.patientIdentifierSystem}|${p.value}` });
  expect(patients.length).toBeLessThanOrEqual(1);
  for (const mine of expected) {
    const theirs = held.find((r) => valueOf(r, ownSystem) === mine.id)!;
    expect(theirs).toMatchObject({ status: mine.status, lotNumber: mine.lotNumber, occurrenceDateTime: mine.occurrenceDateTime, vaccineCode: mine.vaccineCode, patient: { reference: `Patient/${patients[0].id}` } });
  }
}

/** Pull: the registry's Patient with the test patient's identifier, and `n` Immunizations of it there. */
async function registryRecords(reg: Registry, p: TestPatient, n: number): Promise<Resource[]> {
  const rp = await admin.conditionalCreate({ resourceType: 'Patient', identifier: [{ system: reg.patientIdentifierSystem, value: p.value }], name: [{ family: p.family }] }, { identifier: `${reg.patientIdentifierSystem}|${p.value}` });
  const out: Resource[] = [];
  for (let i = 0; i < n; i++) {
    const v = `${reg.id}-iis-${i}-${randomUUID()}`;
    const r = await admin.conditionalUpdate('Immunization', { identifier: `${IIS_IMM}|${v}` }, immunization(`Patient/${rp.resource!.id}`, `${reg.id}-IIS-${i}`, { identifier: [{ system: IIS_IMM, value: v }] }));
    out.push(r.resource!);
  }
  return out;
}

/** Pull: Vesta holds exactly the registry records `expected` for the test's patient, each once and whole. */
async function expectLocalHolds(p: TestPatient, expected: Resource[]): Promise<void> {
  const r = await authed(local).get('/Immunization').query({ patient: `Patient/${p.localId}`, _count: '200' });
  expect(r.status).toBe(200);
  const held = ((r.body as SearchBundle).entry ?? []).map((e) => e.resource!);
  const theirs = held.map((x) => valueOf(x, `${base}/Immunization`));
  expect(new Set(theirs).size).toBe(held.length);
  expect(new Set(theirs)).toEqual(new Set(expected.map((x) => x.id)));
  for (const remote of expected) {
    const mine = held.find((x) => valueOf(x, `${base}/Immunization`) === remote.id)!;
    expect(mine).toMatchObject({ status: remote.status, lotNumber: remote.lotNumber, occurrenceDateTime: remote.occurrenceDateTime, vaccineCode: remote.vaccineCode, patient: { reference: `Patient/${p.localId}` } });
    expect(mine.meta!.source).toBe(`${base}/Immunization/${remote.id}`);
    expect(valueOf(mine, IIS_IMM)).toBe(valueOf(remote, IIS_IMM));
  }
}

/**
 * The status of (registry, direction) says `outcome`, with a lastError containing each fragment (or
 * none), in one line, the same as the report's `stopped`, and without a token or a patient value.
 */
async function expectStatus(reg: Registry, direction: SyncDirection, report: SyncReport, outcome: string, p: TestPatient, ...fragments: string[]): Promise<string | null> {
  const s = await getState(local.svc.db.knex, reg.id, direction);
  expect(s?.lastOutcome).toBe(outcome);
  const line = s!.lastError;
  if (!fragments.length) {
    expect(line).toBeNull();
    expect(report.stopped).toBeUndefined();
    return line;
  }
  expect(typeof line).toBe('string');
  expect(line).toBe(report.stopped);
  for (const f of fragments) expect(line).toContain(f);
  expect(line).not.toMatch(/[\r\n]/);
  expect(line!.length).toBeLessThan(400);
  const tokens = [...proxy.authorizations].map((a) => a.replace(/^Bearer /, ''));
  expect(tokens.length).toBeGreaterThan(0);
  for (const secret of [...tokens, p.value, p.family, '2017-11-23']) expect(line).not.toContain(secret);
  return line;
}

/** The requests the proxy saw since `mark` (an index into proxy.seen). */
const since = (mark: number): Seen[] => proxy.seen.slice(mark);
const fhirOnly = (seen: Seen[]) => seen.filter((s) => !s.path.endsWith('/auth/token'));

/** A view of `client` that queues `inject()` on the proxy just before its `nth` call of `method` (1-based). */
function faultBefore<M extends 'nextPage' | 'conditionalUpdate'>(client: RegistryClient, method: M, nth: number, inject: () => void): RegistryClient {
  const real = (client[method] as (...a: unknown[]) => Promise<unknown>).bind(client);
  let calls = 0;
  const view = Object.create(client) as RegistryClient;
  (view as unknown as Record<string, unknown>)[method] = (...a: unknown[]) => {
    if (++calls === nth) inject();
    return real(...a);
  };
  return view;
}

// The faults are the sync's and the client's, not the database's: one backend (PostgreSQL when there is one).
describe.each(backends().slice(-1))('registry sync faults (%s)', (backend) => {
  beforeAll(async () => {
    proxy = await RegistryProxy.start();
    base = `${proxy.url}/fhir`;
    registryServer = await startTestServer(backend, { BASE_URL: base });
    proxy.target = registryServer.url;
    local = await startTestServer(backend);
    ownSystem = `${local.svc.config.baseUrl}/Immunization`;
    const { privateKey, publicKey } = await generateKeyPair('ES384', { extractable: true });
    const kid = `ES384-${randomUUID().slice(0, 8)}`;
    const pub = { ...(await exportJWK(publicKey)), kid, alg: 'ES384', use: 'sig' };
    await addClient(registryServer.svc.db.knex, { client_id: CLIENT_ID, type: 'confidential-asymmetric', redirect_uris: [], scope: 'system/*.cruds', jwks: { keys: [pub] } }, { allowLoopbackJwksUri: false });
    privateJwk = { ...(await exportJWK(privateKey)), kid, alg: 'ES384' };
    admin = registryClient('faults-admin');
  }, 120_000);

  afterAll(async () => {
    await proxy?.close();
    await registryServer?.close();
    await local?.close();
  });

  /** Push set-up: a patient and `n` local Immunizations, with the push watermark just before them. */
  async function pushSetUp(reg: Registry, n: number) {
    const p = await localPatient(reg);
    const imms: Resource[] = [];
    for (let i = 0; i < n; i++) imms.push(await post(immunization(`Patient/${p.localId}`, `${reg.id}-LOT-${i}`)));
    await advanceWatermark(local.svc.db.knex, reg.id, 'push', null, new Date(Date.parse(imms[0].meta!.lastUpdated!) - 1));
    return { p, imms };
  }

  const moreImmunizations = async (reg: Registry, p: TestPatient, n: number, tag: string) => {
    const out: Resource[] = [];
    for (let i = 0; i < n; i++) out.push(await post(immunization(`Patient/${p.localId}`, `${reg.id}-${tag}-${i}`)));
    return out;
  };

  test('a 5xx burst during push: the breaker opens at the Nth consecutive failure (not before), stays open, probes after the cool-down, re-opens on a failed probe, closes on success', async () => {
    const reg = registryConfig('faults-5xx', { breaker: { failures: 4, cooldownSeconds: COOLDOWN_S } });
    const client = registryClient(reg.id);
    const { p, imms } = await pushSetUp(reg, 5);
    const knex = local.svc.db.knex;
    const watermark0 = (await getState(knex, reg.id, 'push'))!.watermark;

    // Three 503s: the retries run out, the run stops on the 503; three failures counted, still closed.
    proxy.failNext(3, 503);
    let mark = proxy.seen.length;
    const first = await pushOnce(local.svc, reg, client, at());
    expect(first).toMatchObject({ sent: 0, retried: 2, breaker: 'closed', watermarkBefore: watermark0, watermarkAfter: watermark0 });
    expect(first.notStarted).toBeUndefined();
    expect(fhirOnly(since(mark)).map((s) => s.status)).toEqual([503, 503, 503]);
    await expectStatus(reg, 'push', first, 'stopped', p, 'answered 503');
    expect(first.stopped).not.toContain('circuit breaker');
    expect(await getBreaker(knex, reg.id)).toMatchObject({ state: 'closed', consecutiveFailures: 3, openedAt: null });

    // One more: the fourth consecutive failure opens it, and the run makes no further call.
    proxy.failNext(1, 503);
    mark = proxy.seen.length;
    const opening = await pushOnce(local.svc, reg, client, at());
    expect(opening).toMatchObject({ sent: 0, retried: 0, breaker: 'open', watermarkAfter: watermark0 });
    expect(fhirOnly(since(mark)).map((s) => s.status)).toEqual([503]);
    await expectStatus(reg, 'push', opening, 'stopped', p, 'circuit breaker open after 4 consecutive failed calls', 'http 503');
    const opened = await getBreaker(knex, reg.id);
    expect(opened).toMatchObject({ state: 'open', consecutiveFailures: 4, lastFailure: 'http 503' });
    expect(opened.openedAt).toBeInstanceOf(Date);
    await expectRegistryHolds(reg, p, []);

    // Open: no run, nothing sent (not even a token request), now and half-way through the cool-down.
    for (const ahead of [0, (COOLDOWN_S / 2) * 1000]) {
      mark = proxy.seen.length;
      const refused = await pushOnce(local.svc, reg, client, at(ahead));
      expect(refused).toMatchObject({ notStarted: true, breaker: 'open', sent: 0, watermarkAfter: watermark0 });
      expect(since(mark)).toEqual([]);
      await expectStatus(reg, 'push', refused, 'not-started', p, 'circuit breaker open since', 'next probe after');
      expect(await getBreaker(knex, reg.id)).toMatchObject({ state: 'open', consecutiveFailures: 4 });
    }

    // After the cool-down one run probes with GET metadata; the probe fails: open again at once, no more calls.
    proxy.inject({ kind: 'status', status: 503 }, { on: /\/fhir\/metadata$/ });
    mark = proxy.seen.length;
    const probeAt = Date.now() + (COOLDOWN_S + 1) * 1000;
    const probeFailed = await pushOnce(local.svc, reg, client, at((COOLDOWN_S + 1) * 1000));
    expect(probeFailed).toMatchObject({ sent: 0, breaker: 'open', watermarkAfter: watermark0 });
    expect(probeFailed.notStarted).toBeUndefined();
    expect(fhirOnly(since(mark)).map((s) => [s.method, s.path, s.status])).toEqual([['GET', '/fhir/metadata', 503]]);
    await expectStatus(reg, 'push', probeFailed, 'stopped', p, 'circuit breaker open after 5 consecutive failed calls');
    const reopened = await getBreaker(knex, reg.id);
    expect(reopened).toMatchObject({ state: 'open', consecutiveFailures: 5 });
    // Its cool-down starts again from the failed probe.
    expect(reopened.openedAt!.getTime()).toBeGreaterThanOrEqual(probeAt - 1000);
    mark = proxy.seen.length;
    const stillOpen = await pushOnce(local.svc, reg, client, at((COOLDOWN_S + 1) * 1000));
    expect(stillOpen).toMatchObject({ notStarted: true, breaker: 'open' });
    expect(since(mark)).toEqual([]);

    // A second cool-down later the probe succeeds: closed, and the run sends everything, once each.
    mark = proxy.seen.length;
    const probeOk = await pushOnce(local.svc, reg, client, at((3 * COOLDOWN_S + 5) * 1000));
    expect(probeOk).toMatchObject({ sent: 5, rejected: 0, retried: 0, breaker: 'closed' });
    expect(probeOk.notStarted).toBeUndefined();
    expect(fhirOnly(since(mark))[0]).toMatchObject({ method: 'GET', path: '/fhir/metadata', status: 200 });
    await expectStatus(reg, 'push', probeOk, 'completed', p);
    expect(await getBreaker(knex, reg.id)).toMatchObject({ state: 'closed', consecutiveFailures: 0, openedAt: null });
    await expectRegistryHolds(reg, p, imms);
    expect(probeOk.watermarkAfter).toEqual(new Date(imms[4].meta!.lastUpdated!));
    // Nothing left: the next run sends nothing.
    expect(await pushOnce(local.svc, reg, client, at((3 * COOLDOWN_S + 5) * 1000))).toMatchObject({ sent: 0, rejected: 0 });
  });

  test('timeouts (past requestTimeoutMs) count on the breaker: a success resets the count, N in a row open it', async () => {
    const reg = registryConfig('faults-timeout', { retry: { attempts: 5, baseDelayMs: 1, maxDelayMs: 5 }, breaker: { failures: 3, cooldownSeconds: COOLDOWN_S } });
    // 1 s rather than less: every request of these runs but the delayed ones must answer within it,
    // also on a loaded machine (300 ms made the embedded backend flaky with other test runs alongside).
    const short = registryClient(reg.id, 1000);
    const { p, imms } = await pushSetUp(reg, 2);
    const knex = local.svc.db.knex;

    // Two timeouts, then an answer: the run goes on and completes; the count is back to 0.
    proxy.inject({ kind: 'delay', ms: 5000 }, { times: 2 });
    let mark = proxy.seen.length;
    const started = performance.now();
    const recovered = await pushOnce(local.svc, reg, short, at());
    expect(recovered).toMatchObject({ sent: 2, retried: 2, breaker: 'closed' });
    expect(performance.now() - started).toBeLessThan(8000);
    // The proxy saw the client give up: the two delayed requests never reached the registry.
    expect(fhirOnly(since(mark)).filter((s) => s.fault === 'delay').map((s) => s.status)).toEqual([0, 0]);
    await expectStatus(reg, 'push', recovered, 'completed', p);
    expect(await getBreaker(knex, reg.id)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
    await expectRegistryHolds(reg, p, imms);

    // Three timeouts in a row: the third opens the breaker and the run stops there.
    const later = await moreImmunizations(reg, p, 2, 'T');
    proxy.inject({ kind: 'delay', ms: 5000 }, { times: 3 });
    mark = proxy.seen.length;
    const opening = await pushOnce(local.svc, reg, short, at());
    expect(opening).toMatchObject({ sent: 0, retried: 2, breaker: 'open' });
    expect(fhirOnly(since(mark)).map((s) => s.fault)).toEqual(['delay', 'delay', 'delay']);
    await expectStatus(reg, 'push', opening, 'stopped', p, 'circuit breaker open after 3 consecutive failed calls', 'timeout');
    expect(await getBreaker(knex, reg.id)).toMatchObject({ state: 'open', consecutiveFailures: 3, lastFailure: 'timeout' });
    await expectRegistryHolds(reg, p, imms);

    mark = proxy.seen.length;
    expect(await pushOnce(local.svc, reg, short, at())).toMatchObject({ notStarted: true, breaker: 'open', sent: 0 });
    expect(since(mark)).toEqual([]);

    // After the cool-down: the probe answers in time, the run sends what was left.
    const closing = await pushOnce(local.svc, reg, short, at((COOLDOWN_S + 1) * 1000));
    expect(closing).toMatchObject({ sent: 2, retried: 0, breaker: 'closed' });
    await expectStatus(reg, 'push', closing, 'completed', p);
    expect(await getBreaker(knex, reg.id)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
    await expectRegistryHolds(reg, p, [...imms, ...later]);
  });

  test('a dropped connection (network error) counts on the breaker like a timeout', async () => {
    const reg = registryConfig('faults-drop', { breaker: { failures: 2, cooldownSeconds: COOLDOWN_S } });
    const client = registryClient(reg.id);
    const { p, imms } = await pushSetUp(reg, 2);
    proxy.inject({ kind: 'drop' }, { times: 2 });
    const opening = await pushOnce(local.svc, reg, client, at());
    expect(opening).toMatchObject({ sent: 0, retried: 1, breaker: 'open' });
    await expectStatus(reg, 'push', opening, 'stopped', p, 'circuit breaker open after 2 consecutive failed calls', 'network');
    expect(await getBreaker(local.svc.db.knex, reg.id)).toMatchObject({ state: 'open', consecutiveFailures: 2, lastFailure: 'network' });
    await expectRegistryHolds(reg, p, []);
    const closing = await pushOnce(local.svc, reg, client, at((COOLDOWN_S + 1) * 1000));
    expect(closing).toMatchObject({ sent: 2, breaker: 'closed' });
    await expectRegistryHolds(reg, p, imms);
  });

  test('slow answers within requestTimeoutMs succeed and do not count on the breaker', async () => {
    // A threshold of 1: any slow answer counted as a failure would open the breaker.
    const reg = registryConfig('faults-slow', { breaker: { failures: 1, cooldownSeconds: COOLDOWN_S } });
    const short = registryClient(reg.id, 2000);
    const { p, imms } = await pushSetUp(reg, 3);
    proxy.inject({ kind: 'delay', ms: 400 }, { times: 20 });
    const mark = proxy.seen.length;
    const started = performance.now();
    const report = await pushOnce(local.svc, reg, short, at());
    const took = performance.now() - started;
    proxy.clearFaults();
    expect(report).toMatchObject({ sent: 3, retried: 0, rejected: 0, breaker: 'closed' });
    // The Patient's conditional create and three conditional updates, each delayed and answered.
    const slow = fhirOnly(since(mark));
    expect(slow).toHaveLength(4);
    for (const s of slow) expect(s).toMatchObject({ fault: 'delay' });
    for (const s of slow) expect([200, 201]).toContain(s.status);
    expect(took).toBeGreaterThanOrEqual(4 * 400 - 50);
    await expectStatus(reg, 'push', report, 'completed', p);
    expect(await getBreaker(local.svc.db.knex, reg.id)).toMatchObject({ state: 'closed', consecutiveFailures: 0, lastFailure: null });
    await expectRegistryHolds(reg, p, imms);
  });

  test('429 with Retry-After: waited as told and not counted on the breaker; a Retry-After too long stops the run, still not counted', async () => {
    const reg = registryConfig('faults-429', { breaker: { failures: 1, cooldownSeconds: COOLDOWN_S } });
    const client = registryClient(reg.id);
    const { p, imms } = await pushSetUp(reg, 2);
    const knex = local.svc.db.knex;

    proxy.failNext(1, 429, { 'retry-after': '1' });
    proxy.failNext(1, 429, { 'retry-after': '0' });
    let mark = proxy.seen.length;
    const started = performance.now();
    const waited = await pushOnce(local.svc, reg, client, at());
    expect(performance.now() - started).toBeGreaterThanOrEqual(950);
    expect(waited).toMatchObject({ sent: 2, retried: 2, rejected: 0, breaker: 'closed' });
    expect(fhirOnly(since(mark)).slice(0, 3).map((s) => s.status)).toEqual([429, 429, 201]);
    await expectStatus(reg, 'push', waited, 'completed', p);
    expect(await getBreaker(knex, reg.id)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
    await expectRegistryHolds(reg, p, imms);

    // An hour asked: the run does not wait it out; it stops and leaves the rest to a later run.
    const later = await moreImmunizations(reg, p, 2, 'R');
    proxy.failNext(1, 429, { 'retry-after': '3600' });
    mark = proxy.seen.length;
    const t0 = performance.now();
    const stopped = await pushOnce(local.svc, reg, client, at());
    expect(performance.now() - t0).toBeLessThan(3000);
    // (Its `retried` count is checked in the next test.)
    expect(stopped).toMatchObject({ sent: 0, breaker: 'closed' });
    expect(fhirOnly(since(mark)).map((s) => s.status)).toEqual([429]);
    await expectStatus(reg, 'push', stopped, 'stopped', p, 'answered 429');
    expect(await getBreaker(knex, reg.id)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
    expect(stopped.watermarkAfter).toEqual(stopped.watermarkBefore);
    await expectRegistryHolds(reg, p, imms);

    const resumed = await pushOnce(local.svc, reg, client, at());
    expect(resumed).toMatchObject({ sent: 2, breaker: 'closed' });
    await expectStatus(reg, 'push', resumed, 'completed', p);
    await expectRegistryHolds(reg, p, [...imms, ...later]);
  });

  // Found a defect: the retry was counted before the check that gives up on a Retry-After longer than
  // the run waits, so a run that made one request reported (and stored) retried: 1.
  test('a 429 whose Retry-After is too long to wait is not counted as a retry', async () => {
    const reg = registryConfig('faults-429-count');
    const client = registryClient(reg.id);
    const { p } = await pushSetUp(reg, 1);
    proxy.failNext(1, 429, { 'retry-after': '3600' });
    const mark = proxy.seen.length;
    const stopped = await pushOnce(local.svc, reg, client, at());
    await expectStatus(reg, 'push', stopped, 'stopped', p, 'answered 429');
    // One request, answered 429, and no other: nothing was retried.
    expect(fhirOnly(since(mark)).map((s) => s.status)).toEqual([429]);
    expect(stopped.retried).toBe(0);
    expect((await getState(local.svc.db.knex, reg.id, 'push'))!.counts.retried).toBe(0);
  });

  test('an answer lost after the registry wrote the record (connection dropped): the retry finds it, one record, whole', async () => {
    const reg = registryConfig('faults-lost-answer');
    const client = registryClient(reg.id);
    const { p, imms } = await pushSetUp(reg, 2);
    // The first update reaches the registry, which writes it; its answer never comes back.
    const lost = faultBefore(client, 'conditionalUpdate', 1, () =>
      proxy.inject({
        kind: 'rewrite',
        body: () => {
          throw new Error('answer lost');
        },
      }),
    );
    const mark = proxy.seen.length;
    const report = await pushOnce(local.svc, reg, lost, at());
    expect(report).toMatchObject({ sent: 2, retried: 1, rejected: 0, breaker: 'closed' });
    const puts = fhirOnly(since(mark)).filter((s) => s.method === 'PUT');
    // Forwarded and written, its answer cut off (the proxy records no status), then the same conditional
    // update again: 200, the registry updated the record it had written; no second record.
    expect(puts.map((s) => [s.fault, s.status])).toEqual([
      ['rewrite', 0],
      [undefined, 200],
      [undefined, 201],
    ]);
    await expectStatus(reg, 'push', report, 'completed', p);
    expect(await getBreaker(local.svc.db.knex, reg.id)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
    await expectRegistryHolds(reg, p, imms);
  });

  // Found a defect: a probe that ended on neither an answer nor a counted failure (the token endpoint
  // refusing the client) left the breaker half-open, and the next run was refused for a whole cool-down
  // with "another run is probing the registry" when no run was. Such a probe now leaves it open, due.
  test('a probe stopped by a token refusal does not leave the status claiming a probe in progress', async () => {
    const reg = registryConfig('faults-probe-auth', { breaker: { failures: 1, cooldownSeconds: COOLDOWN_S } });
    const { p, imms } = await pushSetUp(reg, 1);
    proxy.failNext(1, 503);
    const opening = await pushOnce(local.svc, reg, registryClient(reg.id), at());
    expect(opening).toMatchObject({ breaker: 'open' });
    // After the cool-down the probe run needs a token (a new client has none) and the token endpoint refuses it.
    proxy.inject({ kind: 'status', status: 401, headers: { 'content-type': 'application/json' }, body: { error: 'invalid_client' } }, { on: 'token' });
    const ahead = (COOLDOWN_S + 1) * 1000;
    const probe = await pushOnce(local.svc, reg, registryClient(reg.id), at(ahead));
    expect(probe.notStarted).toBeUndefined();
    await expectStatus(reg, 'push', probe, 'stopped', p, 'the token endpoint refused the client (401 invalid_client)');
    // That probe run is over. The next run either probes itself or says why not, truthfully.
    const next = await pushOnce(local.svc, reg, registryClient(reg.id), at(ahead + 1000));
    expect(next.stopped ?? '').not.toContain('another run is probing');
    // It probes: the registry answers, the breaker closes and the record is sent.
    expect(next).toMatchObject({ sent: 1, breaker: 'closed' });
    expect(next.notStarted).toBeUndefined();
    expect(await getBreaker(local.svc.db.knex, reg.id)).toMatchObject({ state: 'closed' });
    await expectRegistryHolds(reg, p, imms);
  });

  test('a malformed Bundle mid-pull stops the pull with a clear status; nothing of that page is stored; the next run completes', async () => {
    const reg = registryConfig('faults-malformed');
    const client = registryClient(reg.id);
    const p = await localPatient(reg);
    // Seven records: pages of 3, 3 and 1.
    const remote = await registryRecords(reg, p, 7);
    const knex = local.svc.db.knex;

    // The second page holds its three good entries and one without a resourceType: the page is refused whole.
    const brokenEntry = faultBefore(client, 'nextPage', 1, () =>
      proxy.inject({
        kind: 'rewrite',
        body: (text) => {
          const b = JSON.parse(text) as { entry?: unknown[] };
          b.entry = [...(b.entry ?? []), { resource: { id: 'no-type' } }];
          return JSON.stringify(b);
        },
      }),
    );
    const first = await pullOnce(local.svc, reg, brokenEntry, at());
    expect(first).toMatchObject({ stored: 3, rejected: 0, breaker: 'closed', watermarkBefore: null, watermarkAfter: null });
    await expectStatus(reg, 'pull', first, 'stopped', p, `registry ${reg.id}: next-page Bundle answered something other than a FHIR Bundle`);
    const stored = await storedFrom(p);
    expect(stored).toHaveLength(3);
    await expectLocalHolds(
      p,
      remote.filter((r) => stored.includes(r.id!)),
    );
    expect(await getBreaker(knex, reg.id)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });

    // The second page cut in half (not JSON): stopped again, the first page skipped as handled.
    const truncated = faultBefore(client, 'nextPage', 1, () => proxy.inject({ kind: 'rewrite', body: (text) => text.slice(0, Math.floor(text.length / 2)) }));
    const second = await pullOnce(local.svc, reg, truncated, at());
    expect(second).toMatchObject({ stored: 0, skipped: 3, breaker: 'closed', watermarkAfter: null });
    await expectStatus(reg, 'pull', second, 'stopped', p, `registry ${reg.id}: next-page Bundle answered`);
    expect(await storedFrom(p)).toEqual(stored);

    // No fault: the rest is stored, the watermark moves to the newest record.
    const done = await pullOnce(local.svc, reg, client, at());
    expect(done).toMatchObject({ stored: 4, skipped: 3, rejected: 0, unmatched: 0, breaker: 'closed' });
    await expectStatus(reg, 'pull', done, 'completed', p);
    await expectLocalHolds(p, remote);
    const newest = Math.max(...remote.map((r) => Date.parse(r.meta!.lastUpdated!)));
    expect(done.watermarkAfter).toEqual(new Date(newest));
    expect(await pullOnce(local.svc, reg, client, at())).toMatchObject({ stored: 0, skipped: 0 });
  });

  test('a 5xx burst mid-pull opens the breaker: the page handled is stored whole, the watermark stays, the run after the cool-down completes', async () => {
    const reg = registryConfig('faults-pull-5xx', { breaker: { failures: 2, cooldownSeconds: COOLDOWN_S } });
    const client = registryClient(reg.id);
    const p = await localPatient(reg);
    const remote = await registryRecords(reg, p, 5);
    const burst = faultBefore(client, 'nextPage', 1, () => proxy.failNext(2, 502));
    const mark = proxy.seen.length;
    const opening = await pullOnce(local.svc, reg, burst, at());
    expect(opening).toMatchObject({ stored: 3, retried: 1, breaker: 'open', watermarkBefore: null, watermarkAfter: null });
    expect(fhirOnly(since(mark)).filter((s) => s.fault).map((s) => s.status)).toEqual([502, 502]);
    await expectStatus(reg, 'pull', opening, 'stopped', p, 'circuit breaker open after 2 consecutive failed calls', 'http 502');
    const stored = await storedFrom(p);
    expect(stored).toHaveLength(3);
    await expectLocalHolds(
      p,
      remote.filter((r) => stored.includes(r.id!)),
    );
    // The breaker is the registry's: the push direction does not start either.
    const m2 = proxy.seen.length;
    expect(await pushOnce(local.svc, reg, client, at())).toMatchObject({ notStarted: true, breaker: 'open' });
    expect(await pullOnce(local.svc, reg, client, at())).toMatchObject({ notStarted: true, breaker: 'open' });
    expect(since(m2)).toEqual([]);
    const done = await pullOnce(local.svc, reg, client, at((COOLDOWN_S + 1) * 1000));
    expect(done).toMatchObject({ stored: 2, skipped: 3, breaker: 'closed' });
    await expectStatus(reg, 'pull', done, 'completed', p);
    expect(await getBreaker(local.svc.db.knex, reg.id)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
    await expectLocalHolds(p, remote);
  });

  test('a `next` link to another host is refused: that host receives nothing, the status says so, the next run completes', async () => {
    const reg = registryConfig('faults-next-link');
    const client = registryClient(reg.id);
    const p = await localPatient(reg);
    const remote = await registryRecords(reg, p, 5);
    const hits: { url?: string; authorized: boolean }[] = [];
    // A host serving an inviting page: any request that reached it would be a leak of the query and maybe the token.
    const other: Server = createServer((req, res) => {
      hits.push({ url: req.url, authorized: req.headers.authorization !== undefined });
      res.writeHead(200, { 'content-type': 'application/fhir+json' }).end(JSON.stringify({ resourceType: 'Bundle', type: 'searchset', entry: [] }));
    });
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    const otherHost = `127.0.0.1:${(other.address() as AddressInfo).port}`;
    try {
      // The first page's next link is rewritten to the other host (same path and query).
      proxy.rewriteNextLink((u) => `http://${otherHost}${u.pathname}${u.search}`);
      const foreign = await pullOnce(local.svc, reg, client, at());
      expect(foreign).toMatchObject({ stored: 3, breaker: 'closed', watermarkAfter: null });
      await expectStatus(reg, 'pull', foreign, 'stopped', p, `a next link points to ${otherHost}, not to the registry; not followed`);
      expect(hits).toEqual([]);
      const stored = await storedFrom(p);
      expect(stored).toHaveLength(3);
      await expectLocalHolds(
        p,
        remote.filter((r) => stored.includes(r.id!)),
      );

      // Same origin, outside the registry's base path: refused too, and no request made there.
      proxy.rewriteNextLink((u) => `${u.origin}/elsewhere${u.pathname}${u.search}`);
      const mark = proxy.seen.length;
      const outside = await pullOnce(local.svc, reg, client, at());
      expect(outside).toMatchObject({ stored: 0, skipped: 3, watermarkAfter: null });
      await expectStatus(reg, 'pull', outside, 'stopped', p, "a next link points outside the registry's base path");
      expect(since(mark).filter((s) => s.path.startsWith('/elsewhere'))).toEqual([]);
      expect(await getBreaker(local.svc.db.knex, reg.id)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });

      const done = await pullOnce(local.svc, reg, client, at());
      expect(done).toMatchObject({ stored: 2, skipped: 3 });
      await expectStatus(reg, 'pull', done, 'completed', p);
      await expectLocalHolds(p, remote);
      expect(hits).toEqual([]);
    } finally {
      other.closeAllConnections();
      await new Promise((resolve) => other.close(resolve));
    }
  });

  test('an expired token mid-run: a new one is fetched and the run goes on; a token endpoint that then refuses stops the run (auth), not counted on the breaker', async () => {
    // A threshold of 1: a refusal counted as the registry's absence would open the breaker.
    const reg = registryConfig('faults-token', { breaker: { failures: 1, cooldownSeconds: COOLDOWN_S } });
    const client = registryClient(reg.id);
    const { p, imms } = await pushSetUp(reg, 3);
    const knex = local.svc.db.knex;

    // The registry refuses the token at the second record's update (401): one more token request, the run goes on.
    let mark = proxy.seen.length;
    const tokensBefore = proxy.authorizations.size;
    const renewed = await pushOnce(local.svc, reg, faultBefore(client, 'conditionalUpdate', 2, () => proxy.failNext(1, 401)), at());
    expect(renewed).toMatchObject({ sent: 3, retried: 0, rejected: 0, breaker: 'closed' });
    const seen = since(mark).map((s) => `${s.method} ${s.path.replace(/^\/fhir\//, '')} ${s.status}`);
    expect(seen.filter((s) => s.startsWith('POST auth/token'))).toHaveLength(2);
    // The 401, then a new token, then the same update again.
    const refusedAt = seen.indexOf('PUT Immunization 401');
    expect(refusedAt).toBeGreaterThan(0);
    expect(seen.slice(refusedAt, refusedAt + 3)).toEqual(['PUT Immunization 401', 'POST auth/token 200', 'PUT Immunization 201']);
    expect(proxy.authorizations.size - tokensBefore).toBe(2);
    await expectStatus(reg, 'push', renewed, 'completed', p);
    expect(await getBreaker(knex, reg.id)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
    await expectRegistryHolds(reg, p, imms);

    // Again a 401, and now the token endpoint refuses the client: the run stops with the refusal.
    const later = await moreImmunizations(reg, p, 3, 'K');
    mark = proxy.seen.length;
    const refused = await pushOnce(
      local.svc,
      reg,
      faultBefore(client, 'conditionalUpdate', 2, () => {
        proxy.failNext(1, 401);
        proxy.inject({ kind: 'status', status: 401, headers: { 'content-type': 'application/json' }, body: { error: 'invalid_client', error_description: 'client disabled' } }, { on: 'token' });
      }),
      at(),
    );
    expect(refused).toMatchObject({ sent: 1, rejected: 0, deadLettered: 0, breaker: 'closed' });
    expect(refused.notStarted).toBeUndefined();
    await expectStatus(reg, 'push', refused, 'stopped', p, `registry ${reg.id}: the token endpoint refused the client (401 invalid_client)`);
    expect(since(mark).filter((s) => s.path.endsWith('/auth/token')).map((s) => s.status)).toEqual([401]);
    expect(await getBreaker(knex, reg.id)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
    // The refusal is the job's, not the record's: nothing is held against the second record.
    expect(await getRecord(knex, { registryId: reg.id, direction: 'push', resourceType: 'Immunization', resourceId: later[1].id! })).toBeUndefined();
    await expectRegistryHolds(reg, p, [...imms, later[0]]);
    // The watermark covers the one sent, not the one refused.
    const wm = (await getState(knex, reg.id, 'push'))!.watermark!;
    expect(wm.getTime()).toBeLessThan(Date.parse(later[1].meta!.lastUpdated!));
    expect(wm.getTime()).toBeGreaterThanOrEqual(Date.parse(imms[2].meta!.lastUpdated!));

    // The token endpoint answers again: the rest is sent, once each.
    const resumed = await pushOnce(local.svc, reg, client, at());
    expect(resumed).toMatchObject({ sent: 2, breaker: 'closed' });
    await expectStatus(reg, 'push', resumed, 'completed', p);
    await expectRegistryHolds(reg, p, [...imms, ...later]);
  });
});

/** The registry ids of the Immunizations Vesta holds for the test's patient, as pulled. */
async function storedFrom(p: TestPatient): Promise<string[]> {
  const r = await authed(local).get('/Immunization').query({ patient: `Patient/${p.localId}`, _count: '200' });
  expect(r.status).toBe(200);
  return ((r.body as SearchBundle).entry ?? []).map((e) => valueOf(e.resource!, `${base}/Immunization`)!).sort();
}
