// The cost of PHI encryption (issue 6): `npm run bench` without BENCH_PHI runs the whole bench twice,
// with PHI_ENCRYPTION=on and =off (one after the other, each over its own throw-away databases), and
// reports ingest and read throughput in both modes with the ratio on/off. BENCH_PHI=on|off runs one
// mode only, as before. Writes bench/results/<date>-phi-cost.json beside the two runs' files.
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { findPackageRoot } from '../src/fhir/package-root.js';

interface RunResult {
  date: string;
  // Absent when BENCH_ONLY skipped the phase.
  ingest?: { runs: { concurrency: number; vestaRps: number }[] };
  readById?: { vesta: { rps: number; p50: number; p99: number } };
  crudCycle?: { rps: number };
  searchMix?: { queries: { query: string; vesta: { p50: number; p95: number } }[] };
}

/** Runs bench/run.js in one PHI mode (its output passes through) and returns its results file. */
function runMode(phi: 'on' | 'off', extraEnv: Record<string, string> = {}): Promise<RunResult> {
  const root = findPackageRoot();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(root, 'dist', 'bench', 'run.js')], { env: { ...process.env, ...extraEnv, BENCH_PHI: phi }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      process.stdout.write(d);
    });
    child.once('error', reject);
    child.once('exit', (code) => {
      const m = /written: (.+\.json)/.exec(out);
      if (code !== 0 || !m) reject(new Error(`bench with BENCH_PHI=${phi} failed (exit ${code})`));
      else resolve(JSON.parse(readFileSync(m[1].trim(), 'utf8')) as RunResult);
    });
  });
}

const ratio = (on: number, off: number) => (off > 0 ? Math.round((on / off) * 1000) / 1000 : NaN);

export async function phiCost(): Promise<void> {
  process.stderr.write('bench: PHI_ENCRYPTION=on, then off (set BENCH_PHI=on|off to run one mode)\n');
  const on = await runMode('on');
  const off = await runMode('off', { BENCH_VALIDATION: '0' }); // validation does not touch PHI: measured once
  const rows: [string, number, number][] = [
    ...(on.ingest?.runs ?? []).map((r): [string, number, number] => [`Synthea ingest, concurrency ${r.concurrency}: resources/s`, r.vestaRps, off.ingest?.runs.find((x) => x.concurrency === r.concurrency)?.vestaRps ?? NaN]),
    ...(on.readById && off.readById ? [['read by id, 16 conn: req/s', on.readById.vesta.rps, off.readById.vesta.rps] as [string, number, number]] : []),
    ...(on.crudCycle && off.crudCycle ? [['CRUD cycle, 8 conn: req/s', on.crudCycle.rps, off.crudCycle.rps] as [string, number, number]] : []),
  ];
  const lines = [
    '',
    `Cost of PHI encryption (runs ${on.date} and ${off.date}; medians):`,
    '',
    '| workload | PHI on | PHI off | ratio on/off |',
    '|---|---|---|---|',
    ...rows.map(([k, a, b]) => `| ${k} | ${a} | ${b} | ${ratio(a, b)} |`),
    ...(on.readById && off.readById ? [`| read by id: p50 / p99 ms | ${on.readById.vesta.p50} / ${on.readById.vesta.p99} | ${off.readById.vesta.p50} / ${off.readById.vesta.p99} | |`] : []),
  ];
  for (const q of on.searchMix?.queries ?? []) {
    const o = off.searchMix?.queries.find((x) => x.query === q.query);
    if (o) lines.push(`| search ${q.query}: p95 ms | ${q.vesta.p95} | ${o.vesta.p95} | ${ratio(q.vesta.p95, o.vesta.p95)} |`);
  }
  process.stdout.write(lines.join('\n') + '\n');
  const dir = join(findPackageRoot(), 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${on.date.replace(/[:.]/g, '-')}-phi-cost.json`);
  writeFileSync(file, JSON.stringify({ on: on.date, off: off.date, rows: rows.map(([workload, phiOn, phiOff]) => ({ workload, phiOn, phiOff, ratio: ratio(phiOn, phiOff) })) }, null, 2) + '\n');
  process.stdout.write(`\nwritten: ${file}\n`);
}
