// One process per embedded data folder (issue 14 item 4): a second server or `vesta migrate` on the same
// DATA_DIR stops at once with one line naming the holder (exit 3) while the first keeps serving; a lock
// left by a process that is gone is taken over. Real processes from the build (dist/), as operators run them.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { findPackageRoot } from '../../src/fhir/package-root.js';
import { acquireDataDirLock, DataDirLockedError, LOCK_FILE } from '../../src/storage/data-dir-lock.js';
import { freePort } from '../support/backends.js';

const root = findPackageRoot();
const main = join(root, 'dist', 'src', 'main.js');
const cli = join(root, 'dist', 'src', 'cli', 'vesta.js');
const dirs: string[] = [];

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'vesta-lock-'));
  dirs.push(d);
  return d;
}

function run(env: Record<string, string>, args: string[]): { child: ChildProcess; err: () => string; exit: Promise<number | null> } {
  const child = spawn(process.execPath, args, { env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, err: () => err, exit };
}

async function waitFor(url: string, ms: number): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    try {
      if ((await fetch(url)).ok) return;
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

describe('a data folder held by a running server', () => {
  let dataDir: string;
  let base: string;
  let first: ReturnType<typeof run>;
  beforeAll(async () => {
    dataDir = tempDir();
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    first = run({ PORT: String(port), HOST: '127.0.0.1', DATA_DIR: dataDir }, [main]);
    await waitFor(`${base}/metadata`, 90_000);
  }, 120_000);
  afterAll(async () => {
    if (first.child.exitCode === null) {
      first.child.kill('SIGTERM');
      expect(await first.exit).toBe(0);
    }
    // A clean stop leaves no lock behind.
    expect(existsSync(join(dataDir, LOCK_FILE))).toBe(false);
  }, 30_000);

  test('a second server and `vesta migrate` stop with one line naming the holder; the first keeps serving', async () => {
    const lockLine = new RegExp(`DATA_DIR ${dataDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is in use by process ${first.child.pid} \\(node main\\.js, started \\d{4}-\\d\\d-\\d\\dT`);
    const t0 = Date.now();
    const second = run({ PORT: String(await freePort()), HOST: '127.0.0.1', DATA_DIR: dataDir }, [main]);
    const migrate = run({ DATA_DIR: dataDir }, [cli, 'migrate']);
    const serve = run({ PORT: String(await freePort()), HOST: '127.0.0.1', DATA_DIR: dataDir }, [cli, 'serve']);
    for (const p of [second, migrate, serve]) {
      expect(await p.exit).toBe(3);
      const lines = p.err().trim().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(lockLine);
    }
    // "At once": no database was opened, only node's start-up (generous for a loaded machine).
    expect(Date.now() - t0).toBeLessThan(30_000);
    expect(first.child.exitCode).toBeNull();
    const r = await fetch(`${base}/metadata`);
    expect(r.status).toBe(200);
    // The holder's lock is still its own.
    expect(JSON.parse(readFileSync(join(dataDir, LOCK_FILE), 'utf8')).pid).toBe(first.child.pid);
  }, 60_000);
});

describe('stale locks', () => {
  test('a lock whose process is gone is taken over by `vesta migrate`, which leaves none behind', async () => {
    const dataDir = tempDir();
    // A pid that is certainly gone: a child that has exited.
    const gone = run({}, ['-e', '0']);
    await gone.exit;
    writeFileSync(join(dataDir, LOCK_FILE), JSON.stringify({ pid: gone.child.pid, startedAt: '2026-01-01T00:00:00.000Z', command: 'node main.js', host: hostname(), nonce: 'x' }) + '\n');
    const m = run({ DATA_DIR: dataDir }, [cli, 'migrate']);
    expect(await m.exit).toBe(0);
    expect(m.err()).toBe('');
    expect(existsSync(join(dataDir, LOCK_FILE))).toBe(false);
  }, 60_000);

  test('a live pid with another start time (pid reused) is stale; this live process is not', () => {
    const dataDir = tempDir();
    mkdirSync(dataDir, { recursive: true });
    const path = join(dataDir, LOCK_FILE);
    const procStart = existsSync(`/proc/${process.pid}/stat`) ? 'not-the-start-time' : undefined;
    writeFileSync(path, JSON.stringify({ pid: process.pid, ...(procStart ? { procStart } : {}), startedAt: '2026-01-01T00:00:00.000Z', command: 'node old', host: hostname(), nonce: 'y' }) + '\n');
    if (procStart) {
      const lock = acquireDataDirLock(dataDir);
      expect(JSON.parse(readFileSync(path, 'utf8')).nonce).not.toBe('y');
      // Now held by this very process: a second open in it is refused too.
      expect(() => acquireDataDirLock(dataDir)).toThrow(DataDirLockedError);
      lock.release();
      expect(existsSync(path)).toBe(false);
    } else {
      expect(() => acquireDataDirLock(dataDir)).toThrow(DataDirLockedError);
    }
  });

  test('of many takers of one stale lock at once, exactly one wins', async () => {
    const dataDir = tempDir();
    const gone = run({}, ['-e', '0']);
    await gone.exit;
    writeFileSync(join(dataDir, LOCK_FILE), JSON.stringify({ pid: gone.child.pid, startedAt: '2026-01-01T00:00:00.000Z', command: 'node main.js', host: hostname(), nonce: 'z' }) + '\n');
    // Separate processes, each trying once and holding what it got until all have tried.
    const script = `import { acquireDataDirLock } from ${JSON.stringify(join(root, 'dist', 'src', 'storage', 'data-dir-lock.js'))};
      try { acquireDataDirLock(${JSON.stringify(dataDir)}); process.stderr.write('won\\n'); } catch (e) { process.stderr.write(e.name + '\\n'); }
      setTimeout(() => process.exit(0), 10000);`;
    const takers = Array.from({ length: 6 }, () => run({}, ['--input-type=module', '-e', script]));
    await Promise.all(takers.map((p) => p.exit));
    const outcomes = takers.map((p) => p.err().trim()).sort();
    expect(outcomes.filter((o) => o === 'won')).toHaveLength(1);
    expect(outcomes.filter((o) => o === 'DataDirLockedError')).toHaveLength(5);
  }, 60_000);
});
