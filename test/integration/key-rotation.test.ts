// Key rotation under concurrent writes: zero decrypt errors, every version moved to the new key by
// the re-seal job (a ring without the old key then opens everything), progress reported.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { loadConfig } from '../../src/config/config.js';
import { rotate, type KeyRingFile } from '../../src/crypto/key-ring.js';
import { countBlindReindex } from '../../src/jobs/blind-reindex.js';
import { runReseal, type ResealProgress } from '../../src/jobs/reseal.js';
import { createLogger } from '../../src/log/logger.js';
import { buildServices, startServer, type Running } from '../../src/server.js';
import type { Services } from '../../src/interactions/context.js';
import { concurrencyBackends, freePort, startTestServer, TEST_KEY_RING, type TestServer, authed, agentFor, TEST_SIGNING_RING, testAuditEnv } from '../support/backends.js';

const FHIR = 'application/fhir+json';

async function servicesWith(t: TestServer, ring: KeyRingFile): Promise<Services> {
  const port = await freePort();
  const config = loadConfig({ PORT: String(port), HOST: '127.0.0.1', LOG_LEVEL: 'silent', AUTH_KEYS: JSON.stringify(TEST_SIGNING_RING), ...testAuditEnv(), PHI_KEYS: JSON.stringify(ring), PAGE_TOKEN_SECRET: 'test-secret-test-secret-test-secret!', BASE_URL: `http://127.0.0.1:${port}` });
  return buildServices(config, createLogger('silent'), t.svc.db);
}

describe.each(concurrencyBackends())('key rotation on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let b: Running | undefined;
  beforeAll(async () => {
    t = await startTestServer(backend);
  });
  afterAll(async () => {
    if (b) await new Promise<void>((r) => b!.server.close(() => r()));
    await t.close();
  });

  test('re-seal under concurrent writes leaves no version on the retired key', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 40; i++) {
      const r = await authed(t).post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', name: [{ family: `Rot${i}` }], birthDate: '1970-01-01' }).expect(201);
      ids.push(r.body.id);
      await authed(t).put(`/Patient/${r.body.id}`).set('Content-Type', FHIR).send({ resourceType: 'Patient', id: r.body.id, name: [{ family: `Rot${i}b` }] }).expect(200);
    }
    // Rotate: a server with the new ring (old keys kept) takes over; the job re-seals meanwhile.
    const rotated = rotate(TEST_KEY_RING);
    const svc2 = await servicesWith(t, rotated);
    b = await startServer(svc2);
    const before = await svc2.store.countStale(svc2.db.knex);
    expect(before).toBe(80);
    const progress: ResealProgress[] = [];
    const job = runReseal(svc2, { batchSize: 7, onProgress: (p) => progress.push(p) });
    const statuses: number[] = [];
    await Promise.all(
      ids.map(async (id, i) => {
        const w = await (await agentFor(b!.url)).put(`/Patient/${id}`).set('Content-Type', FHIR).send({ resourceType: 'Patient', id, name: [{ family: `Rot${i}c` }] });
        statuses.push(w.status);
        const r = await (await agentFor(b!.url)).get(`/Patient/${id}/_history/1`);
        statuses.push(r.status);
      }),
    );
    const result = await job;
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect(result.done).toBe(80);
    expect(progress[0]).toEqual({ done: 0, total: 80 });
    expect(progress[progress.length - 1]).toEqual({ done: 80, total: 80 });
    expect(await svc2.store.countStale(svc2.db.knex)).toBe(0);
    // The blind-index key is not rotated with the content keys: blind rows stay valid, search still matches.
    expect(await countBlindReindex(svc2)).toBe(0);
    const found = await (await agentFor(b!.url)).get('/Patient?family=rot7c').set('Prefer', 'handling=strict').expect(200);
    expect(found.body.entry.map((e: { resource: { id: string } }) => e.resource.id)).toEqual([ids[7]]);

    // Retire the old key: every version of every resource still opens.
    const onlyNew = { ...rotated, keys: rotated.keys.filter((k) => k.kid === rotated.active) };
    const svc3 = await servicesWith(t, onlyNew);
    for (const id of ids) {
      for (const v of [1, 2, 3]) {
        const got = await svc3.store.readVersion(svc3.db.knex, 'Patient', id, v);
        expect(got?.resource?.id).toBe(id);
      }
    }
  });
});

// PGlite serves one connection: no second transaction can hold a row, so this runs on PostgreSQL only.
const pgOnly = concurrencyBackends().filter((b) => b === 'pg');
(pgOnly.length ? describe.each(pgOnly) : describe.skip.each(['pg' as const]))('re-seal passes on %s PostgreSQL', (backend) => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer(backend);
  });
  afterAll(async () => {
    await t.close();
  });

  test('a re-seal walks versions in seq order, passes over a row another transaction holds, and a later run takes it', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) ids.push((await authed(t).post('/Observation').set('Content-Type', FHIR).send({ resourceType: 'Observation', status: 'final', code: { text: `walk ${i}` } }).expect(201)).body.id);
    const ring = rotate(TEST_KEY_RING);
    const svc = await servicesWith(t, ring);
    const stale = await svc.store.countStale(svc.db.knex);
    expect(stale).toBe(12);
    // Hold the version of one Observation (as a concurrent writer would) while the job runs.
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let locked!: () => void;
    const isLocked = new Promise<void>((r) => (locked = r));
    const holder = t.svc.db.knex.transaction(async (tx) => {
      await tx.raw("select 1 from resource_history where resource_type = 'Observation' and id = ? for update", [ids[5]]);
      locked();
      await held;
    });
    await isLocked;
    const first = await runReseal(svc, { batchSize: 5 });
    expect(first.done).toBe(stale - 1);
    expect(await svc.store.countStale(svc.db.knex)).toBe(1);
    release();
    await holder;
    const second = await runReseal(svc, { batchSize: 5 });
    expect(second.done).toBe(1);
    expect(await svc.store.countStale(svc.db.knex)).toBe(0);
  });
});
