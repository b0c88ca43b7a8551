// Search mix at scale (search issue, bench issue): loads multiplied Synthea data into Vesta until at
// least BENCH_SEARCH_RESOURCES resources, then measures p50/p95 of each query of the mix through
// Vesta's HTTP API against the same query written by hand in SQL on Vesta's own schema, both in the
// same run, alternating rounds so noise hits both. Also records whether PostgreSQL's chosen plan for
// Vesta's SQL uses only index access on the large tables. Every request to Vesta carries the caller's
// headers (its system/*.cruds bearer token); given a second Vesta with AUTH=off on the same database
// (authOffUrl), each round also runs the query there, for the cost of authorization (p95 off/on); given
// patientHeaders, one more measure compares a patient-scoped token's search with the system token's.
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import type { Agent } from 'node:http';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { normaliseString, type BlindIndexer } from '../src/crypto/blind-index.js';
import type { PhiIndexMode } from '../src/search/phi-seam.js';
import { parseSearch } from '../src/search/parse.js';
import { planSearch } from '../src/search/plan.js';
import { countQuery, pageQuery } from '../src/storage/search-store.js';
import { vestaLoad } from './ingest.js';
import { closedLoop, httpCall, median, percentile } from './load.js';

export interface MixResult {
  query: string;
  vesta: { p50: number; p95: number; rps: number };
  ceiling: { p50: number; p95: number; rps: number };
  /** Vesta p95 over ceiling p95. */
  ratio: number;
  /** Matches of one sample query (first page total when reported). */
  sampleTotal: number | null;
  /** Parameters Vesta reported as not served in this mode (then the figure is not comparable). */
  notServed: string[];
  /** The same query on the Vesta with AUTH=off (same database, rounds alternating with the others). */
  authOff?: { p50: number; p95: number; rps: number };
  /** Cost of authorization: AUTH=off p95 over AUTH=on p95 (1 = free; the issue's target is >= 0.9). */
  authRatio?: number;
}

/** A patient-scoped token's search against the system token's, on the same code (one per run). */
export interface PatientScopeResult {
  query: string;
  scope: string;
  /** patient/Observation.rs with the patient claim: Observation?code=<code> (the compartment is added by Vesta). */
  patientToken: { p50: number; p95: number; rps: number; sampleTotal: number | null };
  /** system/*.cruds: Observation?code=<code>&patient=<id>, the same matches asked for explicitly. */
  systemSamePatient: { p50: number; p95: number; rps: number; sampleTotal: number | null };
  /** system/*.cruds: Observation?code=<code>, every patient's matches. */
  systemAllPatients: { p50: number; p95: number; rps: number; sampleTotal: number | null };
  /** systemSamePatient p95 over patientToken p95 (1 = the patient scope costs nothing more). */
  ratio: number;
}

interface Sample {
  family: string;
  identifier: { system: string; value: string };
  patientId: string;
  code: { system: string; code: string };
  date: string;
  /** A word of the code's display (for the full-text query, which is beyond the issue's mix). */
  word: string;
}

interface MixQuery {
  name: string;
  path: (s: Sample) => string;
  /**
   * The hand-written ceiling: $n placeholders, returns resource rows as Vesta would fetch them. With a
   * blind indexer (PHI sealed), parameters over sealed elements look up their HMACs in idx_blind, as
   * Vesta must; the ceiling does not open the JWE.
   */
  sql: (s: Sample, blind?: BlindIndexer) => { text: string; values: unknown[] };
}

const norm = (s: string) => s.normalize('NFD').replace(/\p{M}/gu, '').toLowerCase();

/**
 * The query mix of the search issue. The ceilings are the minimal correct SQL over Vesta's tables: index
 * rows exist only for live current resources, so the resource table is read only for the page. They
 * fetch the page only; Vesta also counts the matches (accurate _total is its default).
 */
export const MIX: MixQuery[] = [
  {
    name: 'Patient?name=<prefix>',
    path: (s) => `/Patient?name=${encodeURIComponent(s.family.slice(0, 4))}`,
    sql: (s, blind) =>
      blind
        ? {
            text: `select r.id, r.content, r.sealed from resource r where r.resource_type = 'Patient' and not r.deleted and r.id in (select b.resource_id from idx_blind b where b.resource_type = 'Patient' and b.param = 'name' and b.mac = decode($1, 'hex')) order by r.id limit 50`,
            values: [blind.prefix('Patient', 'name', normaliseString(s.family.slice(0, 4)))],
          }
        : {
            text: `select r.id, r.content from resource r where r.resource_type = 'Patient' and not r.deleted and r.id in (select x.resource_id from idx_string x where x.resource_type = 'Patient' and x.param = 'name' and left(x.value_norm, 100) like $1) order by r.id limit 50`,
            values: [`${norm(s.family.slice(0, 4))}%`],
          },
  },
  {
    name: 'Patient?identifier=<system>|<value>',
    path: (s) => `/Patient?identifier=${encodeURIComponent(`${s.identifier.system}|${s.identifier.value}`)}`,
    sql: (s, blind) =>
      blind
        ? {
            text: `select r.id, r.content, r.sealed from resource r where r.resource_type = 'Patient' and not r.deleted and r.id in (select b.resource_id from idx_blind b where b.resource_type = 'Patient' and b.param = 'identifier' and b.mac = decode($1, 'hex')) order by r.id limit 50`,
            values: [blind.tokenSystemCode('Patient', 'identifier', s.identifier.system, s.identifier.value)],
          }
        : {
            text: `select r.id, r.content from resource r where r.resource_type = 'Patient' and not r.deleted and r.id in (select x.resource_id from idx_token x where x.resource_type = 'Patient' and x.param = 'identifier' and x.code = $1 and x.system = $2) order by r.id limit 50`,
            values: [s.identifier.value, s.identifier.system],
          },
  },
  {
    name: 'Observation?patient=<id>&code=<system>|<code>',
    path: (s) => `/Observation?patient=${s.patientId}&code=${encodeURIComponent(`${s.code.system}|${s.code.code}`)}`,
    sql: (s) => ({
      text: `select r.id, r.content from resource r where r.resource_type = 'Observation' and not r.deleted
        and r.id in (select x.resource_id from idx_reference x where x.resource_type = 'Observation' and x.param = 'patient' and x.target_id = $1 and x.target_type = 'Patient')
        and r.id in (select t.resource_id from idx_token t where t.resource_type = 'Observation' and t.param = 'code' and t.code = $2 and t.system = $3) order by r.id limit 50`,
      values: [s.patientId, s.code.code, s.code.system],
    }),
  },
  {
    name: 'Observation?code=<code>&date=ge<date>',
    path: (s) => `/Observation?code=${encodeURIComponent(`${s.code.system}|${s.code.code}`)}&date=ge${s.date}`,
    sql: (s) => ({
      text: `select r.id, r.content from resource r where r.resource_type = 'Observation' and r.id in (
          select distinct t.resource_id from idx_token t where t.resource_type = 'Observation' and t.param = 'code' and t.code = $1 and t.system = $2
          and exists (select 1 from idx_date d where d.resource_type = 'Observation' and d.resource_id = t.resource_id and d.param = 'date' and d.high > $3) order by 1 limit 50)
        order by r.id`,
      values: [s.code.code, s.code.system, Date.parse(`${s.date}T00:00:00Z`)],
    }),
  },
  {
    name: 'Encounter?_has:Observation:encounter:code=<code>',
    path: (s) => `/Encounter?_has:Observation:encounter:code=${encodeURIComponent(`${s.code.system}|${s.code.code}`)}`,
    sql: (s) => ({
      text: `select r.id, r.content from resource r where r.resource_type = 'Encounter' and r.id in (
        select distinct h.target_id from idx_reference h join idx_token t on t.resource_type = 'Observation' and t.resource_id = h.resource_id and t.param = 'code'
        where h.resource_type = 'Observation' and h.param = 'encounter' and h.target_type = 'Encounter' and t.code = $1 and t.system = $2 order by 1 limit 50) order by r.id`,
      values: [s.code.code, s.code.system],
    }),
  },
  {
    name: 'Observation?patient=<id>&_include=Observation:patient',
    path: (s) => `/Observation?patient=${s.patientId}&_include=Observation:patient`,
    sql: (s) => ({
      text: `with page as (select r.id, r.content from resource r where r.resource_type = 'Observation' and not r.deleted
          and r.id in (select x.resource_id from idx_reference x where x.resource_type = 'Observation' and x.param = 'patient' and x.target_id = $1 and x.target_type = 'Patient') order by r.id limit 50)
        select id, content from page union all
        select p.id, p.content from resource p where p.resource_type = 'Patient' and p.id in (select x.target_id from idx_reference x where x.resource_type = 'Observation' and x.param = 'patient' and x.resource_id in (select id from page))`,
      values: [s.patientId],
    }),
  },
  {
    // Not in the search issue's mix: full text (_content), the one search that walks a GIN index.
    name: 'Observation?_content=<word of a display>',
    path: (s) => `/Observation?_content=${encodeURIComponent(s.word)}`,
    sql: (s) => ({
      text: `select r.id, r.content from resource r where r.resource_type = 'Observation' and not r.deleted
        and r.id in (select x.resource_id from idx_text x where x.resource_type = 'Observation' and x.param = '_content' and x.doc @@ websearch_to_tsquery('english', $1)) order by r.id limit 50`,
      values: [s.word],
    }),
  },
  {
    name: 'Observation?code=<code>&_summary=count',
    path: (s) => `/Observation?code=${encodeURIComponent(`${s.code.system}|${s.code.code}`)}&_summary=count`,
    sql: (s) => ({
      text: `select count(distinct t.resource_id) from idx_token t where t.resource_type = 'Observation' and t.param = 'code' and t.code = $1 and t.system = $2`,
      values: [s.code.code, s.code.system],
    }),
  },
];

/** Query values taken from the loaded data: names and identifiers from the bundles (PHI is sealed in the database), ids and codes from the database. */
async function samples(databaseUrl: string, dir: string, n: number): Promise<Sample[]> {
  const families: string[] = [];
  const identifiers: { system: string; value: string }[] = [];
  for (const f of readdirSync(dir).filter((x) => x.startsWith('b')).slice(0, 200)) {
    const b = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { entry: { resource: { resourceType: string; name?: { family?: string }[]; identifier?: { system?: string; value?: string }[] } }[] };
    for (const e of b.entry) {
      if (e.resource.resourceType !== 'Patient') continue;
      const fam = e.resource.name?.[0]?.family;
      if (fam && fam.length >= 4) families.push(fam);
      for (const i of e.resource.identifier ?? []) if (i.system && i.value) identifiers.push({ system: i.system, value: i.value });
    }
  }
  const c = new pg.Client({ connectionString: databaseUrl });
  await c.connect();
  try {
    const obs = (
      await c.query<{ content: { subject?: { reference?: string }; code?: { coding?: { system?: string; code?: string; display?: string }[] }; effectiveDateTime?: string } }>(
        `select content from resource where resource_type = 'Observation' and not deleted order by md5(id) limit $1`,
        [n],
      )
    ).rows.map((r) => r.content);
    const out: Sample[] = [];
    for (let i = 0; i < obs.length; i++) {
      const o = obs[i];
      const coding = o.code?.coding?.[0];
      const pid = o.subject?.reference?.split('/')[1];
      if (!coding?.system || !coding.code || !pid || !o.effectiveDateTime) continue;
      out.push({
        family: families[i % families.length],
        identifier: identifiers[(i * 7) % identifiers.length],
        patientId: pid,
        code: { system: coding.system, code: coding.code },
        date: o.effectiveDateTime.slice(0, 10),
        word: /[A-Za-z]{4,}/.exec(coding.display ?? '')?.[0] ?? coding.code,
      });
    }
    return out;
  } finally {
    await c.end();
  }
}

/** Node types of a JSON plan and the relations they scan. */
export function planScans(plan: Record<string, unknown>, out: { node: string; rel?: string }[] = []): { node: string; rel?: string }[] {
  out.push({ node: String(plan['Node Type']), ...(plan['Relation Name'] ? { rel: String(plan['Relation Name']) } : {}) });
  for (const p of (plan.Plans as Record<string, unknown>[] | undefined) ?? []) planScans(p, out);
  return out;
}

export interface SearchMixOptions {
  vestaUrl: string;
  databaseUrl: string;
  syntheaDir: string;
  resources: number;
  seconds: number;
  rounds: number;
  agent: Agent;
  /**
   * How the Vesta under test keeps PHI in its index (search/blind.ts phiIndexModeOf of its codec): its
   * SQL is planned the same way, and the ceiling looks up HMACs with the same blind indexer.
   */
  phi: PhiIndexMode;
  log: (s: string) => void;
  /** Unmeasured seconds of each query on each Vesta before its rounds (default 0). */
  warmSeconds?: number;
  /** Headers of every request to vestaUrl (Authorization: Bearer <system/*.cruds token>). */
  headers?: Record<string, string>;
  /** A second Vesta with AUTH=off on the same database (no token sent): measured in the same rounds. */
  authOffUrl?: string;
  /** Headers carrying a patient/Observation.rs token for the patient (for vestaUrl): measures the patient scope. */
  patientHeaders?: (patientId: string) => Promise<Record<string, string>>;
}

/**
 * generateData in a child process. Generating 100,000 resources takes tens of seconds, and done in
 * this process it blocks the event loop that owns the keep-alive sockets of the earlier phases: the
 * server closes them after its 65 s keep-alive timeout, this process cannot see the close (nor run its
 * own idle timer) while blocked, and the first POSTs of the load then go out on closed sockets and fail
 * with UND_ERR_SOCKET "other side closed" (reproduced 2026-12-03: a fetch after a 67 s busy loop fails
 * so, after a 67 s await it succeeds): the likely cause of the Bundles the runs of 12-02 and of 12-03
 * 15:45 lost.
 */
export async function generateInChild(syntheaDir: string, target: number, out: string): Promise<{ bundles: number; resources: number }> {
  const script = join(dirname(fileURLToPath(import.meta.url)), 'generate-data.js');
  const child = spawn(process.execPath, [script, '--resources', String(target), '--out', out, '--synthea', syntheaDir], { stdio: ['ignore', 'ignore', 'inherit'] });
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', resolve);
  });
  if (code !== 0) throw new Error(`search mix: data generation failed (exit ${code})`);
  const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as { bundles: number; resourceCounts: Record<string, number> };
  return { bundles: manifest.bundles, resources: Object.values(manifest.resourceCounts).reduce((a, b) => a + b, 0) };
}

/** Loads the data and runs the mix; the caller owns the server and the database. */
export async function searchMix(o: SearchMixOptions): Promise<{ resources: number; loadRps: number; loadFailures: string[]; queries: MixResult[]; seqScans: Record<string, string[]>; patientScope?: PatientScopeResult }> {
  const dir = mkdtempSync(join(tmpdir(), 'vesta-mix-'));
  try {
    const gen = await generateInChild(o.syntheaDir, o.resources, dir);
    o.log(`bench: search mix: loading ${gen.resources} resources (${gen.bundles} bundles)\n`);
    const files = readdirSync(dir).filter((f) => f.startsWith('b')).sort().map((f) => join(dir, f));
    const loaded = await vestaLoad(o.vestaUrl, files, 4, o.headers);
    // The mix only needs the data loaded: a failed Bundle is reported with the figures (and counted
    // out of the resources), not fatal. More than 1% failed means something is wrong: stop.
    if (loaded.failures > Math.max(1, files.length / 100)) throw new Error(`search mix load: ${loaded.failures} bundles failed: ${loaded.reasons.join(' / ')}`);
    if (loaded.failures) o.log(`bench: search mix: ${loaded.failures} bundle(s) failed to load: ${loaded.reasons.join(' / ')}\n`);
    const pool = new pg.Pool({ connectionString: o.databaseUrl, max: 4 });
    // The caller drops the database with (force) afterwards: an idle client it terminates must not crash us.
    pool.on('error', () => undefined);
    try {
      // As autovacuum leaves tables in steady state: statistics, and the visibility map that lets index-only scans skip the heap.
      await pool.query('vacuum analyze');
      const sample = await samples(o.databaseUrl, dir, 400);
      if (!sample.length) throw new Error('search mix: no samples');
      const base = new URL(o.vestaUrl);
      const h = o.headers ?? {};
      const offBase = o.authOffUrl ? new URL(o.authOffUrl) : undefined;
      const blind: BlindIndexer | undefined = o.phi.blind?.indexer;
      const queries: MixResult[] = [];
      for (const q of MIX) {
        o.log(`bench: search mix: ${q.name}\n`);
        const first = await httpCall(o.agent, base, 'GET', q.path(sample[0]), undefined, h);
        if (first.status !== 200) throw new Error(`search mix: ${q.name} answered ${first.status}`);
        const body = JSON.parse(first.body) as { total?: number; entry?: { search?: { mode?: string }; resource?: { issue?: { diagnostics?: string }[] } }[] };
        const notServed = (body.entry ?? []).filter((e) => e.search?.mode === 'outcome').flatMap((e) => (e.resource?.issue ?? []).map((i) => String(i.diagnostics)));
        if (offBase) {
          // The system token must see what AUTH=off sees: same status, same total.
          const off = await httpCall(o.agent, offBase, 'GET', q.path(sample[0]));
          const offTotal = off.status === 200 ? (JSON.parse(off.body) as { total?: number }).total : undefined;
          if (off.status !== 200 || offTotal !== body.total) throw new Error(`search mix: ${q.name}: AUTH=off answered ${off.status} with total ${offTotal}, AUTH=on 200 with total ${body.total}`);
        }
        if (o.warmSeconds) {
          await closedLoop(4, o.warmSeconds, (w, i) => httpCall(o.agent, base, 'GET', q.path(sample[(w * 97 + i) % sample.length]), undefined, h));
          if (offBase) await closedLoop(4, o.warmSeconds, (w, i) => httpCall(o.agent, offBase, 'GET', q.path(sample[(w * 97 + i) % sample.length])));
        }
        const vr: Fig[] = [];
        const cr: Fig[] = [];
        const or: Fig[] = [];
        for (let r = 0; r < o.rounds; r++) {
          const v = await closedLoop(4, o.seconds, (w, i) => httpCall(o.agent, base, 'GET', q.path(sample[(w * 97 + i) % sample.length]), undefined, h));
          if (v.errors) throw new Error(`search mix: ${q.name}: ${v.errors} errors`);
          vr.push(fig(v));
          if (offBase) {
            const f = await closedLoop(4, o.seconds, (w, i) => httpCall(o.agent, offBase, 'GET', q.path(sample[(w * 97 + i) % sample.length])));
            if (f.errors) throw new Error(`search mix: ${q.name} (AUTH=off): ${f.errors} errors`);
            or.push(fig(f));
          }
          const c = await closedLoop(4, o.seconds, async (w, i) => {
            const t0 = process.hrtime.bigint();
            const s = q.sql(sample[(w * 97 + i) % sample.length], blind);
            await pool.query(s.text, s.values);
            return { status: 200, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
          });
          cr.push({ p50: percentile(c.lat, 50), p95: percentile(c.lat, 95), rps: c.rps });
        }
        const vm = med(vr);
        const cm = med(cr);
        const om = or.length ? med(or) : undefined;
        queries.push({ query: q.name, vesta: vm, ceiling: cm, ratio: r2(vm.p95 / cm.p95), sampleTotal: body.total ?? null, notServed, ...(om ? { authOff: om, authRatio: Math.round((om.p95 / vm.p95) * 1000) / 1000 } : {}) });
      }
      const patientScope = o.patientHeaders ? await measurePatientScope(o, base, sample) : undefined;
      // What the planner picks for Vesta's own SQL at this size: sequential scans on big tables, if any.
      const seqScans: Record<string, string[]> = {};
      for (const q of MIX) {
        const sql = vestaSql(q.path(sample[0]), o.phi, o.vestaUrl);
        const plan = (await pool.query(`explain (format json) ${sql.text}`, sql.values)).rows[0]['QUERY PLAN'] as { Plan: Record<string, unknown> }[];
        seqScans[q.name] = planScans(plan[0].Plan).filter((n) => n.node === 'Seq Scan' && n.rel).map((n) => n.rel as string);
      }
      return { resources: loaded.resources, loadRps: Math.round(loaded.rps), loadFailures: loaded.reasons, queries, seqScans, ...(patientScope ? { patientScope } : {}) };
    } finally {
      await pool.end();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const r2 = (x: number) => Math.round(x * 100) / 100;

type Fig = { p50: number; p95: number; rps: number };
const fig = (v: { lat: number[]; rps: number }): Fig => ({ p50: percentile(v.lat, 50), p95: percentile(v.lat, 95), rps: v.rps });
const med = (xs: Fig[]): Fig => ({ p50: r2(median(xs.map((x) => x.p50))), p95: r2(median(xs.map((x) => x.p95))), rps: Math.round(median(xs.map((x) => x.rps))) });

/**
 * Observation?code=<code> with a patient/Observation.rs token (patient claim: the sample's patient),
 * against the system token asking for the same matches with &patient=<id>, and for every patient's;
 * rounds alternate the three. Tokens are signed before the clock starts (one per sample patient).
 */
async function measurePatientScope(o: SearchMixOptions, base: URL, sample: Sample[]): Promise<PatientScopeResult> {
  o.log('bench: search mix: patient-scoped token, Observation?code=<code>\n');
  const h = o.headers ?? {};
  const ph = new Map<string, Record<string, string>>();
  for (const s of sample) if (!ph.has(s.patientId)) ph.set(s.patientId, await o.patientHeaders!(s.patientId));
  const code = (s: Sample) => `/Observation?code=${encodeURIComponent(`${s.code.system}|${s.code.code}`)}`;
  const legs: [keyof Omit<PatientScopeResult, 'query' | 'scope' | 'ratio'>, (s: Sample) => [string, Record<string, string>]][] = [
    ['patientToken', (s) => [code(s), ph.get(s.patientId)!]],
    ['systemSamePatient', (s) => [`${code(s)}&patient=${s.patientId}`, h]],
    ['systemAllPatients', (s) => [code(s), h]],
  ];
  const totals: Record<string, number | null> = {};
  for (const [name, req] of legs) {
    const [path, headers] = req(sample[0]);
    const r = await httpCall(o.agent, base, 'GET', path, undefined, headers);
    if (r.status !== 200) throw new Error(`patient scope: ${name} answered ${r.status}: ${r.body.slice(0, 300)}`);
    totals[name] = (JSON.parse(r.body) as { total?: number }).total ?? null;
  }
  const rounds: Record<string, Fig[]> = { patientToken: [], systemSamePatient: [], systemAllPatients: [] };
  for (let r = -1; r < o.rounds; r++) {
    if (r < 0 && !o.warmSeconds) continue;
    for (const [name, req] of legs) {
      // Round -1 is the unmeasured warm-up.
      const v = await closedLoop(4, r < 0 ? o.warmSeconds! : o.seconds, (w, i) => {
        const [path, headers] = req(sample[(w * 97 + i) % sample.length]);
        return httpCall(o.agent, base, 'GET', path, undefined, headers);
      });
      if (v.errors) throw new Error(`patient scope: ${name}: ${v.errors} errors`);
      if (r >= 0) rounds[name].push(fig(v));
    }
  }
  const out = Object.fromEntries(legs.map(([name]) => [name, { ...med(rounds[name]), sampleTotal: totals[name] }])) as Pick<PatientScopeResult, 'patientToken' | 'systemSamePatient' | 'systemAllPatients'>;
  return { query: 'Observation?code=<system>|<code>', scope: 'patient/Observation.rs', ...out, ratio: Math.round((out.systemSamePatient.p95 / out.patientToken.p95) * 1000) / 1000 };
}

/** The SQL Vesta runs for a search path (its page query, or its count for _summary=count), with $n placeholders. */
export function vestaSql(path: string, phi: PhiIndexMode, baseUrl: string): { text: string; values: unknown[] } {
  const u = new URL(path, 'http://x');
  const type = u.pathname.slice(1);
  const req = parseSearch(type, [...u.searchParams], { strict: false, phi, baseUrl });
  const plan = planSearch(req);
  const q = req.control._summary === 'count' ? countQuery(plan) : pageQuery(plan, [], { limit: 51 });
  let n = 0;
  return { text: q.sql.replace(/\?/g, () => `$${++n}`), values: q.bindings };
}
