// `vesta registry ...` as an operator runs it (the compiled CLI, issue 17 item 7): sync --once against a
// second Vesta acting as the registry, then status (text and JSON), the review list and its resolve,
// the dead-letter list, and the refusals (unknown registry, bad usage, a broken registry file).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, generateKeyPair } from 'jose';
import { addClient } from '../../src/auth-server/admin.js';
import { findPackageRoot } from '../../src/fhir/package-root.js';
import { createLogger } from '../../src/log/logger.js';
import { buildServices, startServer, type Running } from '../../src/server.js';
import { openDatabase } from '../../src/storage/db.js';
import { adminQuery, authed, startTestServer, testConfig, tokenFor, TEST_AUDIT_RING, TEST_KEY_RING, TEST_SIGNING_RING, type TestServer } from '../support/backends.js';

const cli = join(findPackageRoot(), 'dist', 'src', 'cli', 'vesta.js');
const SYS = 'urn:test:cli-iis-patient';

function run(args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => resolve({ code, out, err }));
  });
}

async function post(server: { url: string; token: string }, resource: Record<string, unknown>): Promise<string> {
  const r = await authed(server).post(`/${resource.resourceType as string}`).send(resource);
  if (r.status !== 201) throw new Error(`create answered ${r.status}`);
  return (r.body as { id: string }).id;
}

const imm = (patient: string, lot: string) => ({ resourceType: 'Immunization', status: 'completed', vaccineCode: { coding: [{ system: 'http://hl7.org/fhir/sid/cvx', code: '08' }] }, patient: { reference: `Patient/${patient}` }, occurrenceDateTime: '2024-03-01', lotNumber: lot });
const patient = (value: string) => ({ resourceType: 'Patient', identifier: [{ system: SYS, value }], name: [{ family: 'Cli' }], birthDate: '2017-07-07' });

const describeIf = process.env.TEST_DATABASE_URL ? describe : describe.skip;

describeIf('vesta registry (compiled CLI)', () => {
  const cleanup: (() => Promise<unknown> | void)[] = [];
  let env: Record<string, string>;
  let dir: string;
  let registry: TestServer;
  let local: { url: string; token: string };
  let running: Running;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vesta-registry-cli-'));
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    registry = await startTestServer('pg');
    cleanup.push(() => registry.close());
    const base = registry.svc.config.baseUrl;
    const { privateKey, publicKey } = await generateKeyPair('ES384', { extractable: true });
    const kid = `cli-${randomUUID().slice(0, 8)}`;
    await addClient(registry.svc.db.knex, { client_id: 'cli-sync', type: 'confidential-asymmetric', redirect_uris: [], scope: 'system/*.cruds', jwks: { keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'ES384', use: 'sig' }] } }, { allowLoopbackJwksUri: false });
    writeFileSync(join(dir, 'key.json'), JSON.stringify({ ...(await exportJWK(privateKey)), kid, alg: 'ES384' }), { mode: 0o600 });
    writeFileSync(
      join(dir, 'registries.json'),
      JSON.stringify([
        {
          id: 'cli-iis',
          baseUrl: base,
          auth: { type: 'backend-services', tokenUrl: `${base}/auth/token`, clientId: 'cli-sync', privateKeyFile: 'key.json', scope: 'system/*.cruds' },
          direction: 'both',
          schedule: { cron: '0 3 * * *' },
          patientIdentifierSystem: SYS,
          rateLimit: { requests: 1000, perSeconds: 1 },
        },
      ]),
    );
    const name = `vesta_t_${randomBytes(6).toString('hex')}`;
    await adminQuery(`create database ${name}`);
    cleanup.push(() => adminQuery(`drop database if exists ${name} with (force)`));
    const u = new URL(process.env.TEST_DATABASE_URL!);
    u.pathname = `/${name}`;
    const config = await testConfig({ DATABASE_URL: u.toString() });
    const svc = await buildServices(config, createLogger('silent'), openDatabase({ databaseUrl: u.toString(), poolMax: 5 }));
    running = await startServer(svc);
    cleanup.push(() => running.close());
    local = { url: running.url, token: await tokenFor(config.baseUrl) };
    env = {
      DATABASE_URL: u.toString(),
      REGISTRY_CONFIG_FILE: join(dir, 'registries.json'),
      BASE_URL: config.baseUrl,
      DATA_DIR: dir,
      PAGE_TOKEN_SECRET: 'test-secret-test-secret-test-secret!',
      PHI_KEYS: JSON.stringify(TEST_KEY_RING),
      AUTH_KEYS: JSON.stringify(TEST_SIGNING_RING),
      AUDIT_KEYS: JSON.stringify(TEST_AUDIT_RING),
      AUDIT_CHECKPOINT_DIR: join(dir, 'checkpoints'),
    };
    // Locally: A with 3 Immunizations, B with 2, and two Patients sharing C (the registry's C is ambiguous here).
    const a = await post(local, patient('A'));
    const b = await post(local, patient('B'));
    await post(local, patient('C'));
    await post(local, patient('C'));
    for (const [p, n] of [[a, 3], [b, 2]] as const) for (let i = 0; i < n; i++) await post(local, imm(p, `local-${i}`));
    // At the registry: A with 2 Immunizations, C with 1.
    const ra = await post(registry, patient('A'));
    const rc = await post(registry, patient('C'));
    for (let i = 0; i < 2; i++) await post(registry, imm(ra, `registry-${i}`));
    await post(registry, imm(rc, 'registry-c'));
    // The push waits out its 5 s lag for versions this young.
    await new Promise((r) => setTimeout(r, 5500));
  }, 120_000);

  afterAll(async () => {
    for (const c of cleanup.reverse()) await c();
  }, 60_000);

  test('sync --once: both directions now, one summary line each, exit 0; the registry and Vesta hold what they should', async () => {
    const r = await run(['registry', 'sync', 'cli-iis', '--once'], env);
    expect(r.code).toBe(0);
    const lines = r.out.trim().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^registry cli-iis push: completed; sent 5, stored 0, rejected 0, retried 0, dead-lettered 0, unmatched 0, skipped 0; watermark \S+; breaker closed$/);
    // Pull: A's 2 stored (and the 5 pushed ones seen again, skipped); C's matches two local Patients: review.
    expect(lines[1]).toMatch(/^registry cli-iis pull: completed; sent 0, stored 2, rejected 0, retried 0, dead-lettered 0, unmatched 1, skipped \d+; watermark \S+; breaker closed$/);
    const pushed = await authed(registry).get('/Immunization').query({ identifier: `${env.BASE_URL}/Immunization|`, _summary: 'count' });
    expect((pushed.body as { total: number }).total).toBe(5);
    const pulled = await authed(local).get('/Immunization').query({ identifier: `${registry.svc.config.baseUrl}/Immunization|`, _summary: 'count' });
    expect((pulled.body as { total: number }).total).toBe(2);
    // Nothing secret or personal on either stream.
    for (const text of [r.out, r.err]) for (const secret of [local.token, registry.token, '"d":', 'Cli']) expect(text).not.toContain(secret);
    // A second push has nothing to send. The 2 pulled Immunizations are new local versions: passed
    // because they came from this registry once they are older than the push's 5 s lag, not yet
    // looked at before; each of the two may fall on either side of the lag (how soon this run starts
    // depends on the machine), so 0, 1 or 2 of them are skipped.
    const again = await run(['registry', 'sync', 'cli-iis', '--push', '--once'], env);
    expect(again.code).toBe(0);
    expect(again.out).toMatch(/^registry cli-iis push: completed; sent 0, stored 0, rejected 0, retried 0, dead-lettered 0, unmatched 0, skipped [012]; watermark/);
  }, 120_000);

  test('status: breaker, review and dead-letter counts, and per direction the last run, watermark and totals; --json the same', async () => {
    const r = await run(['registry', 'status'], env);
    expect(r.code).toBe(0);
    expect(r.out).toContain('registry cli-iis\n  breaker: closed (0 consecutive failures)\n  review: 1 open; dead letters: 0\n');
    expect(r.out).toMatch(/ {2}push: last run \S+ \.\. \S+ completed\n {4}watermark \S+; totals: sent 5, stored 0, rejected 0/);
    expect(r.out).toMatch(/ {2}pull: last run \S+ \.\. \S+ completed\n {4}watermark \S+; totals: sent 0, stored 2, rejected 0, retried 0, dead-lettered 0, unmatched 1/);
    const j = await run(['registry', 'status', '--json'], env);
    expect(j.code).toBe(0);
    const [s] = JSON.parse(j.out) as { registry: string; configured: boolean; breaker: { state: string }; openReviews: number; deadLetters: number; directions: { direction: string; lastOutcome: string; counts: { sent: number; stored: number } }[] }[];
    expect(s).toMatchObject({ registry: 'cli-iis', configured: true, breaker: { state: 'closed' }, openReviews: 1, deadLetters: 0 });
    expect(s.directions.map((d) => [d.direction, d.lastOutcome, d.counts.sent, d.counts.stored])).toEqual([
      ['pull', 'completed', 0, 2],
      ['push', 'completed', 5, 0],
    ]);
  }, 60_000);

  test('the review list names the registry record and the reason; resolve takes it off once', async () => {
    const r = await run(['registry', 'review'], env);
    expect(r.code).toBe(0);
    const [line, ...rest] = r.out.trim().split('\n');
    expect(rest).toEqual([]);
    const [num, id, reason, reference] = line.split('\t');
    expect([id, reason]).toEqual(['cli-iis', 'several-matches']);
    expect(reference).toMatch(new RegExp(`^${registry.svc.config.baseUrl}/Immunization/[A-Za-z0-9-]+$`));
    expect(line).toContain('2 local Patients have the registry patient');
    const resolved = await run(['registry', 'review', 'resolve', num], env);
    expect([resolved.code, resolved.out]).toEqual([0, `review ${num} resolved\n`]);
    const twice = await run(['registry', 'review', 'resolve', num], env);
    expect([twice.code, twice.out]).toEqual([1, `no open review ${num}\n`]);
    expect((await run(['registry', 'review'], env)).out).toBe('the review list is empty\n');
    expect((await run(['registry', 'review', '--all'], env)).out).toContain(`\tresolved `);
    expect((await run(['registry', 'dead-letters'], env)).out).toBe('the dead-letter list is empty\n');
  }, 60_000);

  test('refusals: an unknown registry, bad usage, a direction not configured, a broken registry file', async () => {
    const unknown = await run(['registry', 'sync', 'nope', '--once'], env);
    expect(unknown.code).toBe(1);
    expect(unknown.err).toBe('vesta: no registry "nope" in REGISTRY_CONFIG_FILE (configured: cli-iis)\n');
    const usage = await run(['registry', 'sync'], env);
    expect(usage.code).toBe(2);
    expect(usage.err).toMatch(/^usage:\n {2}registry sync <id>/);
    expect((await run(['registry', 'sync', 'cli-iis', '--push', '--pull'], env)).code).toBe(2);
    expect((await run(['registry', 'frobnicate'], env)).code).toBe(2);
    writeFileSync(join(dir, 'bad.json'), JSON.stringify([{ id: 'Bad Id', baseUrl: 'http://iis.example.org/fhir', direction: 'sideways' }]));
    const bad = await run(['registry', 'status'], { ...env, REGISTRY_CONFIG_FILE: join(dir, 'bad.json') });
    expect(bad.code).toBe(2);
    const lines = bad.err.trim().split('\n');
    expect(lines.length).toBeGreaterThanOrEqual(3);
    for (const l of lines) expect(l).toMatch(/^vesta: configuration error: REGISTRY_CONFIG_FILE: /);
    expect(bad.err).toContain('must use https');
  }, 60_000);
});
