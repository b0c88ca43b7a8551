// Memory over a long ingest (issue 18: "ingest of 1,000,000 resources with flat server RSS; report
// start, peak, end"): the bench's generator multiplies the Synthea Bundles, `vesta load`'s code posts
// them, and the server's resident set is read from /proc every second. Flat means the RSS at the end
// of the load is about where it was after the first tenth, whatever the number of resources; the
// quarters are printed so a slope shows. Not a test: it reports, it does not judge.
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateInChild } from './search-mix.js';
import { vestaLoad } from './ingest.js';
import { overProcessTree } from './load.js';

export interface MemoryResult {
  resources: number;
  bundles: number;
  concurrency: number;
  seconds: number;
  rps: number;
  failures: number;
  /** Why Bundles failed (status and the OperationOutcome's first words), at most 10. */
  failureReasons: string[];
  /** Server RSS in MiB (with its child processes under WEB_CONCURRENCY). */
  rssMiB: {
    /** Ready and warm (validators compiled), before the first Bundle. */
    start: number;
    /** Highest sample during the load; `hwm` is the kernel's own high-water mark (VmHWM) of the main process. */
    peak: number;
    hwm: number | null;
    /** Right after the last Bundle was answered. */
    end: number;
    /** RSS at 10 %, 25 %, 50 %, 75 % and 100 % of the load's duration (nearest sample). */
    along: { at: string; mib: number }[];
  };
  samples: number;
}

/** Resident set (MiB) of a process and its live descendants, or undefined once it is gone. */
export function rssMiB(pid: number): number | undefined {
  const kb = overProcessTree(pid, (p) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${p}/status`, 'utf8'))?.[1] ?? 0));
  return kb === undefined ? undefined : kb / 1024;
}

function hwmMiB(pid: number): number | null {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Math.round(Number(m[1]) / 1024) : null;
  } catch {
    return null;
  }
}

/**
 * Generates `resources` resources, loads them into the server at `url` (pid `pid`, warm and idle) at
 * `concurrency`, sampling its RSS every second.
 */
export async function memoryIngest(o: { url: string; pid: number; syntheaDir: string; resources: number; concurrency: number; headers: Record<string, string>; log: (m: string) => void }): Promise<MemoryResult> {
  const dir = mkdtempSync(join(tmpdir(), 'vesta-memory-'));
  try {
    const gen = await generateInChild(o.syntheaDir, o.resources, dir);
    const files = readdirSync(dir).filter((f) => f.startsWith('b')).sort().map((f) => join(dir, f));
    const start = rssMiB(o.pid);
    if (start === undefined) throw new Error('memory: the server is not running');
    o.log(`bench: memory: loading ${gen.resources} resources (${gen.bundles} bundles) at concurrency ${o.concurrency}; RSS ${Math.round(start)} MiB\n`);
    const samples: { t: number; mib: number }[] = [];
    const t0 = Date.now();
    let lastLog = t0;
    const timer = setInterval(() => {
      const mib = rssMiB(o.pid);
      if (mib === undefined) return;
      samples.push({ t: Date.now() - t0, mib });
      if (Date.now() - lastLog >= 60000) {
        lastLog = Date.now();
        o.log(`bench: memory: ${Math.round((Date.now() - t0) / 1000)} s, RSS ${Math.round(mib)} MiB\n`);
      }
    }, 1000);
    let loaded: Awaited<ReturnType<typeof vestaLoad>>;
    try {
      loaded = await vestaLoad(o.url, files, o.concurrency, o.headers);
    } finally {
      clearInterval(timer);
    }
    const seconds = (Date.now() - t0) / 1000;
    const end = rssMiB(o.pid) ?? Number.NaN;
    samples.push({ t: Date.now() - t0, mib: end });
    const near = (frac: number) => samples.reduce((best, s) => (Math.abs(s.t - frac * seconds * 1000) < Math.abs(best.t - frac * seconds * 1000) ? s : best), samples[0]).mib;
    const r = (x: number) => Math.round(x);
    return {
      resources: loaded.resources,
      bundles: gen.bundles,
      concurrency: o.concurrency,
      seconds: Math.round(seconds),
      rps: Math.round(loaded.resources / seconds),
      failures: loaded.failures,
      failureReasons: loaded.reasons.slice(0, 10),
      rssMiB: {
        start: r(start),
        peak: r(Math.max(start, ...samples.map((s) => s.mib))),
        hwm: hwmMiB(o.pid),
        end: r(end),
        along: [0.1, 0.25, 0.5, 0.75, 1].map((f) => ({ at: `${f * 100} %`, mib: r(near(f)) })),
      },
      samples: samples.length,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

