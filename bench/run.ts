// `npm run bench`: measured throughput and latency of Vesta against ceilings taken in the same run
// on the same machine. Prints a table and writes bench/results/<date>.json. Not a test: no thresholds.
//   BENCH_ADMIN_URL  PostgreSQL to create a throw-away database in (default postgres://postgres@127.0.0.1:5432/postgres)
//   BENCH_SECONDS    seconds per round (default 5); BENCH_ROUNDS rounds per workload (default 3)
//   BENCH_SEARCH_RESOURCES  resources loaded (multiplied Synthea) for the search mix (default 100000; 0 skips)
//   BENCH_VALIDATION  0 skips the in-process validation throughput (bench/validation.ts); default on
//   BENCH_ONLY       comma-separated phases to run, of validation, ingest, cold, stall, token, ledger, audit, registry, read, crud, search
//                    (default all; e.g. BENCH_ONLY=read,search with a small BENCH_SEARCH_RESOURCES for a
//                    quick look at the cost of authorization)
// Authorization: every Vesta started here has AUTH on with a key ring generated for the run (AUTH_KEYS)
// and BASE_URL http://127.0.0.1:<port>; every request to it (seed, read, CRUD, search, and the ingest
// through `vesta load`'s code) carries a system/*.cruds token signed with that ring. The bare
// Express+pg ceiling needs none. A second Vesta with AUTH=off on the same database runs beside it: read
// by id and the search mix alternate rounds over Vesta (AUTH=on), Vesta (AUTH=off) and the ceiling
// (after an unmeasured WARM_SECONDS warm-up of each, as the AUTH=off process starts cold), and
// the cost of authorization is reported as ratios (req/s on/off for read by id, p95 off/on for each
// search; the issue's target is >= 0.9), in the table and in the results JSON (authCost). The search
// mix also times a patient/Observation.rs token (with a patient claim) against the system token.
//   BENCH_TOKEN_REQUESTS  token requests per round and concurrency of the token phase (default 2000;
//                    bench/token.ts: Backend Services tokens/s against in-process ES256 signing)
//   BENCH_WEB_CONCURRENCY  WEB_CONCURRENCY of every Vesta started (default 1; `auto` one process per core)
//   BENCH_CPU_PROF   a folder: every Vesta started writes a V8 CPU profile there when it stops
//                    (vesta-<port>-<n>.cpuprofile; summarise with dist/bench/profile-summary.js)
//   BENCH_PORT_OFFSET  added to every port the bench's servers listen on (default 0: 18301-18321)
//   BENCH_CRUD_CONNECTIONS  connections of the CRUD cycle (default 16, as issue 18 measures it)
//   BENCH_MEMORY_RESOURCES  resources of the memory phase (default 1000000; 0 skips): one ingest of the
//                    generator's multiplied Synthea at BENCH_MEMORY_CONCURRENCY (default 4) into a fresh
//                    database, the server's RSS sampled every second (start, peak, end; bench/memory.ts)
//   BENCH_REGISTRY_IMMUNIZATIONS  Immunizations per direction of the registry phase, split over the rounds (default
//                    2000; bench/registry-sync.ts: pushed/s and pulled/s between two Vestas against sequential PUTs)
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { Agent } from 'node:http';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { findPackageRoot } from '../src/fhir/package-root.js';
import { closedLoop, cpuSnapshot, cpuSpent, httpCall, median, percentile } from './load.js';
import { generateKeyRing } from '../src/crypto/key-ring.js';
import { generateSigningRing, signAccessToken } from '../src/auth/signing-keys.js';
import { loadConfig } from '../src/config/config.js';
import { createLogger } from '../src/log/logger.js';
import { phiIndexModeOf } from '../src/search/blind.js';
import { buildCodec } from '../src/server.js';
import { bareLoad, freshLoadQueries, resourceCounts, syntheaFiles, verifyCounts, vestaLoad, type FreshQuery, type IngestRun } from './ingest.js';
import { searchMix, type MixResult, type PatientScopeResult } from './search-mix.js';
import { phiCost } from './phi-cost.js';
import { auditCost, type CostRow } from './audit-cost.js';
import type { ValidationBench } from './validation.js';
import { stallProbe, type StallResult } from './stall.js';
import { tokenBench, type TokenResult } from './token.js';
import { ledgerBench, type LedgerBenchResult } from './ledger.js';
import { registryBench, type RegistryBenchResult } from './registry-sync.js';
import { bundleDir, FIXTURE_SYNTHEA } from './generate-data.js';
import { memoryIngest, type MemoryResult } from './memory.js';

const root = findPackageRoot();
const ADMIN = process.env.BENCH_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SEED = 2000;
/** Unmeasured warm-up per server before the alternating rounds of read by id and of each search. */
const WARM_SECONDS = 1;
/** PHI_ENCRYPTION for the Vesta under test (BENCH_PHI=on|off; unset: both, see bench/phi-cost.ts). */
const PHI = process.env.BENCH_PHI === 'off' ? 'off' : 'on';
const KEYS = JSON.stringify(generateKeyRing());
/** The token-signing key ring of every Vesta of the run (AUTH_KEYS). */
const SIGNING_RING = await generateSigningRing();
/** The audit checkpoint-signing ring of every Vesta of the run (AUDIT_KEYS); checkpoints in a temporary folder. */
const AUDIT_RING = await generateSigningRing();
/** AUDIT for the Vesta under test (BENCH_AUDIT=on|off; on by default, bench/audit-cost.ts compares both). */
const AUDIT = process.env.BENCH_AUDIT === 'off' ? 'off' : 'on';
/** WEB_CONCURRENCY of every Vesta the run starts (BENCH_WEB_CONCURRENCY, default 1; `auto` = one process per core). */
const WEB_CONCURRENCY = process.env.BENCH_WEB_CONCURRENCY?.trim() || '1';
const SYSTEM_SCOPE = 'system/*.cruds';
const PHASES = ['validation', 'ingest', 'memory', 'cold', 'stall', 'token', 'ledger', 'audit', 'registry', 'read', 'crud', 'search'];
const ONLY = process.env.BENCH_ONLY?.trim() ? new Set(process.env.BENCH_ONLY.split(',').map((x) => x.trim()).filter(Boolean)) : undefined;
for (const p of ONLY ?? []) if (!PHASES.includes(p)) throw new Error(`BENCH_ONLY: unknown phase ${p} (phases: ${PHASES.join(', ')})`);
const phase = (p: string) => !ONLY || ONLY.has(p);
// The repository's Synthea fixtures unless BENCH_SYNTHEA names a larger set (flat, or bundles/ + manifest.json).
const SYNTHEA = process.env.BENCH_SYNTHEA ?? FIXTURE_SYNTHEA;
const ops = ['create', 'read', 'update', 'delete'];
/** Resources loaded for the search mix (0 skips it). */
const SEARCH_RESOURCES = Number(process.env.BENCH_SEARCH_RESOURCES ?? 100000);
const TOKEN_REQUESTS = Number(process.env.BENCH_TOKEN_REQUESTS ?? 2000);
/** Added to every port the bench listens on (BENCH_PORT_OFFSET), so two benches can share a machine. */
const PORT_OFFSET = Number(process.env.BENCH_PORT_OFFSET ?? 0);
const CRUD_CONNECTIONS = Number(process.env.BENCH_CRUD_CONNECTIONS ?? 16);
const MEMORY_RESOURCES = Number(process.env.BENCH_MEMORY_RESOURCES ?? 1_000_000);
const MEMORY_CONCURRENCY = Number(process.env.BENCH_MEMORY_CONCURRENCY ?? 4);
const REGISTRY_IMMUNIZATIONS = Number(process.env.BENCH_REGISTRY_IMMUNIZATIONS ?? 2000);

/** Runs bench/validation.js in its own process and returns its figures. */
function validationInChild(rounds: number): Promise<ValidationBench> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(root, 'dist', 'bench', 'validation.js'), String(rounds)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.once('error', reject);
    child.once('exit', (code) => {
      if (code !== 0) reject(new Error(`validation bench failed (exit ${code})`));
      else resolve(JSON.parse(out) as ValidationBench);
    });
  });
}

async function admin(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: ADMIN });
  c.on('error', () => undefined);
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

async function waitReady(url: string, timeoutMs: number): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    try {
      const r = await fetch(url);
      if (r.ok) return Date.now() - t0;
    } catch {
      /* starting */
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`not ready: ${url}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const baseUrlOf = (port: number) => `http://127.0.0.1:${port}`;

/** The environment of a Vesta of the run on `port`. */
function vestaEnv(port: number, env: Record<string, string>): Record<string, string> {
  return { PATH: process.env.PATH ?? '', PORT: String(port), HOST: '127.0.0.1', BASE_URL: baseUrlOf(port), LOG_LEVEL: 'info', NODE_ENV: 'production', PAGE_TOKEN_SECRET: 'bench-secret-bench-secret-bench-secret', PHI_ENCRYPTION: PHI, PHI_KEYS: KEYS, AUTH: 'on', AUTH_KEYS: JSON.stringify(SIGNING_RING), AUDIT, AUDIT_KEYS: JSON.stringify(AUDIT_RING), AUDIT_CHECKPOINT_DIR: mkdtempSync(join(tmpdir(), 'vesta-bench-checkpoints-')), WEB_CONCURRENCY, ...env };
}

/** AUTH on unless env says AUTH=off; BASE_URL is the token issuer and audience the server expects. */
const CPU_PROF = process.env.BENCH_CPU_PROF?.trim() || undefined;
let profiles = 0;
function startVesta(port: number, env: Record<string, string>): { child: ChildProcess; started: number; warm: Promise<number | undefined> } {
  const started = Date.now();
  if (CPU_PROF) mkdirSync(CPU_PROF, { recursive: true });
  const prof = CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF}`, `--cpu-prof-name=vesta-${port}-${++profiles}.cpuprofile`] : [];
  const child = spawn(process.execPath, [...prof, join(root, 'dist/src/main.js')], {
    env: vestaEnv(port, env),
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  // The server's log (JSON lines on stdout) is read for two events: the validators' background
  // compile finishing (`warm`: ms after the start), and a failed start (another process on the port
  // would otherwise answer the bench in its place).
  const warm = new Promise<number | undefined>((resolve) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.includes('validators compiled for every resource type')) resolve(Date.now() - started);
        if (line.includes('EADDRINUSE')) process.stderr.write(`bench: port ${port} is taken (BENCH_PORT_OFFSET moves the bench's ports)\n`);
      }
    });
    child.once('exit', () => resolve(undefined));
  });
  return { child, started, warm };
}

/** Authorization header with a token for the Vesta on `port` (valid for the whole run). */
async function bearer(port: number, scope = SYSTEM_SCOPE, patient?: string): Promise<Record<string, string>> {
  const t = await signAccessToken(SIGNING_RING, { issuer: baseUrlOf(port), audience: baseUrlOf(port), subject: 'vesta-bench', clientId: 'vesta-bench', scope, ttlSeconds: 86400, ...(patient ? { patient } : {}) });
  return { Authorization: `Bearer ${t.token}` };
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  await new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

function patient(i: number) {
  return { resourceType: 'Patient', active: true, gender: i % 2 ? 'female' : 'male', birthDate: '1970-01-01', name: [{ family: `Bench${i}`, given: ['Load'] }], identifier: [{ system: 'urn:bench', value: `p${i}` }] };
}

const round1 = (x: number) => Math.round(x * 10) / 10;

async function main(): Promise<void> {
  const dbName = `vesta_bench_${Date.now()}`;
  await admin(`create database ${dbName}`);
  const u = new URL(ADMIN);
  u.pathname = `/${dbName}`;
  const databaseUrl = u.toString();
  const results: Record<string, unknown> = {
    date: new Date().toISOString(),
    machine: { nproc: cpus().length, cpu: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 1024 ** 3), node: process.version },
    settings: { seconds: SECONDS, rounds: ROUNDS, database: 'PostgreSQL (DATABASE_URL)', phiEncryption: PHI, auth: `on (${SYSTEM_SCOPE} token); AUTH=off beside it for authCost`, phases: ONLY ? [...ONLY] : 'all', webConcurrency: WEB_CONCURRENCY },
  };
  const children: ChildProcess[] = [];
  /** A Vesta of the run, stopped with the others at the end. */
  const startTracked = (port: number, env: Record<string, string>) => {
    const v = startVesta(port, env);
    children.push(v.child);
    return v;
  };
  /** A throw-away database beside the run's, and how to drop it. */
  const scratchDatabase = async (suffix: string) => {
    const name = `${dbName}_${suffix}`;
    await admin(`create database ${name}`);
    const u = new URL(ADMIN);
    u.pathname = `/${name}`;
    return { url: u.toString(), drop: () => admin(`drop database if exists ${name} with (force)`) };
  };
  if (phase('validation') && process.env.BENCH_VALIDATION !== '0') {
    // In a child process, before any server runs: one core, nothing else competing. Not in this
    // process, so the validator's compiled schemas and the 188 MB package do not stay on the load
    // generator's heap for the later workloads.
    results.validation = await validationInChild(ROUNDS);
  }
  try {
    if (phase('ingest')) {
      // Ingest: Synthea bundles through vesta load at concurrency 1, 2, 4, each into an empty database.
      const files = syntheaFiles(bundleDir(SYNTHEA));
      const ingest: IngestRun[] = [];
      let verification: unknown;
      let freshQueries: FreshQuery[] | undefined;
      for (const conc of [1, 2, 4]) {
        process.stderr.write(`bench: ingest at concurrency ${conc}\n`);
        const name = `${dbName}_ingest${conc}`;
        await admin(`create database ${name}`);
        const iu = new URL(ADMIN);
        iu.pathname = `/${name}`;
        try {
          const v = startVesta(18304 + PORT_OFFSET, { DATABASE_URL: iu.toString(), DATABASE_POOL_MAX: '10' });
          children.push(v.child);
          await waitReady(`http://127.0.0.1:${18304 + PORT_OFFSET}/readyz`, 60000);
          // Timed once the validators of every type are compiled (a start-up cost, paid once per
          // process, reported apart): otherwise a short ingest measures mostly the compile.
          const warmMs = await v.warm;
          const vr = await vestaLoad(`http://127.0.0.1:${18304 + PORT_OFFSET}`, files, conc, await bearer(18304 + PORT_OFFSET));
          // Issue 14: the searches whose plans collapsed right after a bulk load, timed at once.
          if (conc === 4) freshQueries = await freshLoadQueries(`http://127.0.0.1:${18304 + PORT_OFFSET}`, iu.toString(), await bearer(18304 + PORT_OFFSET));
          await stop(v.child);
          if (conc === 4) verification = await verifyCounts(iu.toString(), resourceCounts(files));
          const ceilingRps = await bareLoad(iu.toString(), files, conc);
          ingest.push({ concurrency: conc, warmUpMs: warmMs ?? null, vestaRps: round1(vr.rps), ceilingRps: round1(ceilingRps), ratio: Math.round((vr.rps / ceilingRps) * 1000) / 1000, failures: vr.failures });
        } finally {
          await admin(`drop database if exists ${name} with (force)`);
        }
      }
      results.ingest = { bundles: files.length, runs: ingest, verification, freshQueries };
    }

    if (phase('memory') && MEMORY_RESOURCES > 0) {
      // Memory over a long ingest into a fresh database (issue 18): the server's RSS at start, peak, end.
      const db = await scratchDatabase('memory');
      try {
        const v = startTracked(18308 + PORT_OFFSET, { DATABASE_URL: db.url, DATABASE_POOL_MAX: '10' });
        await waitReady(`http://127.0.0.1:${18308 + PORT_OFFSET}/readyz`, 60000);
        await v.warm;
        results.memory = await memoryIngest({
          url: baseUrlOf(18308 + PORT_OFFSET),
          pid: v.child.pid!,
          syntheaDir: SYNTHEA,
          resources: MEMORY_RESOURCES,
          concurrency: MEMORY_CONCURRENCY,
          headers: await bearer(18308 + PORT_OFFSET),
          log: (m) => process.stderr.write(m),
        });
        await stop(v.child);
      } finally {
        await db.drop();
      }
    }

    if (phase('cold')) {
      // Cold start: process start to first successful GET /metadata (migrations already applied after the first).
      const cold: number[] = [];
      for (let r = 0; r < ROUNDS + 1; r++) {
        const v = startVesta(18301 + PORT_OFFSET, { DATABASE_URL: databaseUrl });
        const ms = await waitReady(`http://127.0.0.1:${18301 + PORT_OFFSET}/metadata`, 60000);
        if (r > 0) cold.push(ms); // the first start also applies migrations
        await stop(v.child);
      }
      results.coldStartMs = { median: median(cold), samples: cold };
    }

    if (phase('stall')) {
      // Event-loop stalls: the slowest /healthz answer while each hostile or large body runs (bench/stall.ts).
      const sv = startVesta(18306 + PORT_OFFSET, { DATABASE_URL: databaseUrl });
      children.push(sv.child);
      await waitReady(`http://127.0.0.1:${18306 + PORT_OFFSET}/readyz`, 60000);
      results.stall = await stallProbe(baseUrlOf(18306 + PORT_OFFSET), await bearer(18306 + PORT_OFFSET));
      await stop(sv.child);
    }

    if (phase('token')) {
      // Backend Services token issuance at [base]/auth/token against in-process ES256 signing (bench/token.ts).
      const tv = startVesta(18307 + PORT_OFFSET, { DATABASE_URL: databaseUrl, DATABASE_POOL_MAX: '10' });
      children.push(tv.child);
      await waitReady(`http://127.0.0.1:${18307 + PORT_OFFSET}/readyz`, 60000);
      results.token = await tokenBench({ baseUrl: baseUrlOf(18307 + PORT_OFFSET), databaseUrl, ring: SIGNING_RING, requests: TOKEN_REQUESTS, rounds: ROUNDS, seconds: SECONDS, log: (m) => process.stderr.write(m) });
      await stop(tv.child);
    }

    if (phase('ledger')) {
      // The audit ledger's write design: unlinked appends + sequencer against a serialized chain head (bench/ledger.ts).
      results.ledger = await ledgerBench({ databaseUrl, seconds: SECONDS, rounds: ROUNDS, log: (m) => process.stderr.write(m) });
    }

    if (phase('audit') && AUDIT === 'on') {
      // The cost of the audit ledger: AUDIT=on against AUDIT=off, alternating rounds (bench/audit-cost.ts).
      const agent = new Agent({ keepAlive: true, maxSockets: 64 });
      results.auditCost = await auditCost({
        start: startTracked,
        waitReady,
        bearer: (port) => bearer(port),
        stop,
        database: scratchDatabase,
        agent,
        files: syntheaFiles(bundleDir(SYNTHEA)),
        seconds: SECONDS,
        rounds: ROUNDS,
      });
      agent.destroy();
    }

    if (phase('registry')) {
      // Registry sync between two Vestas: Immunizations pushed/s and pulled/s against sequential PUTs (bench/registry-sync.ts).
      results.registry = await registryBench({
        start: startTracked,
        env: vestaEnv,
        waitReady,
        bearer: (port) => bearer(port),
        stop,
        database: scratchDatabase,
        immunizations: REGISTRY_IMMUNIZATIONS,
        rounds: ROUNDS,
        log: (m) => process.stderr.write(m),
      });
    }

    if (phase('read') || phase('crud') || phase('search')) {
      const vesta = startVesta(18302 + PORT_OFFSET, { DATABASE_URL: databaseUrl, DATABASE_POOL_MAX: '10' });
      children.push(vesta.child);
      await waitReady(`http://127.0.0.1:${18302 + PORT_OFFSET}/readyz`, 60000);
      // Measured once the validators are compiled (as the ingest is): the compile of every type runs
      // in the background after start and would otherwise share the cores with the first rounds.
      const warm: Promise<number | undefined>[] = [vesta.warm];
      const vBase = new URL(baseUrlOf(18302 + PORT_OFFSET));
      const vH = await bearer(18302 + PORT_OFFSET);
      const agent = new Agent({ keepAlive: true, maxSockets: 64 });
      // The cost of authorization: the same server with AUTH=off on the same database (started after
      // the first, which applied the migrations), measured in the same rounds; sent no token.
      let offBase: URL | undefined;
      let offPid: number | undefined;
      if (phase('read') || phase('search')) {
        const off = startVesta(18305 + PORT_OFFSET, { DATABASE_URL: databaseUrl, DATABASE_POOL_MAX: '10', AUTH: 'off' });
        children.push(off.child);
        await waitReady(`http://127.0.0.1:${18305 + PORT_OFFSET}/readyz`, 60000);
        warm.push(off.warm);
        offBase = new URL(baseUrlOf(18305 + PORT_OFFSET));
        offPid = off.child.pid;
      }
      const authCost: Record<string, unknown> = {};
      results.warmUpMs = await Promise.all(warm);

      // Seed
      const ids: string[] = [];
      const seedStart = Date.now();
      await Promise.all(
        Array.from({ length: 8 }, async (_, w) => {
          for (let i = w; i < SEED; i += 8) {
            const r = await httpCall(agent, vBase, 'POST', '/Patient', patient(i), { Prefer: 'return=minimal', ...vH });
            if (r.status !== 201) throw new Error(`seed failed: ${r.status} ${r.body.slice(0, 300)}`);
            ids.push('');
          }
        }),
      );
      results.seed = { patients: SEED, seconds: (Date.now() - seedStart) / 1000 };

      if (phase('read')) {
        const idRows = await (async () => {
          const c = new pg.Client({ connectionString: databaseUrl });
          await c.connect();
          try {
            return (await c.query<{ id: string }>("select id from resource where resource_type = 'Patient'")).rows.map((r) => r.id);
          } finally {
            await c.end();
          }
        })();

        const ceiling = fork(join(root, 'dist/bench/ceiling-server.js'), [], { env: { PATH: process.env.PATH ?? '', DATABASE_URL: databaseUrl, PORT: String(18303 + PORT_OFFSET), DATABASE_POOL_MAX: '10' }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
        children.push(ceiling);
        await new Promise<void>((resolve) => ceiling.once('message', () => resolve()));
        const cBase = new URL(`http://127.0.0.1:${18303 + PORT_OFFSET}`);

        // Read by id, 16 connections, alternating Vesta (AUTH=on), Vesta (AUTH=off) and ceiling rounds so noise hits all.
        // CPU per request (ms): the server process's and PostgreSQL's on this database, from /proc; less
        // moved by other load on the machine than requests per second.
        type ReadFig = { rps: number; p50: number; p99: number; nodeCpuMs?: number; pgCpuMs: number };
        const readV: ReadFig[] = [];
        const readOff: ReadFig[] = [];
        const readC: ReadFig[] = [];
        const pick = () => idRows[Math.floor(Math.random() * idRows.length)];
        const legs: [URL, Record<string, string>, ReadFig[], number | undefined][] = [[vBase, vH, readV, vesta.child.pid], ...(offBase ? [[offBase, {}, readOff, offPid] as [URL, Record<string, string>, ReadFig[], number | undefined]] : []), [cBase, {}, readC, ceiling.pid]];
        // Unmeasured warm-up of each server (JIT, pools): the AUTH=off Vesta has served nothing yet.
        for (const [base, headers] of legs) await closedLoop(16, WARM_SECONDS, () => httpCall(agent, base, 'GET', `/Patient/${pick()}`, undefined, headers));
        for (let r = 0; r < ROUNDS; r++) {
          for (const [base, headers, out, pid] of legs) {
            const c0 = await cpuSnapshot(pid, databaseUrl);
            const res = await closedLoop(16, SECONDS, () => httpCall(agent, base, 'GET', `/Patient/${pick()}`, undefined, headers));
            const spent = cpuSpent(c0, await cpuSnapshot(pid, databaseUrl));
            if (res.errors) throw new Error(`read errors: ${res.errors} (${base.port})`);
            const n = res.lat.length;
            out.push({ rps: res.rps, p50: percentile(res.lat, 50), p99: percentile(res.lat, 99), ...(spent.nodeMs !== undefined ? { nodeCpuMs: spent.nodeMs / n } : {}), pgCpuMs: spent.pgMs / n });
          }
        }
        const r3 = (x: number) => Math.round(x * 1000) / 1000;
        const summarise = (xs: ReadFig[]) => ({
          rps: round1(median(xs.map((x) => x.rps))),
          p50: round1(median(xs.map((x) => x.p50))),
          p99: round1(median(xs.map((x) => x.p99))),
          cpuMsPerRequest: { server: xs.every((x) => x.nodeCpuMs !== undefined) ? r3(median(xs.map((x) => x.nodeCpuMs!))) : null, postgres: r3(median(xs.map((x) => x.pgCpuMs))) },
        });
        const rv = summarise(readV);
        const rc = summarise(readC);
        results.readById = { connections: 16, vesta: rv, ceiling: rc, ratio: Math.round((rv.rps / rc.rps) * 1000) / 1000 };
        if (readOff.length) {
          const ro = summarise(readOff);
          // Ratio of the medians, and the median of the per-round ratios (on and off adjacent in time).
          authCost.readById = { on: rv, off: ro, ratio: Math.round((rv.rps / ro.rps) * 1000) / 1000, perRoundRatios: readV.map((x, i) => Math.round((x.rps / readOff[i].rps) * 1000) / 1000) };
        }
      }

      if (phase('crud')) {
        // CRUD cycle over several types, CRUD_CONNECTIONS connections: create, read, update, delete.
        const types = [
          { type: 'Patient', make: (i: number) => patient(i) },
          { type: 'Observation', make: (i: number) => ({ resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] }, valueQuantity: { value: 60 + (i % 40), unit: '/min' } }) },
          { type: 'Basic', make: (i: number) => ({ resourceType: 'Basic', code: { text: `b${i}` } }) },
        ];
        const crudRounds: { rps: number; perOp: Record<string, number[]>; nodeCpuMs?: number; pgCpuMs: number }[] = [];
        for (let r = 0; r < ROUNDS; r++) {
          const perOp: Record<string, number[]> = { create: [], read: [], update: [], delete: [] };
          let calls = 0;
          let errors = 0;
          const c0 = await cpuSnapshot(vesta.child.pid, databaseUrl);
          const t0 = Date.now();
          const until = t0 + SECONDS * 1000;
          await Promise.all(
            Array.from({ length: CRUD_CONNECTIONS }, async (_, w) => {
              let i = 0;
              while (Date.now() < until) {
                const t = types[(w + i++) % types.length];
                const c = await httpCall(agent, vBase, 'POST', `/${t.type}`, t.make(i), vH);
                if (c.status !== 201) throw new Error(`CRUD create: ${c.status} ${c.body.slice(0, 300)}`);
                const id = (JSON.parse(c.body) as { id: string }).id;
                const rd = await httpCall(agent, vBase, 'GET', `/${t.type}/${id}`, undefined, vH);
                const up = await httpCall(agent, vBase, 'PUT', `/${t.type}/${id}`, { ...t.make(i + 1), id }, { 'If-Match': 'W/"1"', ...vH });
                const dl = await httpCall(agent, vBase, 'DELETE', `/${t.type}/${id}`, undefined, vH);
                for (const [k, x] of [['create', c], ['read', rd], ['update', up], ['delete', dl]] as const) {
                  perOp[k].push(x.ms);
                  if (x.status >= 400) errors++;
                }
                calls += 4;
              }
            }),
          );
          if (errors) throw new Error(`CRUD errors: ${errors}`);
          for (const k of Object.keys(perOp)) perOp[k].sort((a, b) => a - b);
          const rps = calls / ((Date.now() - t0) / 1000);
          const spent = cpuSpent(c0, await cpuSnapshot(vesta.child.pid, databaseUrl));
          crudRounds.push({ rps, perOp, ...(spent.nodeMs !== undefined ? { nodeCpuMs: spent.nodeMs / calls } : {}), pgCpuMs: spent.pgMs / calls });
        }

        results.crudCycle = {
          connections: CRUD_CONNECTIONS,
          types: types.map((t) => t.type),
          rps: round1(median(crudRounds.map((c) => c.rps))),
          p50: Object.fromEntries(ops.map((o) => [o, round1(median(crudRounds.map((c) => percentile(c.perOp[o], 50))))])),
          p99: Object.fromEntries(ops.map((o) => [o, round1(median(crudRounds.map((c) => percentile(c.perOp[o], 99))))])),
          // CPU per request (ms, median of the rounds): the server process's and PostgreSQL's on this database.
          cpuMsPerRequest: {
            server: crudRounds.every((c) => c.nodeCpuMs !== undefined) ? Math.round(median(crudRounds.map((c) => c.nodeCpuMs!)) * 1000) / 1000 : null,
            postgres: Math.round(median(crudRounds.map((c) => c.pgCpuMs)) * 1000) / 1000,
          },
        };
      }

      if (phase('search') && SEARCH_RESOURCES > 0) {
        const mix = await searchMix({
          vestaUrl: vBase.toString().replace(/\/$/, ''),
          databaseUrl,
          syntheaDir: SYNTHEA,
          resources: SEARCH_RESOURCES,
          seconds: Math.max(2, Math.round(SECONDS / 2)),
          warmSeconds: WARM_SECONDS,
          rounds: ROUNDS,
          agent,
          // The PHI index mode the server under test derives from the same settings, by the same code.
          phi: phiIndexModeOf(await buildCodec(loadConfig({ PHI_ENCRYPTION: PHI, PHI_KEYS: KEYS, DATABASE_URL: databaseUrl, AUTH: 'off', AUDIT: 'off' }), createLogger('silent'))),
          log: (m) => process.stderr.write(m),
          headers: vH,
          ...(offBase ? { authOffUrl: offBase.toString().replace(/\/$/, '') } : {}),
          patientHeaders: (id) => bearer(18302 + PORT_OFFSET, 'patient/Observation.rs', id),
        });
        results.searchMix = mix;
        authCost.search = mix.queries.filter((q) => q.authOff).map((q) => ({ query: q.query, onP95: q.vesta.p95, offP95: q.authOff!.p95, ratio: q.authRatio }));
        if (mix.patientScope) authCost.patientScope = mix.patientScope;
      }
      if (Object.keys(authCost).length) results.authCost = { target: 0.9, readRatio: 'req/s AUTH=on over AUTH=off', searchRatio: 'p95 AUTH=off over AUTH=on', ...authCost };
      agent.destroy();
    }
  } finally {
    for (const c of children) await stop(c);
    await admin(`drop database if exists ${dbName} with (force)`);
  }

  type Cpu = { cpuMsPerRequest: { server: number | null; postgres: number } };
  type ReadById = { vesta: { rps: number; p50: number; p99: number } & Cpu; ceiling: { rps: number; p50: number; p99: number } & Cpu; ratio: number };
  const r = results as { readById?: ReadById; crudCycle?: { rps: number; p50: Record<string, number>; p99: Record<string, number> } & Cpu; coldStartMs?: { median: number } };
  const cpu = (c: Cpu) => `${c.cpuMsPerRequest.server ?? '?'} / ${c.cpuMsPerRequest.postgres}`;
  const ingestRes = results.ingest as { runs: IngestRun[]; verification: { countsMatch: boolean; urnLeft: number; references: number; unresolved: number }; freshQueries?: FreshQuery[] } | undefined;
  const lines = [
    `Vesta bench ${results.date as string}  (PHI_ENCRYPTION=${PHI}; AUTH=on, ${SYSTEM_SCOPE} token; ${cpus().length} cores, ${Math.round(totalmem() / 1024 ** 3)} GiB, ${process.version}; ${ROUNDS} rounds x ${SECONDS}s, medians${ONLY ? `; phases ${[...ONLY].join(',')}` : ''})`,
    '',
    '| workload | Vesta | ceiling | ratio |',
    '|---|---|---|---|',
    ...(r.readById
      ? [
          `| read by id, 16 conn: req/s | ${r.readById.vesta.rps} | ${r.readById.ceiling.rps} (bare Express+pg) | ${r.readById.ratio} |`,
          `| read by id: p50 / p99 ms | ${r.readById.vesta.p50} / ${r.readById.vesta.p99} | ${r.readById.ceiling.p50} / ${r.readById.ceiling.p99} | |`,
          `| read by id: CPU ms per request, server / PostgreSQL | ${cpu(r.readById.vesta)} | ${cpu(r.readById.ceiling)} | |`,
        ]
      : []),
    ...(r.crudCycle
      ? [
          `| CRUD cycle, ${CRUD_CONNECTIONS} conn: req/s | ${r.crudCycle.rps} | | |`,
          `| CRUD p99 ms (create/read/update/delete) | ${ops.map((o) => r.crudCycle!.p99[o]).join(' / ')} | | |`,
          `| CRUD: CPU ms per request, server / PostgreSQL | ${cpu(r.crudCycle)} | | |`,
        ]
      : []),
    ...(r.coldStartMs ? [`| cold start to first GET /metadata, ms | ${r.coldStartMs.median} | | |`] : []),
    ...(ingestRes
      ? [
          ...ingestRes.runs.map((x) => `| Synthea ingest, concurrency ${x.concurrency}: resources/s | ${x.vestaRps} | ${x.ceilingRps} (bare pg loader) | ${x.ratio} |`),
          `| Synthea ingest check (concurrency 4): counts equal manifest / urn:uuid left / references unresolved | ${ingestRes.verification.countsMatch} / ${ingestRes.verification.urnLeft} / ${ingestRes.verification.unresolved} of ${ingestRes.verification.references} | | |`,
        ]
      : []),
  ];
  const mem = results.memory as MemoryResult | undefined;
  if (mem) {
    lines.push(
      '',
      `Memory: ${mem.resources} resources (${mem.bundles} generated Bundles) ingested at concurrency ${mem.concurrency} in ${mem.seconds} s (${mem.rps} resources/s, ${mem.failures} Bundles failed); server RSS, MiB:`,
      '',
      '| start (warm) | peak (sampled / VmHWM) | end | along the load |',
      '|---|---|---|---|',
      `| ${mem.rssMiB.start} | ${mem.rssMiB.peak} / ${mem.rssMiB.hwm ?? '?'} | ${mem.rssMiB.end} | ${mem.rssMiB.along.map((a) => `${a.at}: ${a.mib}`).join(', ')} |`,
      ...(mem.failureReasons.length ? ['', `Failed Bundles: ${mem.failureReasons.join(' / ')}`] : []),
    );
  }
  if (ingestRes?.freshQueries) {
    lines.push(
      '',
      `Right after the ingest at concurrency 4 into a fresh database (${SYNTHEA}; no autovacuum yet), each search once:`,
      '',
      '| query | status | ms | total |',
      '|---|---|---|---|',
      ...ingestRes.freshQueries.map((q) => `| ${q.query} | ${q.status} | ${q.ms} | ${q.total ?? ''} |`),
    );
  }
  const val = results.validation as ValidationBench | undefined;
  if (val) {
    const row = (name: string, f: ValidationBench['examples']) =>
      `| ${name} (${f.resources} resources, ${f.megabytes} MB) | ${f.schemaOnly.resourcesPerSecond} (${f.schemaOnly.megabytesPerSecond} MB/s) | ${f.full.resourcesPerSecond} (${f.full.megabytesPerSecond} MB/s) | ${Math.round((f.full.resourcesPerSecond / f.schemaOnly.resourcesPerSecond) * 1000) / 1000} | ${f.jsonParse.megabytesPerSecond} MB/s | ${Math.round((f.full.megabytesPerSecond / f.jsonParse.megabytesPerSecond) * 1000) / 1000} |`;
    lines.push(
      '',
      `Validation throughput, one core, in a child process, medians of ${val.rounds} rounds (resources/s); first validation after start ${val.firstValidationMs} ms:`,
      '',
      '| set | schema only (ajv) | schema + invariants + bindings | ratio full/schema | JSON.parse of the same bytes (machine reference) | ratio full/JSON.parse (MB/s) |',
      '|---|---|---|---|---|---|',
      row('official examples, instances', val.examples),
      row('official examples, whole package', val.wholePackage),
      '',
      `Hostile primitives: the slowest judgement of a ${val.hostile.length.toLocaleString('en')}-character value (7 backtracking-prone shapes, best of 3 tries) is ${val.hostile.worstMs} ms (${val.hostile.worstType}); per type: ${Object.entries(val.hostile.worstMsByType).map(([k, ms]) => `${k} ${ms}`).join(', ')}.`,
    );
  }
  const stall = results.stall as StallResult | undefined;
  if (stall) {
    lines.push(
      '',
      `Worst event-loop stall: /healthz waited ${stall.worstMs} ms (${stall.worstBody}); per body: ${stall.cases.map((c) => `${c.body} (${(c.bytes / 1e6).toFixed(1)} MB) ${c.status} in ${c.requestMs} ms, /healthz ${c.healthzMs} ms`).join('; ')}.`,
    );
  }
  const ac = results.auditCost as { rows: CostRow[]; latency: Record<string, { on: { p95: number; p99: number }; off: { p95: number; p99: number } }> } | undefined;
  if (ac) {
    lines.push(
      '',
      `Cost of the audit ledger: AUDIT=on against AUDIT=off, each on its own database loaded with the same bundles (${SYNTHEA}), alternating rounds, medians of ${ROUNDS}:`,
      '',
      '| workload | audit on | audit off | ratio on/off | target | per-round ratios |',
      '|---|---|---|---|---|---|',
      ...ac.rows.map((r) => `| ${r.workload} | ${r.on} | ${r.off} | ${r.ratio} | ${r.target ? `>= ${r.target}${r.ratio >= r.target ? '' : ' (missed)'}` : ''} | ${r.perRoundRatios.join(', ')} |`),
      ...Object.entries(ac.latency).map(([k, v]) => `| ${k}: p95 / p99 ms | ${v.on.p95} / ${v.on.p99} | ${v.off.p95} / ${v.off.p99} | | | |`),
    );
  }
  const tok = results.token as TokenResult | undefined;
  if (tok) {
    lines.push(
      '',
      `Backend Services tokens (client_credentials, private_key_jwt; ${tok.requestsPerRound} requests per round and concurrency, medians of ${tok.rounds} rounds; assertions ${tok.assertions}), against the ceiling of ${tok.ceiling.what} (${tok.ceiling.claimsBytes}-byte claims, ${tok.ceiling.tokenBytes}-byte token): ${tok.ceiling.tokensPerSecond} tokens/s:`,
      '',
      '| concurrency | requests (all rounds) | tokens/s | p50 / p95 / p99 ms | non-200 | ratio to ceiling |',
      '|---|---|---|---|---|---|',
      ...tok.runs.map((x) => `| ${x.concurrency} | ${tok.requestsPerRound * tok.rounds} | ${x.tokensPerSecond} | ${x.p50} / ${x.p95} / ${x.p99} | ${x.non200} | ${x.ratio} |`),
      ...(tok.failures.length ? ['', `Non-200 answers (first ${tok.failures.length}): ${tok.failures.join(' | ')}`] : []),
    );
  }
  const led = results.ledger as LedgerBenchResult | undefined;
  if (led) {
    lines.push(
      '',
      `Audit ledger appends (one ${led.eventBytes}-byte AuditEvent per transaction; medians of ${led.rounds} rounds of ${led.seconds} s, designs alternating; "other work" is pg_sleep inside the same transaction, a stand-in for the write it audits):`,
      '',
      '| design | concurrency | other work ms | tx/s | p50 / p99 ms | unlinked at stop / ms to link them | INSERTs per record |',
      '|---|---|---|---|---|---|---|',
      ...led.runs.map((x) => `| ${x.design} | ${x.concurrency} | ${x.workMs} | ${x.txPerSecond} | ${x.p50} / ${x.p99} | ${x.backlog !== undefined ? `${x.backlog} / ${x.catchUpMs}` : ''} | ${x.insertsPerRecord ?? ''} |`),
    );
  }
  const reg = results.registry as RegistryBenchResult | undefined;
  if (reg) {
    const per = (xs: { perSecond: number }[]) => xs.map((x) => x.perSecond).join(', ');
    lines.push(
      '',
      `Registry sync between two Vestas, each on its own database (${reg.immunizationsPerRound} Immunizations per round and direction, ${reg.patientsPerRound} Patients x ${reg.perPatient}; sync concurrency ${reg.concurrency}; medians of ${reg.rounds} rounds after a ${reg.warmUpImmunizations}-Immunization warm-up each way), against the registry-side ceiling: ${reg.ceiling.what}; and ${reg.ceilingConcurrent.what}:`,
      '',
      `| workload | Immunizations/s | ratio to ceiling (1 conn) | ratio to ceiling (${reg.concurrency} conn) | per round | registry requests per Immunization | share of the run with a registry request in flight | CPU ms per Immunization: registry server / sync |`,
      '|---|---|---|---|---|---|---|---|',
      `| push (pushOnce, lagMs 0; counted by sent) | ${reg.push.perSecond} | ${reg.ratios.push} | ${reg.ratios.pushConcurrent} | ${per(reg.push.rounds)} | ${reg.push.registryCallsPerImmunization} | ${reg.push.registryShare} | ${reg.push.registryCpuMs ?? '-'} / ${reg.push.syncCpuMs ?? '-'} |`,
      `| pull (pullOnce; counted by stored) | ${reg.pull.perSecond} | ${reg.ratios.pull} | ${reg.ratios.pullConcurrent} | ${per(reg.pull.rounds)} | ${reg.pull.registryCallsPerImmunization} | ${reg.pull.registryShare} | ${reg.pull.registryCpuMs ?? '-'} / ${reg.pull.syncCpuMs ?? '-'} |`,
      `| ceiling: conditional-update PUTs to the registry, 1 connection | ${reg.ceiling.perSecond} | 1 | | ${per(reg.ceiling.rounds)} | 1 | | ${reg.ceiling.registryCpuMs ?? '-'} / |`,
      `| ceiling: the same, ${reg.concurrency} connections | ${reg.ceilingConcurrent.perSecond} | | 1 | ${per(reg.ceilingConcurrent.rounds)} | 1 | | ${reg.ceilingConcurrent.registryCpuMs ?? '-'} / |`,
      '',
      reg.failures.length ? `REGISTRY CHECK FAILED: ${reg.failures.join(' | ')}` : 'Checks: after every push the registry held exactly `sent` more pushed Immunizations (all seeded), after every pull Vesta held exactly `stored` more pulled ones (all seeded), and every ceiling PUT created one.',
    );
  }
  const mix = results.searchMix as { resources: number; loadRps: number; loadFailures?: string[]; queries: MixResult[]; seqScans: Record<string, string[]> } | undefined;
  if (mix) {
    lines.push(
      '',
      `Search mix over ${mix.resources} resources sent (plus the seed; loaded at ${mix.loadRps} resources/s, 4 connections${mix.loadFailures?.length ? `; ${mix.loadFailures.length} bundle(s) failed to load: ${mix.loadFailures.join(' / ')}` : ''}), 4 connections, medians of rounds (ms):`,
      '',
      '| query | Vesta p50 / p95 | hand-written SQL p50 / p95 | p95 ratio | sample total | planner seq scans | not served |',
      '|---|---|---|---|---|---|---|',
      ...mix.queries.map((q) => `| ${q.query} | ${q.vesta.p50} / ${q.vesta.p95} | ${q.ceiling.p50} / ${q.ceiling.p95} | ${q.ratio} | ${q.sampleTotal ?? ''} | ${(mix.seqScans[q.query] ?? []).join(', ') || 'none'} | ${q.notServed.join('; ')} |`),
    );
  }
  const auth = results.authCost as { readById?: { on: ReadById['vesta']; off: ReadById['vesta']; ratio: number }; search?: { query: string; onP95: number; offP95: number; ratio: number }[]; patientScope?: PatientScopeResult } | undefined;
  if (auth) {
    lines.push(
      '',
      `Cost of authorization: Vesta AUTH=on (${SYSTEM_SCOPE} bearer token) and AUTH=off on the same database, alternating rounds in this run (target ratio >= 0.9):`,
      '',
      '| workload | AUTH=on | AUTH=off | ratio |',
      '|---|---|---|---|',
      ...(auth.readById
        ? [
            `| read by id, 16 conn: req/s (ratio on/off) | ${auth.readById.on.rps} | ${auth.readById.off.rps} | ${auth.readById.ratio} |`,
            `| read by id: p50 / p99 ms | ${auth.readById.on.p50} / ${auth.readById.on.p99} | ${auth.readById.off.p50} / ${auth.readById.off.p99} | |`,
          ]
        : []),
      ...(auth.search ?? []).map((q) => `| search ${q.query}: p95 ms (ratio off/on) | ${q.onP95} | ${q.offP95} | ${q.ratio} |`),
    );
    const ps = auth.patientScope;
    if (ps) {
      lines.push(
        '',
        `Patient-scoped token (${ps.scope} + patient claim), ${ps.query}: p50 / p95 ${ps.patientToken.p50} / ${ps.patientToken.p95} ms (sample total ${ps.patientToken.sampleTotal}); ${SYSTEM_SCOPE} token with &patient=<id> (same matches) ${ps.systemSamePatient.p50} / ${ps.systemSamePatient.p95} ms (sample total ${ps.systemSamePatient.sampleTotal}), p95 ratio system/patient ${ps.ratio}; without &patient (every patient's) ${ps.systemAllPatients.p50} / ${ps.systemAllPatients.p95} ms (sample total ${ps.systemAllPatients.sampleTotal}).`,
      );
    }
  }
  process.stdout.write(lines.join('\n') + '\n');
  const dir = join(root, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${(results.date as string).replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n');
  process.stdout.write(`\nwritten: ${file}\n`);
}

// Without BENCH_PHI: both modes and the cost of encryption as a ratio (bench/phi-cost.ts).
(process.env.BENCH_PHI ? main() : phiCost()).catch((e: unknown) => {
  process.stderr.write(`bench failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
