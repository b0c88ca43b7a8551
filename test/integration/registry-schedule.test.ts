// The registry sync's schedule and queue (src/jobs/registry/scheduler.ts): two "nodes" (two
// RegistrySync instances on one database, and with Redis on one queue) firing the same one-second
// schedule run each window once, push everything exactly once, and leave the status to read; the
// breaker seen through scheduled runs; the Redis requirements check.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { pino } from 'pino';
import { checkRedis, warnAboutRedis } from '../../src/jobs/redis-check.js';
import { jobIdOf, REGISTRY_QUEUE, RegistrySync, type RegistryJobData } from '../../src/jobs/registry/scheduler.js';
import type { SyncReport } from '../../src/jobs/registry/sync.js';
import { getBreaker, getState } from '../../src/storage/registry-store.js';
import { registryStatus } from '../../src/cli/registry.js';
import { authed, backends, freePort } from '../support/backends.js';
import { allAtRegistry, seedLocal, startRegistryPair, type RegistryPair } from '../support/registry-pair.js';
import { TestRedis } from '../support/redis-server.js';

const REDIS_URL = process.env.REDIS_URL;

async function until(what: string, cond: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe.each(backends())('registry sync schedule (%s)', (backend) => {
  let pair: RegistryPair;

  beforeAll(async () => {
    pair = await startRegistryPair(backend);
  }, 120_000);

  afterAll(async () => {
    await pair?.close();
  });

  // With Redis (pg: two nodes share a queue) and without (both backends: in-process on one database).
  const modes = backend === 'pg' && REDIS_URL ? (['bullmq', 'in-process'] as const) : (['in-process'] as const);

  test.each(modes)('two nodes on one 1-second schedule (%s): each window runs once, every Immunization is pushed exactly once', async (mode) => {
    const id = `sched-${mode}`;
    const seeded = [await seedLocal(pair.local, `${id}-a`, 6), await seedLocal(pair.local, `${id}-b`, 6)];
    const expected = seeded.flatMap((s) => s.immunizations).sort();
    // A new registry id starts with no watermark: every local Immunization is its to push, earlier tests' too.
    const total = ((await authed(pair.local).get('/Immunization').query({ _summary: 'count' })).body as { total: number }).total;
    const registry = pair.registry(id, { direction: 'push' });
    const client = pair.client({ id });
    const prefix = `vesta-test-${randomUUID().slice(0, 8)}`;
    const runs: { node: number; data: RegistryJobData; report: SyncReport }[] = [];
    const nodes = [0, 1].map(
      (node) =>
        new RegistrySync(pair.local.svc, [registry], {
          ...(mode === 'bullmq' ? { redisUrl: REDIS_URL!, prefix } : {}),
          clientFor: () => client,
          sync: { lagMs: 0 },
          backoffMs: 50,
          onRun: (data, report) => runs.push({ node, data, report }),
        }),
    );
    try {
      await Promise.all(nodes.map((n) => n.start()));
      const ours = async () => (await allAtRegistry(client, 'Immunization', { identifier: `${pair.ownSystem}|` })).filter((r) => String(r.lotNumber).includes(id));
      await until('the registry holds the 12', async () => (await ours()).length >= expected.length);
      // Two more windows pass with nothing new.
      const seen = runs.length;
      await until('two more runs', async () => runs.length >= seen + 2);
    } finally {
      await Promise.all(nodes.map((n) => n.close()));
    }
    const atRegistry = await allAtRegistry(client, 'Immunization', { identifier: `${pair.ownSystem}|` });
    const values = atRegistry.filter((r) => String(r.lotNumber).includes(id)).map((r) => (r.identifier as { system: string; value: string }[]).find((i) => i.system === pair.ownSystem)!.value);
    expect(values.sort()).toEqual(expected);
    expect(runs.reduce((n, r) => n + r.report.sent, 0)).toBe(total);
    // One run per window, whichever node ran it.
    const windows = runs.map((r) => r.data.window);
    expect(new Set(windows).size).toBe(windows.length);
    if (mode === 'in-process') {
      // Without Redis the window is claimed in the database, once.
      const claims = (await pair.local.svc.db.knex.raw('select window_key from registry_run where registry_id = ?', [id])) as { rows: { window_key: string }[] };
      expect(new Set(claims.rows.map((r) => r.window_key)).size).toBe(claims.rows.length);
      for (const w of windows) expect(claims.rows.map((r) => r.window_key)).toContain(String(w));
    }
    if (mode === 'bullmq') {
      const q = new Queue(REGISTRY_QUEUE, { connection: { url: REDIS_URL! }, prefix });
      try {
        const jobs = await q.getJobs(['completed', 'failed', 'waiting', 'active', 'delayed']);
        const ids = jobs.map((j) => j.id);
        expect(new Set(ids).size).toBe(ids.length);
        for (const j of jobs) expect(j.id).toBe(jobIdOf(j.data as RegistryJobData));
        expect(await q.getJobCounts('failed', 'waiting', 'active', 'delayed')).toEqual({ failed: 0, waiting: 0, active: 0, delayed: 0 });
        // Every run reported is a job of the queue.
        for (const r of runs) expect(ids).toContain(jobIdOf(r.data));
        // Adding a window's job again is the same job.
        const again = await q.add('sync', runs[0].data, { jobId: jobIdOf(runs[0].data) });
        expect(again.id).toBe(jobIdOf(runs[0].data));
        expect((await q.getJobs(['completed', 'waiting'])).filter((j) => j.id === again.id)).toHaveLength(1);
      } finally {
        await q.obliterate({ force: true });
        await q.close();
      }
    }
    const state = await getState(pair.local.svc.db.knex, id, 'push');
    expect(state).toMatchObject({ lastOutcome: 'completed', lastError: null, runHolder: null });
    expect(state?.counts.sent).toBe(total);
  }, 90_000);

  test('scheduled runs against a registry that fails: the breaker opens, later windows do not start and send nothing, the status says so; once it answers, a probe closes it', async () => {
    const id = 'sched-breaker';
    await seedLocal(pair.local, `${id}-a`, 3);
    const registry = pair.registry(id, { direction: 'push', breaker: { failures: 3, cooldownSeconds: 2 }, retry: { attempts: 2, baseDelayMs: 5, maxDelayMs: 10 } });
    const client = pair.client({ id });
    const runs: SyncReport[] = [];
    pair.proxy.failNext(100_000, 503);
    const node = new RegistrySync(pair.local.svc, [registry], { clientFor: () => client, sync: { lagMs: 0 }, onRun: (_d, r) => runs.push(r) });
    try {
      await node.start();
      await until('the breaker opens', async () => (await getBreaker(pair.local.svc.db.knex, id)).state === 'open');
      await until('a window not started', async () => runs.some((r) => r.notStarted));
      const calls = pair.proxy.seen.length;
      const notStarted = runs.filter((r) => r.notStarted).length;
      await until('another window not started', async () => runs.filter((r) => r.notStarted).length > notStarted, 10_000);
      // While open (before the cool-down), nothing reaches the registry.
      if ((await getBreaker(pair.local.svc.db.knex, id)).state === 'open') expect(pair.proxy.seen.length).toBe(calls);
      const [status] = (await registryStatus(pair.local.svc.db.knex, [registry])).filter((s) => s.registry === id);
      expect(status.breaker).toMatchObject({ state: 'open', lastFailure: 'http 503' });
      expect(status.breaker.consecutiveFailures).toBeGreaterThanOrEqual(3);
      expect(status.directions[0]).toMatchObject({ direction: 'push', lastOutcome: 'not-started' });
      expect(status.directions[0].lastError).toMatch(/^circuit breaker open since .* \(\d+ consecutive failed calls, last: http 503\); next probe after /);
      // The registry answers again: after the cool-down one probe closes the breaker and the run sends.
      pair.proxy.clearFaults();
      await until('the breaker closes', async () => (await getBreaker(pair.local.svc.db.knex, id)).state === 'closed', 20_000);
      await until('the three are sent', async () => (await allAtRegistry(client, 'Immunization', { identifier: `${pair.ownSystem}|` })).filter((r) => String(r.lotNumber).includes(id)).length === 3, 20_000);
    } finally {
      pair.proxy.clearFaults();
      await node.close();
    }
    expect(runs.some((r) => r.stopped?.startsWith('circuit breaker open after'))).toBe(true);
    expect(await getBreaker(pair.local.svc.db.knex, id)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
  }, 90_000);
});

describe('Redis requirements check', () => {
  const started: TestRedis[] = [];
  afterAll(async () => {
    for (const r of started) await r.close();
  });

  test('eviction policy and persistence are reported, one line each; a well-set Redis has no problem; an unreachable one says so', async () => {
    const bad = await TestRedis.start(['--save', '', '--appendonly', 'no', '--maxmemory-policy', 'allkeys-lru']);
    started.push(bad);
    const good = await TestRedis.start(['--appendonly', 'yes', '--maxmemory-policy', 'noeviction']);
    started.push(good);
    const rdb = await TestRedis.start(['--save', '60 1', '--appendonly', 'no']);
    started.push(rdb);
    const b = await checkRedis(bad.url);
    expect(b).toMatchObject({ maxmemoryPolicy: 'allkeys-lru', aof: false, savePoints: '' });
    expect(b.problems).toEqual([
      'Redis maxmemory-policy is allkeys-lru: BullMQ needs noeviction, or Redis may evict queued jobs under memory pressure',
      'Redis keeps nothing on disk (appendonly no and no save points): a Redis restart loses every queued job (they are rescheduled, but late)',
    ]);
    expect(await checkRedis(good.url)).toMatchObject({ maxmemoryPolicy: 'noeviction', aof: true, problems: [] });
    expect(await checkRedis(rdb.url)).toMatchObject({ aof: false, savePoints: '60 1', problems: [] });
    const closed = await checkRedis(`redis://127.0.0.1:${await freePort()}`, 1000);
    expect(closed.problems).toHaveLength(1);
    expect(closed.problems[0]).toMatch(/^Redis could not be checked: /);
    // Warnings go to the log, one per problem.
    const lines: string[] = [];
    const log = pino({ level: 'warn' }, { write: (s: string) => lines.push(s) });
    await warnAboutRedis(bad.url, log);
    expect(lines.map((l) => (JSON.parse(l) as { msg: string }).msg)).toEqual(b.problems);
  }, 30_000);
});
