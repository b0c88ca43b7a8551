// WEB_CONCURRENCY (src/cluster.ts): the compiled server on PostgreSQL as a supervisor of two server
// processes sharing the port. Both serve (each one's CPU time grows under load), a killed one is
// replaced while requests keep succeeding, SIGTERM stops them all and the supervisor exits 0; the
// embedded database refuses more than one process at start.
import { afterAll, describe, expect, test } from '@jest/globals';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findPackageRoot } from '../../src/fhir/package-root.js';
import { adminQuery, freePort, tokenFor, TEST_AUDIT_RING, TEST_KEY_RING, TEST_SIGNING_RING } from '../support/backends.js';

const main = join(findPackageRoot(), 'dist', 'src', 'main.js');
const cleanup: (() => Promise<unknown> | void)[] = [];
afterAll(async () => {
  for (const c of cleanup.reverse()) await c();
});

function start(env: Record<string, string>): { child: ChildProcess; exit: Promise<number | null>; err: () => string; log: () => string } {
  const child = spawn(process.execPath, [main], { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  let log = '';
  child.stderr!.on('data', (d) => (err += d));
  child.stdout!.on('data', (d) => (log += d));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, exit, err: () => err, log: () => log };
}

/** The server processes the supervisor forked (its children that are node). */
function children(pid: number): number[] {
  try {
    return execFileSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' })
      .split('\n')
      .map((l) => Number(l.trim()))
      .filter((n) => n > 0);
  } catch {
    return [];
  }
}

/** User + system CPU time of a process, in clock ticks (/proc/<pid>/stat fields 14 and 15). */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

async function until<T>(what: string, f: () => Promise<T | undefined> | T | undefined, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const describeIf = process.env.TEST_DATABASE_URL && existsSync('/proc/self/stat') ? describe : describe.skip;

describe('WEB_CONCURRENCY', () => {
  test('more than one process on the embedded database stops start-up with one line naming the variable', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vesta-cluster-'));
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    const p = start({ WEB_CONCURRENCY: '2', DATA_DIR: dir, PORT: String(await freePort()) });
    expect(await p.exit).toBe(2);
    expect(p.err().trim().split('\n')).toEqual([
      'vesta: configuration error: WEB_CONCURRENCY: must be 1 without DATABASE_URL (the embedded database is opened by one process), got 2',
    ]);
    const bad = start({ WEB_CONCURRENCY: 'lots', DATA_DIR: dir, PORT: String(await freePort()) });
    expect(await bad.exit).toBe(2);
    expect(bad.err()).toMatch(/WEB_CONCURRENCY/);
  });
});

describeIf('WEB_CONCURRENCY=2 on PostgreSQL', () => {
  test('two server processes share the port and both serve; a killed one is replaced without failed requests; SIGTERM stops all, exit 0', async () => {
    const name = `vesta_t_${randomBytes(6).toString('hex')}`;
    await adminQuery(`create database ${name}`);
    cleanup.push(() => adminQuery(`drop database if exists ${name} with (force)`));
    const u = new URL(process.env.TEST_DATABASE_URL!);
    u.pathname = `/${name}`;
    const dir = mkdtempSync(join(tmpdir(), 'vesta-cluster-'));
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const server = start({
      WEB_CONCURRENCY: '2',
      PORT: String(port),
      HOST: '127.0.0.1',
      BASE_URL: base,
      DATABASE_URL: u.toString(),
      DATABASE_POOL_MAX: '5',
      DATA_DIR: dir,
      LOG_LEVEL: 'info',
      PAGE_TOKEN_SECRET: 'cluster-test-secret-cluster-test-secret',
      PHI_KEYS: JSON.stringify(TEST_KEY_RING),
      AUTH_KEYS: JSON.stringify(TEST_SIGNING_RING),
      AUDIT_KEYS: JSON.stringify(TEST_AUDIT_RING),
      AUDIT_CHECKPOINT_DIR: join(dir, 'checkpoints'),
    });
    cleanup.push(() => void server.child.kill('SIGKILL'));
    const supervisor = server.child.pid!;
    const token = await tokenFor(base);
    const auth = { Authorization: `Bearer ${token}`, 'Content-Type': 'application/fhir+json' };
    const workers = await until('two server processes', () => (children(supervisor).length === 2 ? children(supervisor) : undefined));
    await until('the port answers', async () => {
      try {
        return (await fetch(`${base}/healthz`)).ok ? true : undefined;
      } catch {
        return undefined;
      }
    });
    const created = await fetch(`${base}/Patient`, { method: 'POST', headers: auth, body: JSON.stringify({ resourceType: 'Patient', name: [{ family: 'Cluster' }] }) });
    expect(created.status).toBe(201);
    const id = ((await created.json()) as { id: string }).id;

    // Load from many connections: both processes' CPU time grows.
    const before = workers.map(cpuTicks);
    const statuses: number[] = [];
    const reads = async (n: number) => {
      for (let i = 0; i < n; i++) {
        // A new connection each time, so the supervisor hands connections to both.
        const r = await fetch(`${base}/Patient/${id}`, { headers: { ...auth, Connection: 'close' } });
        statuses.push(r.status);
        await r.arrayBuffer();
      }
    };
    await Promise.all(Array.from({ length: 8 }, () => reads(40)));
    const grew = workers.map((w, i) => cpuTicks(w) - before[i]);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    for (const g of grew) expect(g).toBeGreaterThan(5);

    // One is killed: the other goes on serving, a replacement is forked.
    process.kill(workers[0], 'SIGKILL');
    const during: number[] = [];
    const replaced = until(
      'a replacement process',
      () => {
        const now = children(supervisor);
        return now.length === 2 && !now.includes(workers[0]) ? now : undefined;
      },
      30_000,
    );
    for (let i = 0; i < 30; i++) {
      const r = await fetch(`${base}/Patient/${id}`, { headers: { ...auth, Connection: 'close' } }).catch(() => undefined);
      during.push(r?.status ?? 0);
      await r?.arrayBuffer();
    }
    const after = await replaced;
    expect(after).toContain(workers[1]);
    // A request on a connection the dead process held can fail; new connections all succeed.
    expect(during.filter((s) => s === 200).length).toBeGreaterThanOrEqual(28);
    const again = await fetch(`${base}/Patient/${id}`, { headers: auth });
    expect(again.status).toBe(200);

    server.child.kill('SIGTERM');
    const code = await server.exit;
    if (code !== 0) process.stderr.write(server.log().split('\n').filter((l) => !l.includes('"level":30,') || /stop|exit|shut/.test(l)).join('\n').slice(-4000));
    expect(code).toBe(0);
    expect(children(supervisor)).toEqual([]);
    for (const pid of after) expect(existsSync(`/proc/${pid}`)).toBe(false);
    expect(server.log()).toContain('a server process exited; starting another');
    expect(server.log()).toContain('shutdown complete');
  }, 120_000);
});
