// Crash safety of the registry sync (issue 17 acceptance): 10,000 Immunizations are synced between
// a local Vesta and a second Vesta acting as the registry (5,000 pushed, 5,000 pulled, both
// directions at once) by the compiled `vesta worker` on BullMQ, while the worker is killed with
// SIGKILL twice and Redis (AOF on) is restarted once. In the end both sides hold every record exactly
// once (missing 0, duplicates 0), and every job added to the queue completed (lost 0, failed 0).
// The test prints its figures.
import { afterAll, describe, expect, test } from '@jest/globals';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { exportJWK, generateKeyPair } from 'jose';
import { addClient } from '../../src/auth-server/admin.js';
import { findPackageRoot } from '../../src/fhir/package-root.js';
import { REGISTRY_QUEUE } from '../../src/jobs/registry/scheduler.js';
import { createLogger } from '../../src/log/logger.js';
import { buildServices, startServer } from '../../src/server.js';
import { openDatabase } from '../../src/storage/db.js';
import { adminQuery, authed, startTestServer, testConfig, tokenFor, TEST_AUDIT_RING, TEST_KEY_RING, TEST_SIGNING_RING, type TestServer } from '../support/backends.js';
import { TestRedis } from '../support/redis-server.js';

const cli = join(findPackageRoot(), 'dist', 'src', 'cli', 'vesta.js');
const SYS = 'urn:test:crash-iis-patient';
const PATIENTS = 250;
const PER_PATIENT = 20; // 5,000 Immunizations on each side
const EACH = PATIENTS * PER_PATIENT;

const cleanup: (() => Promise<unknown> | void)[] = [];
afterAll(async () => {
  for (const c of cleanup.reverse()) await c();
}, 60_000);

function immunization(patient: string, lot: string) {
  return { resourceType: 'Immunization', status: 'completed', vaccineCode: { coding: [{ system: 'http://hl7.org/fhir/sid/cvx', code: '08' }] }, patient: { reference: patient }, occurrenceDateTime: '2024-03-01', lotNumber: lot };
}

/** Patients with identifiers P0..P(n-1) in SYS and PER_PATIENT Immunizations each, in transactions of 25 patients. */
async function seed(server: { url: string; token: string }, side: string): Promise<void> {
  for (let first = 0; first < PATIENTS; first += 25) {
    const entry: unknown[] = [];
    for (let p = first; p < first + 25; p++) {
      const full = `urn:uuid:${randomUUID()}`;
      entry.push({ fullUrl: full, resource: { resourceType: 'Patient', identifier: [{ system: SYS, value: `P${p}` }], name: [{ family: `Crash${p}` }], birthDate: '2018-01-01' }, request: { method: 'POST', url: 'Patient' } });
      for (let i = 0; i < PER_PATIENT; i++) entry.push({ resource: immunization(full, `${side}-${p}-${i}`), request: { method: 'POST', url: 'Immunization' } });
    }
    const r = await authed(server).post('/').send({ resourceType: 'Bundle', type: 'transaction', entry });
    if (r.status !== 200) throw new Error(`seeding ${side} answered ${r.status}`);
  }
}

/** Search total through the REST API. */
async function total(server: { url: string; token: string }, type: string, query: Record<string, string>): Promise<number> {
  const r = await authed(server).get(`/${type}`).query({ ...query, _summary: 'count' });
  if (r.status !== 200) throw new Error(`count answered ${r.status}`);
  return (r.body as { total: number }).total;
}

/** Every Immunization of a server: its id and the value of its identifier in `system`, if any (paging, identifiers only). */
async function everyImmunization(server: { url: string; token: string }, system: string): Promise<{ id: string; value?: string }[]> {
  const out: { id: string; value?: string }[] = [];
  let path: string | undefined = '/Immunization?_count=1000&_elements=identifier';
  while (path) {
    const r = await authed(server).get(path);
    if (r.status !== 200) throw new Error(`search answered ${r.status}`);
    const b = r.body as { entry?: { resource: { id: string; identifier?: { system: string; value: string }[] } }[]; link?: { relation: string; url: string }[] };
    for (const e of b.entry ?? []) out.push({ id: e.resource.id, ...(e.resource.identifier?.find((i) => i.system === system) ? { value: e.resource.identifier.find((i) => i.system === system)!.value } : {}) });
    const next = b.link?.find((l) => l.relation === 'next')?.url;
    path = next ? next.slice(new URL(next).origin.length) : undefined;
  }
  return out;
}

function duplicates(values: string[]): number {
  return values.length - new Set(values).size;
}

const describeIf = process.env.TEST_DATABASE_URL ? describe : describe.skip;

describeIf('registry sync across crashes (10,000 Immunizations, two worker kills, a Redis restart)', () => {
  test('missing 0, duplicates 0 on both sides, lost jobs 0', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vesta-registry-crash-'));
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    const redis = await TestRedis.start(['--appendonly', 'yes', '--appendfsync', 'always', '--save', '', '--maxmemory-policy', 'noeviction']);
    cleanup.push(() => redis.close());

    // The registry: a Vesta of its own, Backend Services for the worker's client.
    const registry = await startTestServer('pg');
    cleanup.push(() => registry.close());
    const registryBase = registry.svc.config.baseUrl;
    const { privateKey, publicKey } = await generateKeyPair('ES384', { extractable: true });
    const kid = `crash-${randomUUID().slice(0, 8)}`;
    await addClient(registry.svc.db.knex, { client_id: 'crash-sync', type: 'confidential-asymmetric', redirect_uris: [], scope: 'system/*.cruds', jwks: { keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'ES384', use: 'sig' }] } }, { allowLoopbackJwksUri: false });
    writeFileSync(join(dir, 'registry-key.json'), JSON.stringify({ ...(await exportJWK(privateKey)), kid, alg: 'ES384' }), { mode: 0o600 });

    // The local server on a database the worker process opens too.
    const name = `vesta_t_${randomBytes(6).toString('hex')}`;
    await adminQuery(`create database ${name}`);
    cleanup.push(() => adminQuery(`drop database if exists ${name} with (force)`));
    const u = new URL(process.env.TEST_DATABASE_URL!);
    u.pathname = `/${name}`;
    const config = await testConfig({ DATABASE_URL: u.toString() });
    const svc = await buildServices(config, createLogger('silent'), openDatabase({ databaseUrl: u.toString(), poolMax: 10 }));
    const running = await startServer(svc);
    cleanup.push(() => running.close());
    const local: Pick<TestServer, 'url' | 'token'> = { url: running.url, token: await tokenFor(config.baseUrl) };
    const ownSystem = `${config.baseUrl}/Immunization`;
    const theirSystem = `${registryBase}/Immunization`;

    await seed(local, 'local');
    await seed(registry, 'registry');

    writeFileSync(
      join(dir, 'registries.json'),
      JSON.stringify([
        {
          id: 'crash-iis',
          baseUrl: registryBase,
          auth: { type: 'backend-services', tokenUrl: `${registryBase}/auth/token`, clientId: 'crash-sync', privateKeyFile: 'registry-key.json', scope: 'system/*.cruds' },
          direction: 'both',
          schedule: { everySeconds: 10 },
          pageSize: 200,
          requestTimeoutMs: 10_000,
          rateLimit: { requests: 10_000, perSeconds: 1 },
          patientIdentifierSystem: SYS,
          retry: { attempts: 5, baseDelayMs: 100, maxDelayMs: 2000 },
        },
      ]),
    );
    const env = {
      PATH: process.env.PATH ?? '',
      DATABASE_URL: u.toString(),
      REDIS_URL: redis.url,
      REGISTRY_CONFIG_FILE: join(dir, 'registries.json'),
      // A killed worker's run is taken over after 10 s (default 30), to keep the test short.
      REGISTRY_TAKEOVER_SECONDS: '10',
      BASE_URL: config.baseUrl,
      DATA_DIR: dir,
      LOG_LEVEL: 'warn',
      PAGE_TOKEN_SECRET: 'test-secret-test-secret-test-secret!',
      PHI_KEYS: JSON.stringify(TEST_KEY_RING),
      AUTH_KEYS: JSON.stringify(TEST_SIGNING_RING),
      AUDIT_KEYS: JSON.stringify(TEST_AUDIT_RING),
      AUDIT_CHECKPOINT_DIR: join(dir, 'checkpoints'),
    };
    let worker: ChildProcess | undefined;
    let log = '';
    const startWorker = () => {
      const w = spawn(process.execPath, [cli, 'worker'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      w.stdout!.on('data', (d) => (log += d));
      w.stderr!.on('data', (d) => (log += d));
      worker = w;
    };
    const killWorker = async () => {
      const w = worker!;
      const exited = new Promise((res) => w.once('exit', res));
      w.kill('SIGKILL');
      await exited;
    };
    cleanup.push(() => void worker?.kill('SIGKILL'));

    const pushed = () => total(registry, 'Immunization', { identifier: `${ownSystem}|` });
    const pulled = () => total(local, 'Immunization', { identifier: `${theirSystem}|` });
    const progress = async () => (await pushed()) + (await pulled());
    const reach = async (n: number, what: string, ms = 240_000) => {
      const until = Date.now() + ms;
      for (;;) {
        const p = await progress();
        if (p >= n) return p;
        if (Date.now() > until) throw new Error(`timed out waiting for ${what} (${p} of ${n} synced)\n${log.slice(-3000)}`);
        await new Promise((r) => setTimeout(r, 300));
      }
    };

    const t0 = Date.now();
    startWorker();
    const at: Record<string, number> = {};
    at.firstKill = await reach(2000, 'the first kill');
    await killWorker();
    startWorker();
    at.redisRestart = await reach(4500, 'the Redis restart');
    // The jobs Redis holds before its restart must all be there after it, and end completed.
    const queue = new Queue(REGISTRY_QUEUE, { connection: { url: redis.url } });
    cleanup.push(() => queue.close());
    const beforeRestart = (await queue.getJobs(['completed', 'failed', 'waiting', 'active', 'delayed', 'prioritized'])).map((j) => j.id!);
    await redis.stop();
    await redis.restart();
    at.secondKill = await reach(7000, 'the second kill');
    await killWorker();
    startWorker();
    await reach(2 * EACH, 'everything synced', 300_000);

    // Every job settles: those from before the restart and every window older than the current two
    // are completed, none failed (the schedule keeps adding a window every 10 s meanwhile).
    let counts: Record<string, number> = {};
    let lost = -1;
    for (const until = Date.now() + 180_000; ; ) {
      const jobs = await queue.getJobs(['completed', 'failed', 'waiting', 'active', 'delayed', 'prioritized']);
      const state = new Map(await Promise.all(jobs.map(async (j) => [j.id!, await j.getState()] as const)));
      lost = beforeRestart.filter((id) => !state.has(id)).length;
      const recent = Date.now() - 25_000;
      const unsettled = jobs.filter((j) => state.get(j.id!) !== 'completed' && (j.data as { window: number }).window < recent);
      counts = await queue.getJobCounts('completed', 'failed', 'waiting', 'active', 'delayed', 'prioritized');
      if (!unsettled.length && beforeRestart.every((id) => state.get(id) === 'completed')) break;
      if (Date.now() > until) throw new Error(`jobs did not settle: ${JSON.stringify(counts)}, ${unsettled.length} old jobs not completed, ${lost} lost\n${log.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
    const w = worker!;
    const exited = new Promise<number | null>((res) => w.once('exit', (code) => res(code)));
    w.kill('SIGTERM');
    expect(await exited).toBe(0);
    const seconds = (Date.now() - t0) / 1000;

    // Local: our own records (no registry identifier) and the pulled ones; at the registry: its own and ours.
    const localAll = await everyImmunization(local, theirSystem);
    const registryAll = await everyImmunization(registry, ownSystem);
    const localNative = localAll.filter((x) => x.value === undefined).map((x) => x.id);
    const localPulled = localAll.flatMap((x) => (x.value === undefined ? [] : [x.value]));
    const registryNative = registryAll.filter((x) => x.value === undefined).map((x) => x.id);
    const atRegistryOurs = registryAll.flatMap((x) => (x.value === undefined ? [] : [x.value]));
    const missing = (expected: string[], got: string[]) => {
      const have = new Set(got);
      return expected.filter((x) => !have.has(x)).length;
    };
    const figures = {
      seconds: Math.round(seconds),
      syncedAtFirstKill: at.firstKill,
      syncedAtRedisRestart: at.redisRestart,
      syncedAtSecondKill: at.secondKill,
      pushed: { expected: localNative.length, atRegistry: atRegistryOurs.length, missing: missing(localNative, atRegistryOurs), duplicates: duplicates(atRegistryOurs) },
      pulled: { expected: registryNative.length, local: localPulled.length, missing: missing(registryNative, localPulled), duplicates: duplicates(localPulled) },
      registryPatients: await total(registry, 'Patient', {}),
      localPatients: await total(local, 'Patient', {}),
      jobs: { ...counts, presentBeforeRedisRestart: beforeRestart.length, lost },
    };
    process.stdout.write(`registry crash test: ${JSON.stringify(figures)}\n`);
    // Both sides: every record once, and nothing that is not one of the other side's.
    expect([localNative.length, registryNative.length]).toEqual([EACH, EACH]);
    expect(figures.pushed).toEqual({ expected: EACH, atRegistry: EACH, missing: 0, duplicates: 0 });
    expect(figures.pulled).toEqual({ expected: EACH, local: EACH, missing: 0, duplicates: 0 });
    // The pushes' conditional creates found the registry's patients, and pulls create none: no patient duplicated.
    expect([figures.registryPatients, figures.localPatients]).toEqual([PATIENTS, PATIENTS]);
    // No job lost or failed for good; the queue kept running across both kills and the restart.
    expect(counts.failed).toBe(0);
    expect(lost).toBe(0);
    expect(beforeRestart.length).toBeGreaterThan(0);
  }, 900_000);
});
