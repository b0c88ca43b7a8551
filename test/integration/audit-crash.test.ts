// Crash safety of the audit ledger (issue 16 acceptance): the compiled server on real PostgreSQL is
// killed with SIGKILL while 2,000 writes are in flight. After a restart, every write it acknowledged
// (201) has its AuditEvent in the ledger (a write's record commits in the write's own transaction),
// the restarted server's sequencer links what the dead one left unlinked, and `vesta audit verify`
// passes, checkpoints of both lives included. The test prints its figures.
import { afterAll, describe, expect, test } from '@jest/globals';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { findPackageRoot } from '../../src/fhir/package-root.js';
import { adminQuery, freePort, TEST_AUDIT_RING, TEST_KEY_RING, TEST_SIGNING_RING, tokenFor } from '../support/backends.js';

const root = findPackageRoot();
const main = join(root, 'dist', 'src', 'main.js');
const cli = join(root, 'dist', 'src', 'cli', 'vesta.js');
const WRITES = 2000;
const IN_FLIGHT = 64;
/** The server is killed once this many writes are acknowledged (well inside the run). */
const KILL_AFTER = 600;

const cleanup: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const c of cleanup.reverse()) await c();
});

function start(env: Record<string, string>, args: string[] = [main]): { child: ChildProcess; exit: Promise<number | null>; err: () => string; out: () => string } {
  const child = spawn(process.execPath, args, { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  let out = '';
  child.stderr!.on('data', (d) => (err += d));
  child.stdout!.on('data', (d) => (out += d));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, exit, err: () => err, out: () => out };
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

const describeIf = process.env.TEST_DATABASE_URL ? describe : describe.skip;

describeIf('audit ledger across a crash (SIGKILL during 2,000 concurrent writes)', () => {
  test('every acknowledged write has its AuditEvent after restart, and verify passes', async () => {
    const name = `vesta_t_${randomBytes(6).toString('hex')}`;
    await adminQuery(`create database ${name}`);
    cleanup.push(() => adminQuery(`drop database if exists ${name} with (force)`));
    const u = new URL(process.env.TEST_DATABASE_URL!);
    u.pathname = `/${name}`;
    const dir = mkdtempSync(join(tmpdir(), 'vesta-crash-'));
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const env = {
      PORT: String(port),
      HOST: '127.0.0.1',
      BASE_URL: base,
      DATABASE_URL: u.toString(),
      DATA_DIR: dir,
      LOG_LEVEL: 'silent',
      PAGE_TOKEN_SECRET: 'crash-test-secret-crash-test-secret!!',
      PHI_KEYS: JSON.stringify(TEST_KEY_RING),
      AUTH_KEYS: JSON.stringify(TEST_SIGNING_RING),
      AUDIT_KEYS: JSON.stringify(TEST_AUDIT_RING),
      AUDIT_CHECKPOINT_DIR: join(dir, 'checkpoints'),
      // Checkpoints often, so the dead server leaves some behind for verify to check against.
      AUDIT_CHECKPOINT_EVERY: '100',
    };
    const first = start(env);
    cleanup.push(() => void first.child.kill('SIGKILL'));
    await waitFor(`${base}/healthz`, 60000);
    const auth = { Authorization: `Bearer ${await tokenFor(base)}`, 'Content-Type': 'application/fhir+json' };
    const patient = (await (await fetch(`${base}/Patient`, { method: 'POST', headers: auth, body: JSON.stringify({ resourceType: 'Patient', active: true }) })).json()) as { id: string };

    const acknowledged: string[] = [];
    let failed = 0;
    let next = 0;
    let killed = false;
    const worker = async () => {
      while (next < WRITES) {
        const i = next++;
        try {
          const r = await fetch(`${base}/Observation`, {
            method: 'POST',
            headers: auth,
            body: JSON.stringify({ resourceType: 'Observation', status: 'final', code: { text: `crash ${i}` }, subject: { reference: `Patient/${patient.id}` } }),
          });
          if (r.status === 201) acknowledged.push(((await r.json()) as { id: string }).id);
          else failed++;
        } catch {
          failed++; // the connection died with the server
        }
        if (!killed && acknowledged.length >= KILL_AFTER) {
          killed = true;
          first.child.kill('SIGKILL');
        }
      }
    };
    await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
    expect(killed).toBe(true);
    await first.exit;

    // Restart on the same database: the sequencer links what the dead process left unlinked.
    const second = start(env);
    cleanup.push(() => void second.child.kill('SIGKILL'));
    await waitFor(`${base}/healthz`, 60000);
    const client = new pg.Client({ connectionString: u.toString() });
    await client.connect();
    try {
      const rows = (await client.query<{ canonical: string }>("select canonical from audit_ledger where canonical like '%\"code\":\"create\"%'")).rows;
      const recorded = new Set<string>();
      for (const r of rows) {
        const ev = JSON.parse(r.canonical) as { outcome: string; entity?: { what?: { reference?: string } }[] };
        if (ev.outcome !== '0') continue;
        for (const e of ev.entity ?? []) {
          const m = /^Observation\/([^/]+)\/_history\/1$/.exec(e.what?.reference ?? '');
          if (m) recorded.add(m[1]);
        }
      }
      const missing = acknowledged.filter((id) => !recorded.has(id));
      process.stdout.write(`audit crash test: ${WRITES} writes sent, ${acknowledged.length} acknowledged before and after the SIGKILL, ${failed} failed with the server, ${recorded.size} successful create records, ${missing.length} acknowledged writes without a record\n`);
      expect(acknowledged.length).toBeGreaterThanOrEqual(KILL_AFTER);
      expect(missing).toEqual([]);
    } finally {
      await client.end();
    }

    // A clean stop links and checkpoints the rest; then the whole chain and every checkpoint verify.
    second.child.kill('SIGTERM');
    expect(await second.exit).toBe(0);
    const verify = start(env, [cli, 'audit', 'verify']);
    const code = await verify.exit;
    process.stdout.write(`audit crash test: verify exit ${code}\n${verify.out()}`);
    expect(code).toBe(0);
    expect(verify.out()).toMatch(/audit ledger intact/);
    expect(verify.out()).toMatch(/checkpoints \(.*\): [1-9]\d* found/);
  }, 300_000);
});
