// PHI maintenance jobs (design.md "Jobs", "PHI at rest"): the re-seal after a key rotation and the
// blind re-index, in-process and on BullMQ with a real Redis (a unique key prefix per test, every
// connection closed). Under concurrent writes: zero decrypt errors, nothing left to do afterwards,
// progress reported, scheduling idempotent.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { createConnection } from 'node:net';
import { Queue } from 'bullmq';
import { loadConfig } from '../../src/config/config.js';
import { generateKeyRing, rotate, type KeyRingFile } from '../../src/crypto/key-ring.js';
import type { Services } from '../../src/interactions/context.js';
import { countBlindReindex, runBlindReindex, type ReindexProgress } from '../../src/jobs/blind-reindex.js';
import { PHI_QUEUE, PhiMaintenance, type PhiJobName, type PhiJobProgress } from '../../src/jobs/phi-maintenance.js';
import { createLogger } from '../../src/log/logger.js';
import { buildServices, startServer, type Running } from '../../src/server.js';
import { concurrencyBackends, freePort, startTestServer, TEST_KEY_RING, type TestServer, authed, agentFor, TEST_SIGNING_RING, testAuditEnv } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

/** Whether Redis answers PING at REDIS_URL. */
function redisUp(): Promise<boolean> {
  const u = new URL(REDIS_URL);
  return new Promise((resolve) => {
    const s = createConnection({ host: u.hostname, port: Number(u.port || 6379) });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(1000, () => done(false));
    s.once('error', () => done(false));
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (d) => done(d.toString().startsWith('+PONG')));
  });
}

/** Services over the same database with another key ring (a node restarted after a rotation). */
async function servicesWith(t: TestServer, ring: KeyRingFile): Promise<Services> {
  const port = await freePort();
  const config = loadConfig({ PORT: String(port), HOST: '127.0.0.1', LOG_LEVEL: 'silent', AUTH_KEYS: JSON.stringify(TEST_SIGNING_RING), ...testAuditEnv(), PHI_KEYS: JSON.stringify(ring), PAGE_TOKEN_SECRET: 'test-secret-test-secret-test-secret!', BASE_URL: `http://127.0.0.1:${port}` });
  return buildServices(config, createLogger('silent'), t.svc.db);
}

async function createPatients(url: string, n: number, tag: string): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = await (await agentFor(url))
      .post('/Patient')
      .set('Content-Type', FHIR)
      .send({ resourceType: 'Patient', name: [{ family: `${tag}${i}` }], birthDate: '1970-01-01', identifier: [{ system: `urn:${tag}`, value: `${i}` }] })
      .expect(201);
    ids.push(r.body.id);
  }
  return ids;
}

const matches = (body: { entry?: { search: { mode: string }; resource: { id: string } }[] }) => (body.entry ?? []).filter((e) => e.search.mode === 'match').map((e) => e.resource.id);

/** Resources named by the AuditEvents of a job's batches (subtype `job:<name>`, agent `vesta-job:<name>`). */
async function jobRecords(t: TestServer, subtype: string): Promise<number> {
  const rows = ((await t.svc.db.knex.raw('select canonical from audit_ledger where canonical like ?', [`%"code":"${subtype}"%`])) as { rows: { canonical: string }[] }).rows;
  let named = 0;
  for (const r of rows) {
    const e = JSON.parse(r.canonical) as { agent: { who?: { display?: string } }[]; entity: { role?: { code?: string } }[] };
    expect(e.agent[0].who?.display).toBe(`vesta-job:${subtype.slice(4)}`);
    named += e.entity.filter((x) => x.role?.code === '4').length;
  }
  return named;
}

describe.each(concurrencyBackends())('PHI maintenance jobs on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let redis = false;
  const servers: Running[] = [];
  const owned: TestServer[] = [];
  beforeAll(async () => {
    t = await startTestServer(backend);
    redis = await redisUp();
    // eslint-disable-next-line no-console
    if (!redis) console.warn(`phi-jobs: BullMQ tests skipped: no Redis answers at ${REDIS_URL} (start one or set TEST_REDIS_URL)`);
  });
  afterAll(async () => {
    for (const s of servers) await new Promise<void>((r) => s.server.close(() => r()));
    for (const o of owned) await o.close();
    await t.close();
  });

  test('blind re-index: legacy rows (clear identifier, no blind rows) are rebuilt under concurrent writes', async () => {
    const ids = await createPatients(t.url, 30, 'Legacy');
    const knex = t.svc.db.knex;
    // What a database written before blind indexes looks like: no blind rows, identifier in the clear.
    await knex.raw("delete from idx_blind where resource_type = 'Patient'");
    await knex.raw("delete from idx_blind_state where resource_type = 'Patient'");
    for (const [i, id] of ids.entries()) await knex.raw("insert into idx_token (resource_type, resource_id, param, system, code) values ('Patient', ?, 'identifier', 'urn:Legacy', ?)", [id, String(i)]);
    expect(await countBlindReindex(t.svc)).toBeGreaterThanOrEqual(30);
    expect(matches((await authed(t).get('/Patient?family=legacy1').expect(200)).body)).toEqual([]);

    const progress: ReindexProgress[] = [];
    const job = runBlindReindex(t.svc, { batchSize: 4, onProgress: (p) => progress.push(p) });
    const statuses = await Promise.all(
      ids.slice(0, 10).map(async (id, i) => (await authed(t).put(`/Patient/${id}`).set('Content-Type', FHIR).send({ resourceType: 'Patient', id, name: [{ family: `Legacy${i}` }], identifier: [{ system: 'urn:Legacy', value: `${i}` }] })).status),
    );
    const result = await job;
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect(result.failed).toBe(0);
    expect(await countBlindReindex(t.svc)).toBe(0);
    expect(progress[0].done).toBe(0);
    expect(progress[progress.length - 1].done).toBe(result.done);
    expect(result.done + 10).toBeGreaterThanOrEqual(30); // the rest were re-indexed by the writes themselves
    const clear = (await knex.raw("select count(*)::int as n from idx_token where resource_type = 'Patient' and param like 'identifier%'")) as { rows: { n: number }[] };
    expect(clear.rows[0].n).toBe(0);
    expect(matches((await authed(t).get('/Patient?family=legacy17').expect(200)).body)).toEqual([ids[17]]);
    expect(matches((await authed(t).get('/Patient?identifier=urn:Legacy|3').expect(200)).body)).toEqual([ids[3]]);
    // idempotent: a second run finds nothing to do
    expect((await runBlindReindex(t.svc)).done).toBe(0);
    // Each batch left its AuditEvent, the job as agent and the resources it re-indexed as entities.
    expect(await jobRecords(t, 'job:blind-reindex')).toBeGreaterThanOrEqual(result.done);
  });

  test('a new blind key re-indexes everything; searches then match on the new key', async () => {
    const ids = await createPatients(t.url, 5, 'Blindkey');
    const ring: KeyRingFile = { ...TEST_KEY_RING, blind: generateKeyRing().blind };
    const svc2 = await servicesWith(t, ring);
    expect(await countBlindReindex(svc2)).toBeGreaterThanOrEqual(5);
    const r = await runBlindReindex(svc2);
    expect(r.failed).toBe(0);
    expect(await countBlindReindex(svc2)).toBe(0);
    const b = await startServer(svc2);
    servers.push(b);
    expect(matches((await (await agentFor(b.url)).get('/Patient?family=blindkey3').expect(200)).body)).toEqual([ids[3]]);
    // the old key's MACs are gone: a server still on the old blind key finds nothing (and must re-index)
    expect(matches((await authed(t).get('/Patient?family=blindkey3').expect(200)).body)).toEqual([]);
    expect(await countBlindReindex(t.svc)).toBeGreaterThan(0);
    await runBlindReindex(t.svc);
  });

  test('in-process maintenance: re-seal after rotation, then drained', async () => {
    // Its own database: after the rotation its rows are on a key the shared test ring does not hold.
    const t = await startTestServer(backend);
    owned.push(t);
    await createPatients(t.url, 6, 'Inproc');
    const rotated = rotate(TEST_KEY_RING);
    const svc2 = await servicesWith(t, rotated);
    const seen: [PhiJobName, PhiJobProgress][] = [];
    const m = new PhiMaintenance(svc2, { batchSize: 5, onProgress: (j, p) => seen.push([j, p]) });
    expect(await m.schedule()).toEqual(['reseal']);
    await m.drained();
    await m.close();
    expect(await svc2.store.countStale(svc2.db.knex)).toBe(0);
    const last = seen.filter(([j]) => j === 'reseal').pop()![1];
    expect(last.done).toBe(last.total);
    expect(last.total).toBeGreaterThan(0);
    expect(await jobRecords(t, 'job:reseal')).toBe(last.total);
  });

  test('BullMQ: re-seal under concurrent writes on two workers, scheduled once, progress reported', async () => {
    if (!redis) return;
    const t = await startTestServer(backend);
    owned.push(t);
    const ids = await createPatients(t.url, 24, 'Queued');
    for (const id of ids) await authed(t).put(`/Patient/${id}`).set('Content-Type', FHIR).send({ resourceType: 'Patient', id, name: [{ family: 'QueuedB' }] }).expect(200);
    const rotated = rotate(TEST_KEY_RING);
    const prefix = `vesta-test-${randomBytes(4).toString('hex')}`;
    const svcA = await servicesWith(t, rotated);
    const svcB = await servicesWith(t, rotated);
    const stale = await svcA.store.countStale(svcA.db.knex);
    expect(stale).toBeGreaterThanOrEqual(48);
    const seen: PhiJobProgress[] = [];
    const a = new PhiMaintenance(svcA, { redisUrl: REDIS_URL, prefix, batchSize: 5, onProgress: (j, p) => j === 'reseal' && seen.push(p) });
    const b = new PhiMaintenance(svcB, { redisUrl: REDIS_URL, prefix, batchSize: 5, onProgress: (j, p) => j === 'reseal' && seen.push(p) });
    const queue = new Queue(PHI_QUEUE, { connection: { url: REDIS_URL }, prefix });
    try {
      const server = await startServer(svcA);
      servers.push(server);
      // Two nodes schedule at once: one job.
      const [sa, sb] = await Promise.all([a.schedule(), b.schedule()]);
      expect(sa).toEqual(['reseal']);
      // The second node sees the same job (deduplicated by job id), or nothing left to do when the
      // first node's worker already finished it on a fast or loaded machine: never a second job.
      expect(sb.filter((n) => n !== 'reseal')).toEqual([]);
      const statuses = await Promise.all(
        ids.map(async (id, i) => {
          const w = await (await agentFor(server.url)).put(`/Patient/${id}`).set('Content-Type', FHIR).send({ resourceType: 'Patient', id, name: [{ family: `QueuedC${i}` }] });
          const r = await (await agentFor(server.url)).get(`/Patient/${id}/_history/1`);
          return [w.status, r.status];
        }),
      );
      await Promise.all([a.drained(), b.drained()]);
      expect(statuses.flat().every((s) => s === 200)).toBe(true);
      expect(await svcA.store.countStale(svcA.db.knex)).toBe(0);
      const counts = await queue.getJobCounts('completed', 'failed', 'waiting', 'active', 'delayed');
      expect(counts).toEqual({ completed: 1, failed: 0, waiting: 0, active: 0, delayed: 0 });
      const job = (await queue.getJobs(['completed']))[0];
      expect(job.name).toBe('reseal');
      expect(job.progress).toEqual(expect.objectContaining({ done: job.returnvalue.done }));
      expect(seen[0]).toEqual({ done: 0, total: stale });
      expect(seen[seen.length - 1].done).toBe(seen[seen.length - 1].total);
      // Scheduled again with nothing to do: nothing scheduled.
      expect(await a.schedule()).toEqual([]);
    } finally {
      await a.close();
      await b.close();
      await queue.obliterate({ force: true });
      await queue.close();
    }
    // The old key retired: every version still opens.
    const onlyNew = { ...rotated, keys: rotated.keys.filter((k) => k.kid === rotated.active) };
    const svcC = await servicesWith(t, onlyNew);
    for (const id of ids) for (const v of [1, 2, 3]) expect((await svcC.store.readVersion(svcC.db.knex, 'Patient', id, v))?.resource?.id).toBe(id);
  });

  test('BullMQ: blind re-index job on the queue', async () => {
    if (!redis) return;
    const ids = await createPatients(t.url, 8, 'Qblind');
    await t.svc.db.knex.raw("delete from idx_blind_state where resource_type = 'Patient'");
    const prefix = `vesta-test-${randomBytes(4).toString('hex')}`;
    const m = new PhiMaintenance(t.svc, { redisUrl: REDIS_URL, prefix, batchSize: 3 });
    const queue = new Queue(PHI_QUEUE, { connection: { url: REDIS_URL }, prefix });
    try {
      expect(await m.schedule()).toEqual(['blind-reindex']);
      await m.drained();
      expect(await countBlindReindex(t.svc)).toBe(0);
      const job = (await queue.getJobs(['completed']))[0];
      expect(job.id).toBe(`blind-reindex-${TEST_KEY_RING.blind.kid}`);
      expect(job.returnvalue.failed).toBe(0);
      expect(matches((await authed(t).get('/Patient?family=qblind5').expect(200)).body)).toEqual([ids[5]]);
    } finally {
      await m.close();
      await queue.obliterate({ force: true });
      await queue.close();
    }
  });
});
