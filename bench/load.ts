// A small closed-loop HTTP load generator over keep-alive sockets (loopback, bounded by time).
import { Agent, request } from 'node:http';

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
