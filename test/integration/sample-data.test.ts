// Sample data from a fresh clone (issue 14 item 6): bench/generate-data reads the Synthea fixtures in
// the repository by default, takes another set by option, and refuses a missing path with one line.
import { afterAll, describe, expect, test } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findPackageRoot } from '../../src/fhir/package-root.js';

const root = findPackageRoot();
const generator = join(root, 'dist', 'bench', 'generate-data.js');
const dirs: string[] = [];

function run(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; out: string; err: string }> {
  // cwd elsewhere: the default must not depend on where it is started (it read ../shared before).
  const child = spawn(process.execPath, [generator, ...args], { cwd: tmpdir(), env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, out, err })));
}

afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('bench/generate-data', () => {
  test('with default options it multiplies the fixtures into consistent transaction Bundles', async () => {
    const out = mkdtempSync(join(tmpdir(), 'vesta-gen-'));
    dirs.push(out);
    const r = await run(['--resources', '500', '--out', out]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^generated \d+ bundles, \d+ resources in .* \(from .*test\/fixtures\/synthea\)\n$/);
    const files = readdirSync(out).filter((f) => f.startsWith('b'));
    // 3 fixture bundles of 70, 66 and 71 entries: 500 resources need 8 of them.
    expect(files).toHaveLength(8);
    const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as { bundles: number; resourceCounts: Record<string, number> };
    expect(manifest.bundles).toBe(8);
    expect(manifest.resourceCounts.Patient).toBe(8);
    const a = JSON.parse(readFileSync(join(out, files[0]), 'utf8')) as { type: string; entry: { fullUrl: string }[] };
    const b = JSON.parse(readFileSync(join(out, files[3]), 'utf8')) as { entry: { fullUrl: string }[] };
    expect(a.type).toBe('transaction');
    // The copy of the same fixture (file 3 of 0..7) carries fresh ids.
    const urls = new Set(b.entry.map((e) => e.fullUrl));
    expect(a.entry.length).toBe(b.entry.length);
    expect(a.entry.filter((e) => urls.has(e.fullUrl))).toEqual([]);
  }, 60_000);

  test('a missing --data path, or a missing VESTA_SAMPLE_DATA, is one clear line and exit 2', async () => {
    const out = mkdtempSync(join(tmpdir(), 'vesta-gen-'));
    dirs.push(out);
    for (const r of [await run(['--out', out, '--data', '/nonexistent/synthea']), await run(['--out', out], { VESTA_SAMPLE_DATA: '/nonexistent/synthea' })]) {
      expect(r.code).toBe(2);
      const lines = r.err.trim().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toBe(`generate-data: sample data folder /nonexistent/synthea does not exist (default: ${join(root, 'test', 'fixtures', 'synthea')})`);
    }
    const noOut = await run([]);
    expect(noOut.code).toBe(2);
    expect(noOut.err.trim().split('\n')).toHaveLength(1);
    expect(noOut.err).toMatch(/--out <dir> is required/);
  }, 60_000);
});
