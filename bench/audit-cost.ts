// The cost of the audit ledger (issue 16 item 8): the same workloads against two servers that differ
// only in AUDIT=on|off, each on its own fresh database loaded with the same Synthea bundles, measured
// in alternating rounds (on, off, off, on, ...) so that the machine's noise falls on both. Reports the
// median of each mode, the ratio on/off and the per-round ratios. Targets: >= 0.85 for reads (read by
// id, search), >= 0.9 for ingest.
import type { ChildProcess } from 'node:child_process';
import type { Agent } from 'node:http';
import { closedLoop, httpCall, median, percentile } from './load.js';
import { vestaLoad } from './ingest.js';

type Mode = 'on' | 'off';

export interface AuditCostDeps {
  start(port: number, env: Record<string, string>): { child: ChildProcess };
  waitReady(url: string, timeoutMs: number): Promise<number>;
  bearer(port: number): Promise<Record<string, string>>;
  stop(child: ChildProcess): Promise<void>;
  /** A fresh database; drop() removes it. */
  database(suffix: string): Promise<{ url: string; drop(): Promise<void> }>;
  agent: Agent;
  files: string[];
  seconds: number;
  rounds: number;
}

export interface CostRow {
  workload: string;
  on: number;
  off: number;
  ratio: number;
  perRoundRatios: number[];
  target?: number;
}

const r1 = (x: number) => Math.round(x * 10) / 10;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

function row(workload: string, on: number[], off: number[], target?: number): CostRow {
  const mOn = median(on);
  const mOff = median(off);
  return { workload, on: r1(mOn), off: r1(mOff), ratio: r3(mOn / mOff), perRoundRatios: on.map((x, i) => r3(x / off[i])), ...(target ? { target } : {}) };
}

/** Round r measures `on` first when r is even, `off` first when odd. */
const order = (r: number): Mode[] => (r % 2 === 0 ? ['on', 'off'] : ['off', 'on']);

export async function auditCost(d: AuditCostDeps): Promise<{ rows: CostRow[]; latency: Record<string, unknown> }> {
  const PORT: Record<Mode, number> = { on: 18310 + Number(process.env.BENCH_PORT_OFFSET ?? 0), off: 18311 + Number(process.env.BENCH_PORT_OFFSET ?? 0) };
  const rows: CostRow[] = [];
  const latency: Record<string, unknown> = {};

  // Ingest: each round loads the bundles into a fresh database per mode, at concurrency 4.
  const ingest: Record<Mode, number[]> = { on: [], off: [] };
  for (let r = 0; r < d.rounds; r++) {
    for (const mode of order(r)) {
      process.stderr.write(`bench: audit cost, ingest round ${r + 1} with AUDIT=${mode}\n`);
      const db = await d.database(`audit_ingest_${mode}_${r}`);
      try {
        const v = d.start(PORT[mode], { DATABASE_URL: db.url, DATABASE_POOL_MAX: '10', AUDIT: mode });
        try {
          await d.waitReady(`http://127.0.0.1:${PORT[mode]}/readyz`, 60000);
          const res = await vestaLoad(`http://127.0.0.1:${PORT[mode]}`, d.files, 4, await d.bearer(PORT[mode]));
          if (res.failures) throw new Error(`audit cost ingest (AUDIT=${mode}): ${res.failures} failures: ${res.reasons.slice(0, 3).join('; ')}`);
          ingest[mode].push(res.rps);
        } finally {
          await d.stop(v.child);
        }
      } finally {
        await db.drop();
      }
    }
  }
  rows.push(row('Synthea ingest, concurrency 4: resources/s', ingest.on, ingest.off, 0.9));

  // Reads, searches and the CRUD cycle: both servers up, each on a database loaded with the bundles.
  const dbs: Partial<Record<Mode, { url: string; drop(): Promise<void> }>> = {};
  const children: ChildProcess[] = [];
  try {
    const headers: Partial<Record<Mode, Record<string, string>>> = {};
    const data: Partial<Record<Mode, { patients: string[]; observations: string[]; pairs: [string, string][] }>> = {};
    for (const mode of ['on', 'off'] as Mode[]) {
      dbs[mode] = await d.database(`audit_reads_${mode}`);
      const v = d.start(PORT[mode], { DATABASE_URL: dbs[mode]!.url, DATABASE_POOL_MAX: '10', AUDIT: mode });
      children.push(v.child);
      await d.waitReady(`http://127.0.0.1:${PORT[mode]}/readyz`, 60000);
      headers[mode] = await d.bearer(PORT[mode]);
      const loaded = await vestaLoad(`http://127.0.0.1:${PORT[mode]}`, d.files, 4, headers[mode]);
      if (loaded.failures) throw new Error(`audit cost seed (AUDIT=${mode}): ${loaded.failures} failures`);
      data[mode] = await sample(d.agent, new URL(`http://127.0.0.1:${PORT[mode]}`), headers[mode]!);
    }
    const base = (m: Mode) => new URL(`http://127.0.0.1:${PORT[m]}`);
    const pick = <T>(xs: T[]) => xs[Math.floor(Math.random() * xs.length)];

    const measure = async (name: string, connections: number, op: (m: Mode) => Promise<{ status: number; ms: number }>, target?: number) => {
      const rps: Record<Mode, number[]> = { on: [], off: [] };
      const p99: Record<Mode, number[]> = { on: [], off: [] };
      const p95: Record<Mode, number[]> = { on: [], off: [] };
      for (const m of ['on', 'off'] as Mode[]) await closedLoop(connections, 1, () => op(m)); // warm-up, unmeasured
      for (let r = 0; r < d.rounds; r++) {
        for (const m of order(r)) {
          const res = await closedLoop(connections, d.seconds, () => op(m));
          if (res.errors) throw new Error(`audit cost ${name} (AUDIT=${m}): ${res.errors} errors`);
          rps[m].push(res.rps);
          p95[m].push(percentile(res.lat, 95));
          p99[m].push(percentile(res.lat, 99));
        }
      }
      rows.push(row(`${name}: req/s`, rps.on, rps.off, target));
      latency[name] = { on: { p95: r1(median(p95.on)), p99: r1(median(p99.on)) }, off: { p95: r1(median(p95.off)), p99: r1(median(p99.off)) } };
    };

    process.stderr.write('bench: audit cost, read by id\n');
    await measure('read by id, 16 conn', 16, (m) => httpCall(d.agent, base(m), 'GET', `/Patient/${pick(data[m]!.patients)}`, undefined, headers[m]), 0.85);
    process.stderr.write('bench: audit cost, search\n');
    await measure(
      'search (Observation?patient=&code=, Observation?patient=, Patient?_id=), 8 conn',
      8,
      (m) => {
        const k = Math.floor(Math.random() * 3);
        const [p, code] = pick(data[m]!.pairs);
        const path = k === 0 ? `/Observation?patient=${p}&code=${encodeURIComponent(code)}` : k === 1 ? `/Observation?patient=${p}&_count=20` : `/Patient?_id=${pick(data[m]!.patients)}`;
        return httpCall(d.agent, base(m), 'GET', path, undefined, headers[m]);
      },
      0.85,
    );
    process.stderr.write('bench: audit cost, CRUD cycle\n');
    await measure('CRUD cycle (create, read, update, delete Observation), 8 conn', 8, async (m) => {
      const body = { resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] }, subject: { reference: `Patient/${pick(data[m]!.patients)}` }, valueQuantity: { value: 70, unit: '/min' } };
      const t0 = Date.now();
      const c = await httpCall(d.agent, base(m), 'POST', '/Observation', body, headers[m]);
      if (c.status !== 201) return c;
      const id = (JSON.parse(c.body) as { id: string }).id;
      const rd = await httpCall(d.agent, base(m), 'GET', `/Observation/${id}`, undefined, headers[m]);
      const up = await httpCall(d.agent, base(m), 'PUT', `/Observation/${id}`, { ...body, id, status: 'amended' }, { 'If-Match': 'W/"1"', ...headers[m] });
      const dl = await httpCall(d.agent, base(m), 'DELETE', `/Observation/${id}`, undefined, headers[m]);
      const bad = [rd, up, dl].find((x) => x.status >= 400);
      // One "request" of the loop is the four calls; req/s below is multiplied back to calls.
      return { status: bad?.status ?? 200, ms: Date.now() - t0 };
    });
    // The CRUD loop counts cycles; report calls per second (4 per cycle).
    const crud = rows[rows.length - 1];
    crud.on = r1(crud.on * 4);
    crud.off = r1(crud.off * 4);
  } finally {
    for (const c of children) await d.stop(c);
    for (const db of Object.values(dbs)) await db?.drop();
  }
  return { rows, latency };
}

/** Ids and (patient, code) pairs of the loaded data, read through the API. */
async function sample(agent: Agent, base: URL, headers: Record<string, string>): Promise<{ patients: string[]; observations: string[]; pairs: [string, string][] }> {
  const get = async (path: string) => {
    const r = await httpCall(agent, base, 'GET', path, undefined, headers);
    if (r.status !== 200) throw new Error(`audit cost sample ${path}: ${r.status}`);
    return (JSON.parse(r.body) as { entry?: { resource: Record<string, unknown> }[] }).entry?.map((e) => e.resource) ?? [];
  };
  const patients = (await get('/Patient?_count=500&_elements=id')).map((p) => String(p.id));
  const obs = await get('/Observation?_count=500&_elements=id,subject,code');
  const pairs: [string, string][] = [];
  for (const o of obs) {
    const subject = (o.subject as { reference?: string } | undefined)?.reference?.replace(/^.*Patient\//, '');
    const coding = (o.code as { coding?: { system?: string; code?: string }[] } | undefined)?.coding?.[0];
    if (subject && coding?.code) pairs.push([subject, `${coding.system ?? ''}|${coding.code}`]);
  }
  if (!patients.length || !pairs.length) throw new Error('audit cost: the loaded data has no patients or observations');
  return { patients, observations: obs.map((o) => String(o.id)), pairs };
}
