// Summarises a V8 CPU profile (.cpuprofile, as written by `node --cpu-prof`; the bench writes one per
// Vesta it starts when BENCH_CPU_PROF names a folder): where the server's CPU went, by stage of a
// request and by function. Not a measurement of speed: shares of the sampled time.
//   node dist/bench/profile-summary.js <file.cpuprofile> [--top N] [--stage <name>] [--json]
// (--stage lists the top functions of the stages whose name starts with <name> only)
// A sample is charged to the stage of the innermost frame of Vesta's own code (src/...) on its stack,
// so a library (ajv, fhirpath, node-jose, knex) counts where Vesta called it from; a stack with no
// frame of Vesta's (socket reads, pg's row parsing, Express before the router) counts by the innermost
// library or Node frame.
import { readFileSync } from 'node:fs';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface ProfileSummary {
  /** Wall time the profile covers, ms. */
  wallMs: number;
  /** Time with the process busy (not idle), ms. */
  busyMs: number;
  /** Share of busy time per stage, in percent, largest first. */
  stages: { stage: string; ms: number; percent: number }[];
  /** Functions with the most self time, in percent of busy time. */
  top: { frame: string; ms: number; percent: number }[];
}

/** Stages of Vesta's own code, by path under src/ (first match wins). */
const SRC_STAGES: [RegExp, string][] = [
  [/\/src\/validation\//, 'validation'],
  [/\/src\/search\/(index-extract|index-rows|expressions)\.js/, 'index extraction'],
  [/\/src\/(crypto\/|search\/blind\.js|search\/phi-seam\.js)/, 'PHI sealing and blind indexes'],
  [/\/src\/(audit\/|interactions\/audit[^/]*\.js|storage\/audit-store\.js)/, 'audit'],
  [/\/src\/(auth\/|interactions\/authorize\.js|http\/auth)/, 'authorization'],
  [/\/src\/storage\//, 'storage (statements, rows)'],
  [/\/src\/search\//, 'search planning'],
  [/\/src\/http\//, 'HTTP (Vesta)'],
  [/\/src\/interactions\//, 'interactions (other)'],
  [/\/src\/(fhir|log)\//, 'FHIR helpers and logging'],
  [/\/src\//, 'other Vesta code'],
];

/** Stages of frames outside Vesta's code, for stacks that have none of it. */
const LIB_STAGES: [RegExp, string][] = [
  [/node_modules\/(pg|pg-protocol|pg-pool|pg-types|postgres-[a-z]+)\//, 'pg driver (no Vesta frame)'],
  [/node_modules\/knex\//, 'knex (no Vesta frame)'],
  [/node_modules\/(express|body-parser|raw-body|router|finalhandler|on-finished|send|serve-static|iconv-lite|qs|type-is|content-type)\//, 'Express (no Vesta frame)'],
  [/^node:/, 'Node core: sockets, HTTP, timers (no Vesta frame)'],
  [/node_modules\//, 'other library (no Vesta frame)'],
];

function stageOf(stack: CallFrame[]): string {
  // stack: innermost first. Compiling validators (ajv's code generation, the start-up warm-up of every
  // type) is a once-per-process cost: counted apart from the requests' validation.
  if (stack.some((f) => f.url.includes('/ajv/dist/compile/')) || stack.some((f) => f.functionName === 'warmUpValidators' || f.functionName === 'primeValidators')) return 'validator compile (once per process)';
  for (const f of stack) {
    if (!f.url.includes('/src/')) continue;
    for (const [re, s] of SRC_STAGES) if (re.test(f.url)) return s;
  }
  const leaf = stack[0];
  if (leaf.functionName === '(garbage collector)') return 'garbage collection';
  if (leaf.functionName === '(program)') return 'V8 and native (unattributed)';
  for (const f of stack) for (const [re, s] of LIB_STAGES) if (re.test(f.url)) return s;
  return 'native and builtins (no Vesta frame)';
}

function frameName(f: CallFrame): string {
  const nm = f.url.lastIndexOf('/node_modules/');
  const dist = f.url.lastIndexOf('/dist/');
  const short = nm >= 0 ? f.url.slice(nm + 14) : dist >= 0 ? f.url.slice(dist + 6) : f.url;
  return `${f.functionName || '(anonymous)'}${short ? ` ${short}:${f.lineNumber + 1}` : ''}`;
}

export function summarise(profile: CpuProfile, topN = 25, onlyStage?: string): ProfileSummary {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of profile.nodes) byId.set(n.id, n);
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const stageCache = new Map<number, string>();
  const stageMs = new Map<string, number>();
  const selfMs = new Map<string, number>();
  let idle = 0;
  let total = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const ms = (profile.timeDeltas[i + 1] ?? profile.timeDeltas[i] ?? 0) / 1000;
    total += ms;
    const id = profile.samples[i];
    const leaf = byId.get(id)!;
    if (leaf.callFrame.functionName === '(idle)') {
      idle += ms;
      continue;
    }
    let stage = stageCache.get(id);
    if (stage === undefined) {
      const stack: CallFrame[] = [];
      for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) stack.push(byId.get(cur)!.callFrame);
      stage = stageOf(stack);
      stageCache.set(id, stage);
    }
    stageMs.set(stage, (stageMs.get(stage) ?? 0) + ms);
    if (onlyStage !== undefined && !stage.startsWith(onlyStage)) continue;
    const name = frameName(leaf.callFrame);
    selfMs.set(name, (selfMs.get(name) ?? 0) + ms);
  }
  const busy = total - idle;
  const pct = (ms: number) => Math.round((ms / busy) * 1000) / 10;
  const sorted = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]);
  return {
    wallMs: Math.round(total),
    busyMs: Math.round(busy),
    stages: sorted(stageMs).map(([stage, ms]) => ({ stage, ms: Math.round(ms), percent: pct(ms) })),
    top: sorted(selfMs)
      .slice(0, topN)
      .map(([frame, ms]) => ({ frame, ms: Math.round(ms), percent: pct(ms) })),
  };
}

export function render(s: ProfileSummary): string {
  const lines = [`busy ${s.busyMs} ms of ${s.wallMs} ms sampled`, '', 'share of busy time per stage:'];
  for (const x of s.stages) lines.push(`  ${x.percent.toFixed(1).padStart(5)} %  ${x.stage}`);
  lines.push('', 'top functions by self time:');
  for (const x of s.top) lines.push(`  ${x.percent.toFixed(1).padStart(5)} %  ${x.frame}`);
  return lines.join('\n');
}

if (process.argv[1]?.endsWith('profile-summary.js')) {
  const args = process.argv.slice(2);
  const file = args.find((a, i) => !a.startsWith('--') && !['--top', '--stage'].includes(args[i - 1]));
  if (!file) {
    process.stderr.write('usage: node dist/bench/profile-summary.js <file.cpuprofile> [--top N] [--json]\n');
    process.exit(2);
  }
  const t = args.indexOf('--top');
  const st = args.indexOf('--stage');
  const s = summarise(JSON.parse(readFileSync(file, 'utf8')) as CpuProfile, t >= 0 ? Number(args[t + 1]) : 25, st >= 0 ? args[st + 1] : undefined);
  process.stdout.write(args.includes('--json') ? `${JSON.stringify(s, null, 2)}\n` : `${render(s)}\n`);
}
