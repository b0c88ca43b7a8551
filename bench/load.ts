// A small closed-loop HTTP load generator over keep-alive sockets (loopback, bounded by time).
import { Agent, request } from 'node:http';
import { readdirSync, readFileSync } from 'node:fs';
import pg from 'pg';

export interface Sample {
  ms: number;
  status: number;
}

export function httpCall(agent: Agent, base: URL, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: string; ms: number }> {
  const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const req = request(
      {
        agent,
        host: base.hostname,
        port: base.port,
        method,
        path,
        headers: { Accept: 'application/fhir+json', ...(data ? { 'Content-Type': 'application/fhir+json', 'Content-Length': data.length } : {}), ...headers },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), ms: Number(process.hrtime.bigint() - t0) / 1e6 }));
      },
    );
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  });
}

export function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Runs `connections` workers calling op in a loop for `seconds`; returns req/s and latencies. */
export async function closedLoop(connections: number, seconds: number, op: (worker: number, i: number) => Promise<{ status: number; ms: number }>): Promise<{ rps: number; lat: number[]; errors: number }> {
  const lat: number[] = [];
  let errors = 0;
  const until = Date.now() + seconds * 1000;
  const t0 = Date.now();
  await Promise.all(
    Array.from({ length: connections }, async (_, w) => {
      let i = 0;
      while (Date.now() < until) {
        const r = await op(w, i++);
        if (r.status >= 400) errors++;
        lat.push(r.ms);
      }
    }),
  );
  const elapsed = (Date.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  return { rps: lat.length / elapsed, lat, errors };
}

/**
 * The sum of `read` over a process and its live descendants (the server processes under
 * WEB_CONCURRENCY), from /proc; undefined where /proc has no such process (a descendant gone
 * meanwhile counts 0).
 */
export function overProcessTree(pid: number | undefined, read: (p: number) => number): number | undefined {
  const one = (p: number): number | undefined => {
    try {
      let sum = read(p);
      for (const task of readdirSync(`/proc/${p}/task`)) {
        let kids: string[] = [];
        try {
          kids = readFileSync(`/proc/${p}/task/${task}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
        } catch {
          /* no children file (kernel without CONFIG_PROC_CHILDREN): the process alone */
        }
        for (const k of kids) sum += one(Number(k)) ?? 0;
      }
      return sum;
    } catch {
      return undefined;
    }
  };
  return pid === undefined ? undefined : one(pid);
}

/** CPU time (user + system) so far of a process and its live descendants, in ms (clock ticks of 10 ms). */
export function procCpuMs(pid: number | undefined): number | undefined {
  return overProcessTree(pid, (p) => {
    const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * 10;
  });
}

/** CPU of a server process and of the PostgreSQL backends serving a database, at one moment (ms by pid). */
export interface CpuSnapshot {
  node: number | undefined;
  pg: Map<number, number>;
}

/** The server's CPU (with its child processes) and that of every backend connected to `databaseUrl` but the one asking. */
export async function cpuSnapshot(pid: number | undefined, databaseUrl: string): Promise<CpuSnapshot> {
  const c = new pg.Client({ connectionString: databaseUrl });
  c.on('error', () => undefined);
  await c.connect();
  let pids: number[];
  try {
    pids = (await c.query<{ pid: number }>('select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()')).rows.map((r) => r.pid);
  } finally {
    await c.end();
  }
  const pgCpu = new Map<number, number>();
  for (const p of pids) {
    const ms = procCpuMs(p);
    if (ms !== undefined) pgCpu.set(p, ms);
  }
  return { node: procCpuMs(pid), pg: pgCpu };
}

/**
 * CPU spent between two snapshots: the server's, and PostgreSQL's on that database (a backend that
 * appeared in between counts whole, one that left in between is missed: pools keep theirs open).
 */
export function cpuSpent(a: CpuSnapshot, b: CpuSnapshot): { nodeMs: number | undefined; pgMs: number } {
  let pgMs = 0;
  for (const [p, ms] of b.pg) pgMs += ms - (a.pg.get(p) ?? 0);
  return { nodeMs: a.node !== undefined && b.node !== undefined ? b.node - a.node : undefined, pgMs };
}
