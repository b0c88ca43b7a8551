// The compiled server as operators run it (`npm start` runs dist/src/main.js after a build):
// configuration errors stop it with one line; SIGTERM drains in-flight requests and exits 0.
import { afterAll, describe, expect, test } from '@jest/globals';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findPackageRoot } from '../../src/fhir/package-root.js';
import { freePort } from '../support/backends.js';
import { Client } from 'fhir-kit-client';

const root = findPackageRoot();
const main = join(root, 'dist', 'src', 'main.js');
const cli = join(root, 'dist', 'src', 'cli', 'vesta.js');
const dirs: string[] = [];

function run(env: Record<string, string>, args: string[] = [main]): { child: ChildProcess; out: () => string; err: () => string; exit: Promise<number | null> } {
  const child = spawn(process.execPath, args, { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, out: () => out, err: () => err, exit };
}

async function waitFor(url: string, ms: number): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch {
      /* not up yet */
    }
    if (Date.now() > until) throw new Error('server did not come up');
    await new Promise((r) => setTimeout(r, 100));
  }
}

afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('the server process', () => {
  test('is built (npm test builds first)', () => {
    expect(existsSync(main)).toBe(true);
  });

  test('a bad configuration value stops start-up with one line naming the variable', async () => {
    const p = run({ PORT: 'eighty' });
    expect(await p.exit).toBe(2);
    const lines = p.err().trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/PORT/);
  });

  test('a bad registry file stops start-up with one line per problem, each naming REGISTRY_CONFIG_FILE', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vesta-reg-'));
    dirs.push(dir);
    const file = join(dir, 'registries.json');
    writeFileSync(file, JSON.stringify([{ id: 'IIS!', baseUrl: 'http://registry.example.org/fhir', direction: 'sideways', pagesize: 10 }]));
    const p = run({ REGISTRY_CONFIG_FILE: file, DATA_DIR: dir });
    expect(await p.exit).toBe(2);
    const lines = p.err().trim().split('\n');
    expect(lines.length).toBeGreaterThanOrEqual(3);
    for (const l of lines) expect(l).toMatch(/^vesta: configuration error: REGISTRY_CONFIG_FILE: /);
    expect(p.err()).toMatch(/pageSize/);
  });

  test('starts on the embedded database, serves FHIR, keeps data across restarts, drains on SIGTERM', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'vesta-proc-'));
    dirs.push(dataDir);
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const env = { PORT: String(port), HOST: '127.0.0.1', DATA_DIR: dataDir, LOG_LEVEL: 'info' };
    const p = run(env);
    await waitFor(`${base}/metadata`, 60000);
    // The README's first steps: no token, 401; `vesta token` prints one signed with the key ring that
    // the server generated in DATA_DIR on its first start; with it, the request succeeds.
    const denied = await fetch(`${base}/Patient`);
    expect(denied.status).toBe(401);
    expect(denied.headers.get('www-authenticate')).toBe('Bearer');
    const tok = run(env, [cli, 'token', '--scope', 'system/*.cruds', '--ttl', '600']);
    expect(await tok.exit).toBe(0);
    const token = tok.out().trim();
    expect(token.split('.')).toHaveLength(3);
    expect(tok.err()).toMatch(/expires/);
    expect(existsSync(join(dataDir, 'auth-keys.json'))).toBe(true);
    expect(statSync(join(dataDir, 'auth-keys.json')).mode & 0o077).toBe(0);
    const auth = { Authorization: `Bearer ${token}` };
    const created = await fetch(`${base}/Patient`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/fhir+json', ...auth },
      body: JSON.stringify({ resourceType: 'Patient', name: [{ family: 'Quixotically' }], birthDate: '1961-07-04' }),
    });
    expect(created.status).toBe(201);
    const { id } = (await created.json()) as { id: string };
    // A real client with the token from `vesta token`: create, read, search, a transaction; without it, a 401 through its error path.
    const client = new Client({ baseUrl: base, bearerToken: token });
    const made = (await client.create({ resourceType: 'Observation', body: { resourceType: 'Observation', status: 'final', code: { text: 'cli' }, subject: { reference: `Patient/${id}` } } })) as unknown as { id: string };
    expect(((await client.read({ resourceType: 'Observation', id: made.id })) as unknown as { id: string }).id).toBe(made.id);
    expect(((await client.search({ resourceType: 'Observation', searchParams: { subject: `Patient/${id}` } })) as unknown as { total: number }).total).toBe(1);
    const txr = (await client.transaction({ body: { resourceType: 'Bundle', type: 'transaction', entry: [{ request: { method: 'POST', url: 'Basic' }, resource: { resourceType: 'Basic', code: { text: 'tx' } } }] } })) as unknown as { type: string };
    expect(txr.type).toBe('transaction-response');
    const refused = (await new Client({ baseUrl: base }).read({ resourceType: 'Patient', id }).catch((e: unknown) => e)) as { response?: { status?: number } };
    expect(refused.response?.status).toBe(401);
    p.child.kill('SIGTERM');
    expect(await p.exit).toBe(0);
    // Logs are structured JSON and carry no resource content.
    const logs = p.out().trim().split('\n');
    for (const l of logs) expect(() => JSON.parse(l)).not.toThrow();
    expect(p.out()).not.toContain('Quixotically');
    expect(p.out()).not.toContain('1961-07-04');
    expect(p.out()).not.toContain(token);
    expect(p.out()).toContain('shutdown complete');
    expect(p.out()).toContain('generated a new PHI key ring');
    expect(existsSync(join(dataDir, 'phi-keys.json'))).toBe(true);
    expect(statSync(join(dataDir, 'phi-keys.json')).mode & 0o077).toBe(0);
    // The embedded database's files (tables, WAL) never saw the name or birth date in the clear.
    const files = (d: string): string[] => readdirSync(d).flatMap((f) => (statSync(join(d, f)).isDirectory() ? files(join(d, f)) : [join(d, f)]));
    for (const f of files(join(dataDir, 'pgdata'))) {
      const bytes = readFileSync(f);
      expect([f, bytes.includes('Quixotically')]).toEqual([f, false]);
      expect([f, bytes.includes('1961-07-04')]).toEqual([f, false]);
    }

    const again = run(env);
    await waitFor(`${base}/readyz`, 60000);
    // The key ring persists: the token from before the restart still verifies.
    const read = await fetch(`${base}/Patient/${id}`, { headers: auth });
    expect(read.status).toBe(200);
    expect(again.out()).not.toContain(token);
    again.child.kill('SIGTERM');
    expect(await again.exit).toBe(0);
  });

  test('vesta worker needs REDIS_URL: without it, one line naming the variable', async () => {
    const p = run({ DATA_DIR: mkdtempSync(join(tmpdir(), 'vesta-worker-')) }, [cli, 'worker']);
    expect(await p.exit).toBe(2);
    const lines = p.err().trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/REDIS_URL/);
  });

  const redisUrl = process.env.REDIS_URL;
  (redisUrl ? test : test.skip)('vesta worker joins the job queue and stops cleanly on SIGTERM (needs REDIS_URL)', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'vesta-worker-'));
    dirs.push(dataDir);
    const p = run({ DATA_DIR: dataDir, REDIS_URL: redisUrl!, LOG_LEVEL: 'info' }, [cli, 'worker']);
    const until = Date.now() + 60000;
    while (!p.out().includes('Vesta worker ready')) {
      if (Date.now() > until || p.child.exitCode !== null) throw new Error(`worker did not start: ${p.err().slice(0, 300)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    p.child.kill('SIGTERM');
    expect(await p.exit).toBe(0);
    expect(p.out()).toContain('worker stopped');
  });
});
