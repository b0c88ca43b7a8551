// Ingest workload: Synthea transaction Bundles through `vesta load` (with a bearer token, as its
// --token sends it) at several concurrencies, against a bare pg loader that inserts the same
// resources as JSONB rows (one transaction per bundle). Each run starts from an empty database.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import pg from 'pg';
import { load } from '../src/cli/load.js';

export interface IngestRun {
  concurrency: number;
  /** ms from the server's start until its validators were compiled (the ingest is timed after). */
  warmUpMs: number | null;
  vestaRps: number;
  ceilingRps: number;
  ratio: number;
  failures: number;
}

/** Bare ceiling: parse each bundle, insert its resources in one multi-row INSERT per transaction. */
export async function bareLoad(databaseUrl: string, files: string[], concurrency: number): Promise<number> {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: concurrency });
  pool.on('error', () => undefined); // idle clients dropped by the server are replaced on demand
  await pool.query('create table if not exists bare_resource (resource_type text not null, id text not null, content jsonb not null, primary key (resource_type, id))');
  await pool.query('truncate bare_resource');
  let next = 0;
  let count = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < files.length) {
        const fileIndex = next++;
        const bundle = JSON.parse(readFileSync(files[fileIndex], 'utf8')) as { entry: { resource: { resourceType: string; id?: string } }[] };
        const client = await pool.connect();
        try {
          await client.query('begin');
          const rows = bundle.entry.map((e, i) => [e.resource.resourceType, `${fileIndex}-${i}`, JSON.stringify(e.resource)]);
          for (let i = 0; i < rows.length; i += 1000) {
            const chunk = rows.slice(i, i + 1000);
            const values = chunk.map((_, j) => `($${j * 3 + 1}, $${j * 3 + 2}, $${j * 3 + 3})`).join(',');
            await client.query(`insert into bare_resource (resource_type, id, content) values ${values}`, chunk.flat());
          }
          await client.query('commit');
          count += rows.length;
        } finally {
          client.release();
        }
      }
    }),
  );
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  await pool.end();
  return count / secs;
}

export function syntheaFiles(dir: string): string[] {
  return readdirSync(dir).filter((f) => f.endsWith('.json') && f !== 'manifest.json').sort().map((f) => join(dir, f));
}

/** Resources per type in the bundles: counted from the files, so any set (fixtures or larger) can be checked. */
export function resourceCounts(files: string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const f of files) for (const e of (JSON.parse(readFileSync(f, 'utf8')) as { entry: { resource: { resourceType: string } }[] }).entry) counts[e.resource.resourceType] = (counts[e.resource.resourceType] ?? 0) + 1;
  return counts;
}

/** Posts the files through `vesta load`'s own code; `headers` carries the bearer token (as its --token does). */
export async function vestaLoad(url: string, files: string[], concurrency: number, headers?: Record<string, string>): Promise<{ rps: number; failures: number; resources: number; reasons: string[] }> {
  const out = new PassThrough();
  out.resume();
  const s = await load(files, { url, concurrency, ndjsonBatch: 500, out, ...(headers ? { headers } : {}) });
  return { rps: s.resources / s.seconds, failures: s.failures.length, resources: s.resources, reasons: s.failures.map((f) => `${f.status ? `HTTP ${f.status}: ` : ''}${f.reason}`.slice(0, 300)) };
}

/** Compares per-type counts in Vesta's database with the expected ones, and looks for unresolved urn:uuid references. */
export async function verifyCounts(databaseUrl: string, expected: Record<string, number>): Promise<{ countsMatch: boolean; mismatches: string[]; urnLeft: number; references: number; unresolved: number }> {
  const c = new pg.Client({ connectionString: databaseUrl });
  c.on('error', () => undefined);
  await c.connect();
  try {
    const rows = (await c.query<{ t: string; n: number }>('select resource_type as t, count(*)::int as n from resource where not deleted group by resource_type')).rows;
    const got = Object.fromEntries(rows.map((r) => [r.t, r.n]));
    const mismatches = [...new Set([...Object.keys(expected), ...Object.keys(got)])].filter((k) => expected[k] !== got[k]).map((k) => `${k}: expected ${expected[k] ?? 0}, got ${got[k] ?? 0}`);
    const urnLeft = (await c.query<{ n: number }>("select count(*)::int as n from resource where content::text like '%\"reference\": \"urn:uuid:%'")).rows[0].n;
    // Every relative reference (Type/id) in the stored, unsealed content must name a stored resource.
    const refs = (
      await c.query<{ total: number; unresolved: number }>(`
        with refs as (
          select jsonb_path_query(r.content, 'strict $.**.reference') #>> '{}' as ref
          from resource r where not r.deleted
        ), rel as (
          select split_part(ref, '/', 1) as t, split_part(ref, '/', 2) as id from refs where ref ~ '^[A-Z][A-Za-z]+/[A-Za-z0-9.-]+$'
        )
        select count(*)::int as total,
               count(*) filter (where not exists (select 1 from resource x where x.resource_type = rel.t and x.id = rel.id and not x.deleted))::int as unresolved
        from rel`)
    ).rows[0];
    return { countsMatch: mismatches.length === 0, mismatches, urnLeft, references: refs.total, unresolved: refs.unresolved };
  } finally {
    await c.end();
  }
}

export interface FreshQuery {
  query: string;
  status: number;
  ms: number;
  total?: number;
}

/**
 * The chain, _has, _sort and compartment searches of issue 14, each timed once right after a load into
 * a fresh database (before autovacuum; the server's own ANALYZE after writes may or may not have run).
 */
export async function freshLoadQueries(url: string, databaseUrl: string, headers: Record<string, string> = {}): Promise<FreshQuery[]> {
  const c = new pg.Client({ connectionString: databaseUrl });
  c.on('error', () => undefined);
  await c.connect();
  let patient: string | undefined;
  try {
    patient = (await c.query<{ id: string }>("select id from resource where resource_type = 'Patient' and not deleted order by id limit 1")).rows[0]?.id;
  } finally {
    await c.end();
  }
  const loinc = encodeURIComponent('http://loinc.org|8302-2');
  const paths = [
    `/Patient?_has:Encounter:patient:_has:Observation:encounter:code=${loinc}`,
    `/Patient?_has:Observation:patient:code=${loinc}&_has:Encounter:patient:status=finished`,
    '/Observation?encounter.service-provider.name=COOLEY',
    '/Observation?_sort=date,code,-value-quantity,status,_id&_count=20',
    ...(patient ? [`/Patient/${patient}/*`] : []),
  ];
  const out: FreshQuery[] = [];
  for (const p of paths) {
    const t0 = process.hrtime.bigint();
    try {
      const r = await fetch(`${url}${p}`, { headers: { Accept: 'application/fhir+json', ...headers }, signal: AbortSignal.timeout(180_000) });
      const body = (await r.json()) as { total?: number };
      out.push({ query: p.replace(patient ?? '\0', '<id>'), status: r.status, ms: Math.round(Number(process.hrtime.bigint() - t0) / 1e5) / 10, ...(body.total !== undefined ? { total: body.total } : {}) });
    } catch {
      out.push({ query: p.replace(patient ?? '\0', '<id>'), status: 0, ms: Math.round(Number(process.hrtime.bigint() - t0) / 1e5) / 10 });
    }
  }
  return out;
}
