// Registry sync (src/jobs/registry/sync.ts) between two real Vesta servers: the local one, and a second
// one acting as the immunization registry (its own database, SMART Backend Services), reached through
// the fault-injecting proxy of test/support/registry-proxy.ts that is its public address. The tests
// run in order on the same two servers: each starts from what the previous ones left.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { exportJWK, generateKeyPair } from 'jose';
import { pino } from 'pino';
import { authed, backends, startTestServer, type TestServer } from '../support/backends.js';
import { RegistryProxy } from '../support/registry-proxy.js';
import { addClient } from '../../src/auth-server/admin.js';
import { RegistryClient, type Resource, type SearchBundle } from '../../src/jobs/registry/client.js';
import { pullOnce, pushOnce, type SyncOptions } from '../../src/jobs/registry/sync.js';
import { advanceWatermark, getRecord, getState, listDeadLetters, listReviews } from '../../src/storage/registry-store.js';

const SYS = 'urn:test:iis-patient';
const IIS_IMM = 'urn:test:iis-immunization';
const CLIENT_ID = 'iis-sync';

let proxy: RegistryProxy;
let registryServer: TestServer;
let local: TestServer;
let base: string;
let client: RegistryClient;
let ownSystem: string;
const registry = {
  id: 'test-iis',
  baseUrl: '',
  pageSize: 10,
  patientIdentifierSystem: SYS,
  retry: { attempts: 3, baseDelayMs: 5, maxDelayMs: 40 },
  deadLetterAfter: 3,
  // The breaker has tests of its own (registry-faults.test.ts); here it never opens.
  breaker: { failures: 1000, cooldownSeconds: 60 },
};
// Fresh writes are in the window at once (the lag itself is a matter of lastUpdated arithmetic).
// One record at a time, so each injected fault lands on a known request (concurrency: registry-schedule and registry-crash).
const now: SyncOptions = { lagMs: 0, batchSize: 7, concurrency: 1 };

async function post(resource: Record<string, unknown>): Promise<Resource> {
  const r = await authed(local).post(`/${resource.resourceType as string}`).send(resource);
  expect(r.status).toBe(201);
  return r.body as Resource;
}

function localPatient(value?: string) {
  return post({ resourceType: 'Patient', name: [{ family: 'Sync', given: ['Sam'] }], birthDate: '2018-04-02', ...(value ? { identifier: [{ system: SYS, value }] } : {}) });
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

/** Every resource of a registry search, through all its pages. */
async function all(type: string, params: Record<string, string>): Promise<Resource[]> {
  const out: Resource[] = [];
  let page: SearchBundle | undefined = await client.search(type, { ...params, _count: '100' });
  while (page) {
    out.push(...(page.entry ?? []).map((e) => e.resource!).filter((r) => r.resourceType === type));
    page = await client.nextPage(page);
  }
  return out;
}

/** The Immunizations Vesta pushed, as the registry holds them. */
const pushed = () => all('Immunization', { identifier: `${ownSystem}|` });

/** Local Immunizations pulled from the registry. */
async function pulled(): Promise<Resource[]> {
  const r = await authed(local).get('/Immunization').query({ identifier: `${base}/Immunization|`, _count: '200' });
  expect(r.status).toBe(200);
  return ((r.body as SearchBundle).entry ?? []).map((e) => e.resource!);
}

const writesSeen = () => proxy.seen.filter((s) => s.method !== 'GET' && !s.path.endsWith('/auth/token')).length;

describe.each(backends())('registry sync between two Vesta servers (%s)', (backend) => {
  beforeAll(async () => {
    proxy = await RegistryProxy.start();
    base = `${proxy.url}/fhir`;
    registry.baseUrl = base;
    registryServer = await startTestServer(backend, { BASE_URL: base });
    proxy.target = registryServer.url;
    local = await startTestServer(backend);
    ownSystem = `${local.svc.config.baseUrl}/Immunization`;
    const { privateKey, publicKey } = await generateKeyPair('ES384', { extractable: true });
    const kid = `ES384-${randomUUID().slice(0, 8)}`;
    const pub = { ...(await exportJWK(publicKey)), kid, alg: 'ES384', use: 'sig' };
    await addClient(registryServer.svc.db.knex, { client_id: CLIENT_ID, type: 'confidential-asymmetric', redirect_uris: [], scope: 'system/*.cruds', jwks: { keys: [pub] } }, { allowLoopbackJwksUri: false });
    client = new RegistryClient({
      id: registry.id,
      baseUrl: base,
      auth: { type: 'backend-services', tokenUrl: `${base}/auth/token`, clientId: CLIENT_ID, privateKey: { ...(await exportJWK(privateKey)), kid, alg: 'ES384' }, alg: 'ES384', scope: 'system/*.cruds' },
      requestTimeoutMs: 5000,
      rateLimit: { requests: 10_000, perSeconds: 1 },
      pageSize: registry.pageSize,
      log: pino({ level: 'silent' }),
    });
  }, 120_000);

  afterAll(async () => {
    await proxy?.close();
    await registryServer?.close();
    await local?.close();
  });

  const patients: { id: string; value: string }[] = [];
  const local25: string[] = [];

  test('push 25 local Immunizations: the registry holds exactly 25, each with its Patient found by identifier', async () => {
    for (let i = 0; i < 5; i++) {
      const value = `push-${i}-${randomUUID()}`;
      patients.push({ id: (await localPatient(value)).id!, value });
    }
    for (let i = 0; i < 25; i++) local25.push((await post(immunization(`Patient/${patients[i % 5].id}`, `LOT-${i}`))).id!);

    const report = await pushOnce(local.svc, registry, client, now);
    expect(report).toMatchObject({ direction: 'push', sent: 25, rejected: 0, deadLettered: 0, watermarkBefore: null });
    expect(report.stopped).toBeUndefined();
    expect(report.watermarkAfter).toBeInstanceOf(Date);

    const held = await pushed();
    expect(held).toHaveLength(25);
    expect(new Set(held.map((r) => (r.identifier as { system: string; value: string }[]).find((i) => i.system === ownSystem)!.value))).toEqual(new Set(local25));
    // Each local Patient is one registry Patient, found by its identifier, and the records point at it.
    for (const p of patients) {
      const found = await all('Patient', { identifier: `${SYS}|${p.value}` });
      expect(found).toHaveLength(1);
      const theirs = held.filter((r) => (r.patient as { reference: string }).reference === `Patient/${found[0].id}`);
      expect(theirs).toHaveLength(5);
    }
    expect((await getState(local.svc.db.knex, registry.id, 'push'))?.counts.sent).toBe(25);
  });

  test('a second run sends nothing and the registry still holds 25', async () => {
    const writes = writesSeen();
    const report = await pushOnce(local.svc, registry, client, now);
    expect(report).toMatchObject({ sent: 0, rejected: 0 });
    expect(report.watermarkAfter).toEqual(report.watermarkBefore);
    expect(writesSeen()).toBe(writes);
    expect(await pushed()).toHaveLength(25);
  });

  test('a version younger than the lag waits for a later run; two runs at once are refused', async () => {
    const id = (await post(immunization(`Patient/${patients[0].id}`, 'LOT-LAG'))).id!;
    const early = await pushOnce(local.svc, registry, client, { lagMs: 60_000 });
    expect(early).toMatchObject({ sent: 0 });
    expect(early.watermarkAfter).toEqual(early.watermarkBefore);
    const [a, b] = await Promise.allSettled([pushOnce(local.svc, registry, client, now), pushOnce(local.svc, registry, client, now)]);
    expect(a).toMatchObject({ status: 'fulfilled', value: { sent: 1 } });
    expect(b).toMatchObject({ status: 'rejected', reason: { message: 'registry test-iis: a push run is already in progress' } });
    expect(await all('Immunization', { identifier: `${ownSystem}|${id}` })).toHaveLength(1);
    local25.push(id);
  });

  test('three local updates: three sent, their registry versions move', async () => {
    const changed = local25.slice(0, 3);
    for (const id of changed) {
      const r = await authed(local).put(`/Immunization/${id}`).send({ ...immunization(`Patient/${patients[0].id}`, `LOT-NEW-${id}`), id });
      expect(r.status).toBe(200);
    }
    const before = new Map((await pushed()).map((r) => [r.id!, r.meta!.versionId!]));
    const report = await pushOnce(local.svc, registry, client, now);
    expect(report).toMatchObject({ sent: 3, rejected: 0 });
    const after = await pushed();
    expect(after).toHaveLength(26);
    for (const id of changed) {
      const r = after.find((x) => (x.identifier as { system: string; value: string }[]).some((i) => i.system === ownSystem && i.value === id))!;
      expect(r.lotNumber).toBe(`LOT-NEW-${id}`);
      expect(Number(r.meta!.versionId)).toBe(Number(before.get(r.id!)) + 1);
    }
    expect(after.filter((r) => r.meta!.versionId !== before.get(r.id!))).toHaveLength(3);
  });

  test('a local deletion is deleted at the registry; one refusing deletes (405) gets entered-in-error', async () => {
    const [gone, marked] = [local25[10], local25[11]];
    expect((await authed(local).delete(`/Immunization/${gone}`)).status).toBeLessThan(300);
    const report = await pushOnce(local.svc, registry, client, now);
    expect(report).toMatchObject({ sent: 1, rejected: 0 });
    expect(await all('Immunization', { identifier: `${ownSystem}|${gone}` })).toHaveLength(0);
    expect(await pushed()).toHaveLength(25);

    expect((await authed(local).delete(`/Immunization/${marked}`)).status).toBeLessThan(300);
    proxy.inject({ kind: 'status', status: 405, body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-supported', diagnostics: 'no deletes here' }] } }, { on: /^\/fhir\/Immunization\/[^/]+$/ });
    expect(await pushOnce(local.svc, registry, client, now)).toMatchObject({ sent: 1, rejected: 0 });
    const [r] = await all('Immunization', { identifier: `${ownSystem}|${marked}` });
    expect(r.status).toBe('entered-in-error');
    expect(await pushed()).toHaveLength(25);
  });

  test('a Patient without the registry identifier: its Immunization is rejected with the reason, the rest are sent', async () => {
    const stranger = await localPatient();
    const bad = (await post(immunization(`Patient/${stranger.id}`, 'LOT-X'))).id!;
    const good = [(await post(immunization(`Patient/${patients[1].id}`, 'LOT-G1'))).id!, (await post(immunization(`Patient/${patients[2].id}`, 'LOT-G2'))).id!];
    const writes = writesSeen();
    const report = await pushOnce(local.svc, registry, client, now);
    expect(report).toMatchObject({ sent: 2, rejected: 1 });
    // Two conditional updates; the Patients were already there (two conditional creates that matched).
    expect(writesSeen() - writes).toBe(4);
    const rec = await getRecord(local.svc.db.knex, { registryId: registry.id, direction: 'push', resourceType: 'Immunization', resourceId: bad });
    expect(rec).toMatchObject({ status: 'rejected', version: '1' });
    expect(rec!.lastError!.issue[0].diagnostics).toContain(`has no identifier in ${SYS}`);
    expect(await pushed()).toHaveLength(27);
    for (const id of good) expect(await all('Immunization', { identifier: `${ownSystem}|${id}` })).toHaveLength(1);
    // Not retried: a later run passes it by.
    expect(await pushOnce(local.svc, registry, client, now)).toMatchObject({ sent: 0, rejected: 0 });
  });

  test('a 5xx burst mid-push stops the run at the last handled record; the next run completes without duplicates', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) ids.push((await post(immunization(`Patient/${patients[3].id}`, `LOT-B${i}`))).id!);
    const lastUpdated = await Promise.all(ids.map(async (id) => new Date(((await authed(local).get(`/Immunization/${id}`)).body as Resource).meta!.lastUpdated!)));
    // The fourth record's update meets a burst of 503s longer than the retries.
    const real = client.conditionalUpdate.bind(client);
    let updates = 0;
    const faulty = Object.create(client) as RegistryClient;
    faulty.conditionalUpdate = (...a: Parameters<RegistryClient['conditionalUpdate']>) => {
      if (++updates === 4) proxy.failNext(50, 503);
      return real(...a);
    };
    const stopped = await pushOnce(local.svc, registry, faulty, now);
    proxy.clearFaults();
    expect(stopped).toMatchObject({ sent: 3, rejected: 0, retried: 2 });
    expect(stopped.stopped).toContain('503');
    // The watermark covers the three sent and nothing of the fourth (same-millisecond neighbours stay behind).
    const handled = lastUpdated.slice(0, 3).filter((d) => d < lastUpdated[3]);
    const expected = handled.length ? new Date(Math.max(...handled.map((d) => d.getTime()))) : stopped.watermarkBefore;
    expect(stopped.watermarkAfter).toEqual(expected);
    expect((await getState(local.svc.db.knex, registry.id, 'push'))?.watermark).toEqual(expected);
    expect(await pushed()).toHaveLength(30);

    const resumed = await pushOnce(local.svc, registry, client, now);
    expect(resumed).toMatchObject({ sent: 3, rejected: 0 });
    expect(resumed.stopped).toBeUndefined();
    const held = await pushed();
    expect(held).toHaveLength(33);
    const values = held.map((r) => (r.identifier as { system: string; value: string }[]).find((i) => i.system === ownSystem)!.value);
    expect(new Set(values).size).toBe(33);
  });

  test('429 with Retry-After: the run waits as told, then sends', async () => {
    const id = (await post(immunization(`Patient/${patients[4].id}`, 'LOT-R'))).id!;
    proxy.failNext(1, 429, { 'retry-after': '1' });
    const started = performance.now();
    const report = await pushOnce(local.svc, registry, client, now);
    expect(report).toMatchObject({ sent: 1, retried: 1 });
    expect(performance.now() - started).toBeGreaterThanOrEqual(950);
    expect(await all('Immunization', { identifier: `${ownSystem}|${id}` })).toHaveLength(1);
  });

  const pullPatients: { id: string; value: string; remote: string }[] = [];
  const remote20: string[] = [];

  test('pull 20 registry Immunizations for matched patients: Vesta holds exactly 20, with meta.source and the registry identifier', async () => {
    for (let i = 0; i < 4; i++) {
      const value = `pull-${i}-${randomUUID()}`;
      const id = (await localPatient(value)).id!;
      const r = await client.conditionalCreate({ resourceType: 'Patient', identifier: [{ system: SYS, value }], name: [{ family: 'Registry' }] }, { identifier: `${SYS}|${value}` });
      pullPatients.push({ id, value, remote: r.resource!.id! });
    }
    for (let i = 0; i < 20; i++) {
      const v = `iis-${i}-${randomUUID()}`;
      const r = await client.conditionalUpdate('Immunization', { identifier: `${IIS_IMM}|${v}` }, immunization(`Patient/${pullPatients[i % 4].remote}`, `IIS-${i}`, { identifier: [{ system: IIS_IMM, value: v }] }));
      remote20.push(r.resource!.id!);
    }
    const report = await pullOnce(local.svc, registry, client, now);
    expect(report).toMatchObject({ direction: 'pull', stored: 20, rejected: 0, unmatched: 0 });
    expect(report.stopped).toBeUndefined();
    expect(report.watermarkAfter).toBeInstanceOf(Date);
    const held = await pulled();
    expect(held).toHaveLength(20);
    for (const r of held) {
      const theirs = (r.identifier as { system: string; value: string }[]).find((i) => i.system === `${base}/Immunization`)!.value;
      expect(remote20).toContain(theirs);
      expect(r.meta!.source).toBe(`${base}/Immunization/${theirs}`);
      const k = remote20.indexOf(theirs) % 4;
      expect((r.patient as { reference: string }).reference).toBe(`Patient/${pullPatients[k].id}`);
    }
    // What was pulled from the registry is not pushed back to it.
    expect(await pushOnce(local.svc, registry, client, now)).toMatchObject({ sent: 0, skipped: 20 });
  });

  test('pulling again changes nothing: no write, versions unchanged', async () => {
    const before = new Map((await pulled()).map((r) => [r.id!, r.meta!.versionId]));
    const report = await pullOnce(local.svc, registry, client, now);
    expect(report).toMatchObject({ stored: 0, rejected: 0, unmatched: 0 });
    const after = await pulled();
    expect(after).toHaveLength(20);
    for (const r of after) expect(r.meta!.versionId).toBe(before.get(r.id!));
  });

  test('a registry change after the pull watermark is pulled: one stored, its local version moves', async () => {
    const target = remote20[7];
    const at = await client.read('Immunization', target);
    const { meta: _meta, ...changed } = at;
    await client.conditionalUpdate('Immunization', { _id: target }, { ...changed, lotNumber: 'IIS-CHANGED' });
    const before = (await pulled()).find((r) => r.meta!.source === `${base}/Immunization/${target}`)!;
    const report = await pullOnce(local.svc, registry, client, now);
    expect(report).toMatchObject({ stored: 1, rejected: 0, unmatched: 0 });
    const after = await pulled();
    expect(after).toHaveLength(20);
    const mine = after.find((r) => r.id === before.id)!;
    expect(mine.lotNumber).toBe('IIS-CHANGED');
    expect(Number(mine.meta!.versionId)).toBe(Number(before.meta!.versionId) + 1);
  });

  test('a registry patient with two local matches, or none, goes to the review list and is not stored', async () => {
    const dup = `dup-${randomUUID()}`;
    await localPatient(dup);
    await localPatient(dup);
    const lone = `lone-${randomUUID()}`;
    await localPatient(lone);
    const ids: Record<string, string> = {};
    for (const value of [dup, lone]) {
      const p = await client.conditionalCreate({ resourceType: 'Patient', identifier: [{ system: SYS, value }] }, { identifier: `${SYS}|${value}` });
      const v = `iis-r-${randomUUID()}`;
      ids[value] = (await client.conditionalUpdate('Immunization', { identifier: `${IIS_IMM}|${v}` }, immunization(`Patient/${p.resource!.id}`, 'IIS-R', { identifier: [{ system: IIS_IMM, value: v }] }))).resource!.id!;
      if (value === lone) {
        // As the registry answers it, its Patient now carries another identifier (merged there, say):
        // no local Patient has that one.
        proxy.inject({ kind: 'rewrite', body: (t) => t.replaceAll(lone, `other-${randomUUID()}`) }, { on: new RegExp(`^/fhir/Patient/${p.resource!.id}$`) });
      }
    }
    const report = await pullOnce(local.svc, registry, client, now);
    proxy.clearFaults();
    expect(report).toMatchObject({ stored: 0, unmatched: 2 });
    const reviews = await listReviews(local.svc.db.knex, { registryId: registry.id });
    expect(reviews.map((r) => [r.registryReference, r.reason]).sort()).toEqual(
      [
        [`${base}/Immunization/${ids[dup]}`, 'several-matches'],
        [`${base}/Immunization/${ids[lone]}`, 'no-match'],
      ].sort(),
    );
    expect(await pulled()).toHaveLength(20);
  });

  test('a record failing run after run goes to the dead-letter list after deadLetterAfter runs and is passed', async () => {
    // A registry entry of its own, starting now (the records above are not its business).
    const dl = { ...registry, id: 'test-iis-dl', deadLetterAfter: 2 };
    const firstWritten = await post(immunization(`Patient/${patients[0].id}`, 'LOT-D1'));
    const [first, second] = [firstWritten.id!, (await post(immunization(`Patient/${patients[0].id}`, 'LOT-D2'))).id!];
    await advanceWatermark(local.svc.db.knex, dl.id, 'push', null, new Date(Date.parse(firstWritten.meta!.lastUpdated!) - 1));
    // Each run: the first record's three attempts meet 503s.
    proxy.failNext(3, 503);
    const one = await pushOnce(local.svc, dl, client, now);
    expect(one).toMatchObject({ sent: 0, deadLettered: 0, retried: 2 });
    expect(one.stopped).toContain('503');
    expect(one.watermarkAfter).toEqual(one.watermarkBefore);
    proxy.failNext(3, 503);
    const two = await pushOnce(local.svc, dl, client, now);
    expect(two).toMatchObject({ sent: 1, deadLettered: 1 });
    expect(two.stopped).toBeUndefined();
    const dead = await listDeadLetters(local.svc.db.knex, { registryId: dl.id });
    expect(dead.map((r) => r.resourceId)).toEqual([first]);
    expect(dead[0].lastError!.issue[0].diagnostics).toContain('503');
    expect(await all('Immunization', { identifier: `${ownSystem}|${first}` })).toHaveLength(0);
    expect(await all('Immunization', { identifier: `${ownSystem}|${second}` })).toHaveLength(1);
    expect(await pushOnce(local.svc, dl, client, now)).toMatchObject({ sent: 0, deadLettered: 0 });
  });

  test("the local ledger's AuditEvents of the sync name vesta-job:registry-sync, and every record sent to the registry has one", async () => {
    const rows = ((await local.svc.db.knex.raw('select canonical from audit_ledger where canonical like ?', ['%vesta-job:registry-sync%'])) as { rows: { canonical: string }[] }).rows;
    const events = rows.map((r) => JSON.parse(r.canonical) as { subtype?: { code: string }[]; agent: { who?: { display?: string } }[] });
    expect(events.every((e) => e.agent[0].who?.display === 'vesta-job:registry-sync')).toBe(true);
    const kinds = new Set(events.flatMap((e) => (e.subtype ?? []).map((s) => s.code)));
    for (const k of ['read', 'search-type', 'update']) expect(kinds).toContain(k);
    // Every record sent to the registry has its disclosure record: the job, the Immunization's version, its patient.
    const sentRecords = (events as unknown as { subtype?: { code: string }[]; outcomeDesc?: string; entity?: { what?: { reference?: string } }[] }[]).filter(
      (e) => e.subtype?.[0]?.code === 'job:registry-sync' && /^200 (deletion )?sent to registry test-iis(-dl)?$/.test(e.outcomeDesc ?? ''),
    );
    for (const r of await pushed()) {
      const value = (r.identifier as { system: string; value: string }[]).find((i) => i.system === ownSystem)!.value;
      const about = sentRecords.filter((e) => e.entity?.some((x) => x.what?.reference?.startsWith(`Immunization/${value}/_history/`)));
      expect([value, about.length > 0]).toEqual([value, true]);
      // A record sent (not a deletion) names its patient.
      const sends = about.filter((e) => e.outcomeDesc?.startsWith('200 sent to'));
      for (const e of sends) expect(e.entity?.some((x) => x.what?.reference?.startsWith('Patient/'))).toBe(true);
    }
    // One read of each pushed Immunization at least, and one update per pulled one.
    expect(events.length).toBeGreaterThan(60);
  });
});
