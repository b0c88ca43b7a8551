// `vesta load`: posts transaction/batch Bundles, single resources or NDJSON files to a FHIR server
// (https://hl7.org/fhir/R4/http.html#transaction) with bounded concurrency, progress and a summary.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { extname, join } from 'node:path';

export interface LoadOptions {
  url: string;
  concurrency: number;
  /** Resources per batch Bundle built from NDJSON lines. */
  ndjsonBatch: number;
  out: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  headers?: Record<string, string>;
}

export interface LoadSummary {
  files: number;
  bundles: number;
  resources: number;
  failures: { source: string; status: number; reason: string }[];
  seconds: number;
}

interface Job {
  source: string;
  body: string;
  resources: number;
  path: string;
}

/** Expands files and folders into .json / .ndjson files, sorted. */
export function collectFiles(inputs: string[]): string[] {
  const out: string[] = [];
  const walk = (p: string) => {
    const st = statSync(p);
    if (st.isDirectory()) {
      for (const f of readdirSync(p).sort()) walk(join(p, f));
    } else if (['.json', '.ndjson'].includes(extname(p).toLowerCase()) && !/manifest\.json$/.test(p)) out.push(p);
  };
  for (const i of inputs) walk(i);
  return out;
}

function* jobsFor(file: string, batch: number): Generator<Job> {
  const text = readFileSync(file, 'utf8');
  if (extname(file).toLowerCase() === '.ndjson') {
    const lines = text.split('\n').filter((l) => l.trim());
    for (let i = 0; i < lines.length; i += batch) {
      const entry = lines.slice(i, i + batch).map((l, j) => {
        const r = JSON.parse(l) as { resourceType: string; id?: string };
        return r.id
          ? { resource: r, request: { method: 'PUT', url: `${r.resourceType}/${r.id}` } }
          : { resource: r, request: { method: 'POST', url: r.resourceType }, fullUrl: `urn:line:${i + j}` };
      });
      yield { source: `${file}:${i + 1}`, body: JSON.stringify({ resourceType: 'Bundle', type: 'batch', entry }), resources: entry.length, path: '' };
    }
    return;
  }
  const r = JSON.parse(text) as { resourceType?: string; type?: string; entry?: unknown[]; id?: string };
  if (r.resourceType === 'Bundle' && (r.type === 'transaction' || r.type === 'batch')) {
    yield { source: file, body: text, resources: r.entry?.length ?? 0, path: '' };
  } else if (typeof r.resourceType === 'string') {
    yield { source: file, body: text, resources: 1, path: r.id ? `${r.resourceType}/${r.id}` : r.resourceType };
  } else throw new Error('not a FHIR resource');
}

function reasonOf(status: number, body: string): string {
  try {
    const o = JSON.parse(body) as { resourceType?: string; issue?: { diagnostics?: string }[]; entry?: { response?: { status?: string; outcome?: { issue?: { diagnostics?: string }[] } } }[] };
    if (o.resourceType === 'OperationOutcome') return o.issue?.map((i) => i.diagnostics).filter(Boolean).join('; ') || `HTTP ${status}`;
    if (o.resourceType === 'Bundle') {
      const bad = (o.entry ?? []).filter((e) => e.response?.status && !/^2/.test(e.response.status));
      if (bad.length) return `${bad.length} entries failed, first: ${bad[0].response?.outcome?.issue?.[0]?.diagnostics ?? bad[0].response?.status}`;
    }
  } catch {
    /* not JSON */
  }
  return `HTTP ${status}`;
}

/** Loads the inputs; never throws for a failed bundle (it is counted and reported). */
export async function load(inputs: string[], opts: LoadOptions): Promise<LoadSummary> {
  const files = collectFiles(inputs);
  const jobs: Job[] = [];
  const failures: LoadSummary['failures'] = [];
  for (const f of files) {
    try {
      for (const j of jobsFor(f, opts.ndjsonBatch)) jobs.push(j);
    } catch (e) {
      failures.push({ source: f, status: 0, reason: `unreadable: ${(e as Error).message.slice(0, 200)}` });
    }
  }
  const total = jobs.reduce((n, j) => n + j.resources, 0);
  const started = Date.now();
  let done = 0;
  let bundles = 0;
  let lastPrint = 0;
  const base = opts.url.replace(/\/+$/, '');
  const tty = Boolean(opts.out.isTTY);
  const progress = (final = false) => {
    const now = Date.now();
    if (!final && now - lastPrint < (tty ? 200 : 5000)) return;
    lastPrint = now;
    const secs = Math.max((now - started) / 1000, 0.001);
    const rate = done / secs;
    const eta = rate > 0 ? Math.round((total - done) / rate) : 0;
    if (tty) {
      const width = Math.max(10, Math.min(40, (opts.out.columns ?? 80) - 60));
      const filled = total ? Math.round((done / total) * width) : width;
      opts.out.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} resources  ${rate.toFixed(0)}/s  ETA ${eta}s  failures ${failures.length}   ${final ? '\n' : ''}`);
    } else {
      opts.out.write(`progress: ${done}/${total} resources, ${rate.toFixed(0)}/s, eta ${eta}s, failures ${failures.length}\n`);
    }
  };
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const job = jobs[next++];
      try {
        const res = await fetch(job.path ? `${base}/${job.path}` : base, {
          method: job.path.includes('/') ? 'PUT' : 'POST',
          headers: { 'Content-Type': 'application/fhir+json', Accept: 'application/fhir+json', Prefer: 'return=minimal', ...(opts.headers ?? {}) },
          body: job.body,
        });
        const text = await res.text();
        const reason = res.ok ? (job.path ? '' : reasonOf(res.status, text)) : reasonOf(res.status, text);
        if (!res.ok || (reason && reason !== `HTTP ${res.status}`)) failures.push({ source: job.source, status: res.status, reason: reason || `HTTP ${res.status}` });
      } catch (e) {
        // fetch's own message is "fetch failed"; the cause says what the network did (reset, refused, closed).
        const cause = (e as { cause?: { code?: string; message?: string } }).cause;
        failures.push({ source: job.source, status: 0, reason: `request failed: ${(e as Error).message}${cause ? ` (${cause.code ?? ''}${cause.code && cause.message ? ' ' : ''}${cause.message ?? ''})` : ''}` });
      }
      bundles++;
      done += job.resources;
      progress();
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, opts.concurrency) }, worker));
  progress(true);
  return { files: files.length, bundles, resources: done, failures, seconds: (Date.now() - started) / 1000 };
}
