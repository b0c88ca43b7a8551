// `vesta registry ...` (issue 17 item 7): run a sync by hand with a progress bar, and read the sync's
// state: last runs, watermarks, breakers, counts, the review list and the dead-letter list. The
// configuration is the server's (REGISTRY_CONFIG_FILE, DATABASE_URL, ...); output holds no PHI.
import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { ConfigError, loadConfig, type Config } from '../config/config.js';
import { loadRegistries, type RegistryConfig } from '../jobs/registry/config.js';
import { directionsOf, RegistrySync } from '../jobs/registry/scheduler.js';
import type { SyncReport } from '../jobs/registry/sync.js';
import { createLogger } from '../log/logger.js';
import { buildServices } from '../server.js';
import { stopOnSignals } from '../shutdown.js';
import {
  getBreaker,
  listDeadLetters,
  listReviews,
  listStates,
  resolveReview,
  type BreakerRecord,
  type RegistryCounts,
  type RegistryState,
  type SyncDirection,
} from '../storage/registry-store.js';
import { withDatabase } from './database.js';

export const REGISTRY_USAGE = `  registry sync <id> [--push | --pull] [--once]
            run the sync with one registry now, in this process, with a progress bar: --once runs
            each direction once and exits (exit 0 when every run completed, 1 otherwise); without it
            the registry's schedule is followed until stopped (Ctrl-C), as a server would
  registry status [--json]
            per registry and direction: last run, outcome, watermark, counts (sent, stored, rejected,
            retried, dead-lettered, unmatched, skipped), circuit breaker, open review and dead letters
  registry review [<id>] [--all] | registry review resolve <number>
            pulled Immunizations whose patient matched no local Patient or several (not stored)
  registry dead-letters [<id>]
            records that failed deadLetterAfter times, with the reason kept`;

function registriesOf(config: Readonly<Config>): RegistryConfig[] {
  if (!config.registryConfigFile) throw new ConfigError('REGISTRY_CONFIG_FILE', 'is not set: no registry is configured');
  return loadRegistries(config.registryConfigFile);
}

const COUNT_LABELS: [keyof RegistryCounts, string][] = [
  ['sent', 'sent'],
  ['stored', 'stored'],
  ['rejected', 'rejected'],
  ['retried', 'retried'],
  ['deadLettered', 'dead-lettered'],
  ['unmatched', 'unmatched'],
  ['skipped', 'skipped'],
];

export function countsLine(c: Readonly<RegistryCounts>): string {
  return COUNT_LABELS.map(([k, label]) => `${label} ${c[k]}`).join(', ');
}

function reportLine(id: string, r: SyncReport): string {
  const outcome = r.notStarted ? 'not started' : r.stopped ? 'stopped' : 'completed';
  const wm = r.watermarkAfter ? r.watermarkAfter.toISOString() : 'none';
  return `registry ${id} ${r.direction}: ${outcome}${r.stopped ? ` (${r.stopped})` : ''}; ${countsLine(r)}; watermark ${wm}; breaker ${r.breaker}`;
}

async function sync(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { push: { type: 'boolean' }, pull: { type: 'boolean' }, once: { type: 'boolean' } } });
  const id = positionals[0];
  if (!id || positionals.length > 1 || (values.push && values.pull)) {
    process.stderr.write(`usage:\n${REGISTRY_USAGE}\n`);
    return 2;
  }
  const config = loadConfig();
  const registries = registriesOf(config);
  const registry = registries.find((r) => r.id === id);
  if (!registry) throw new Error(`no registry "${id}" in REGISTRY_CONFIG_FILE (configured: ${registries.map((r) => r.id).join(', ') || 'none'})`);
  const wanted: SyncDirection[] = values.push ? ['push'] : values.pull ? ['pull'] : directionsOf(registry);
  for (const d of wanted)
    if (!directionsOf(registry).includes(d)) throw new Error(`registry ${id} is configured for direction "${registry.direction}", not ${d}`);
  // The job's own lines (warnings, errors) only: the bar and the summaries tell the rest.
  const log = createLogger(config.logLevel === 'info' ? 'warn' : config.logLevel);
  const svc = await buildServices(config, log);
  const tty = Boolean(process.stderr.isTTY);
  const bar = new cliProgress.SingleBar(
    { format: '{direction} {registry} {spinner} {counts}', stream: process.stderr, hideCursor: tty, noTTYOutput: !tty, notTTYSchedule: 5000, fps: 5, clearOnComplete: false },
    cliProgress.Presets.shades_classic,
  );
  const spin = ['|', '/', '-', '\\'];
  let turn = 0;
  const show = (direction: SyncDirection, c: Readonly<RegistryCounts>) => bar.update(c.sent + c.stored + c.rejected + c.skipped + c.unmatched + c.deadLettered, { direction, registry: id, spinner: spin[turn++ % 4], counts: countsLine(c) });
  const zero: RegistryCounts = { sent: 0, stored: 0, rejected: 0, retried: 0, deadLettered: 0, unmatched: 0, skipped: 0 };
  const runner = new RegistrySync(svc, [{ ...registry, direction: wanted.length === 2 ? 'both' : wanted[0] }], {
    onProgress: (d, c) => show(d.direction, c),
    onRun: (_d, r) => {
      bar.stop();
      process.stdout.write(`${reportLine(id, r)}\n`);
    },
    schedule: !values.once,
    work: false,
  });
  if (values.once) {
    let ok = true;
    const abort = new AbortController();
    const onSignal = () => abort.abort();
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    try {
      for (const d of wanted) {
        bar.start(0, 0, { direction: d, registry: id, spinner: spin[0], counts: countsLine(zero) });
        const r = await runner.runNow(id, d, { signal: abort.signal, onProgress: (c) => show(d, c) });
        ok &&= !r.stopped && !r.notStarted;
        if (abort.signal.aborted) break;
      }
    } finally {
      bar.stop();
      await runner.close();
      await svc.db.close();
    }
    return ok ? 0 : 1;
  }
  // Follows the schedule (each window claimed like any node's) until stopped.
  await runner.start();
  process.stdout.write(`following the schedule of registry ${id} (${wanted.join(' and ')}); Ctrl-C stops after the current record\n`);
  stopOnSignals(log, { stopping: 'stopping the registry sync', stopped: 'registry sync stopped', failed: 'registry sync stop failed' }, () => runner.close().then(() => svc.db.close()));
  return -1;
}

function when(d: Date | null): string {
  return d ? d.toISOString() : '-';
}

export interface RegistryStatus {
  registry: string;
  configured: boolean;
  breaker: BreakerRecord;
  directions: RegistryState[];
  openReviews: number;
  deadLetters: number;
}

/** What `vesta registry status` shows, for every configured registry and every one with state. */
export async function registryStatus(q: Parameters<typeof listStates>[0], registries: readonly Pick<RegistryConfig, 'id'>[]): Promise<RegistryStatus[]> {
  const states = await listStates(q);
  const ids = [...new Set([...registries.map((r) => r.id), ...states.map((s) => s.registryId)])].sort();
  const reviews = await listReviews(q);
  const dead = await listDeadLetters(q, { limit: 1_000_000 });
  return Promise.all(
    ids.map(async (id) => ({
      registry: id,
      configured: registries.some((r) => r.id === id),
      breaker: await getBreaker(q, id),
      directions: states.filter((s) => s.registryId === id),
      openReviews: reviews.filter((r) => r.registryId === id).length,
      deadLetters: dead.filter((r) => r.registryId === id).length,
    })),
  );
}

async function status(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { json: { type: 'boolean' } } });
  const config = loadConfig();
  const registries = config.registryConfigFile ? loadRegistries(config.registryConfigFile) : [];
  const all = await withDatabase(config, (q) => registryStatus(q, registries));
  if (values.json) {
    process.stdout.write(`${JSON.stringify(all, null, 2)}\n`);
    return 0;
  }
  if (!all.length) process.stdout.write('no registry is configured and none has been synced\n');
  for (const s of all) {
    const b = s.breaker;
    const breaker = b.state === 'closed' ? `closed (${b.consecutiveFailures} consecutive failures)` : `${b.state} since ${when(b.openedAt)} after ${b.consecutiveFailures} consecutive failures (last: ${b.lastFailure ?? '-'})`;
    process.stdout.write(`registry ${s.registry}${s.configured ? '' : ' (no longer configured)'}\n  breaker: ${breaker}\n  review: ${s.openReviews} open; dead letters: ${s.deadLetters}\n`);
    if (!s.directions.length) process.stdout.write('  never run\n');
    for (const d of s.directions) {
      const running = d.runHolder && d.runLeaseUntil && d.runLeaseUntil > new Date() ? `; running on ${d.runHolder}` : '';
      process.stdout.write(
        `  ${d.direction}: last run ${when(d.lastRunStarted)} .. ${when(d.lastRunFinished)} ${d.lastOutcome ?? '-'}${d.lastError ? ` (${d.lastError})` : ''}${running}\n` +
          `    watermark ${when(d.watermark)}; totals: ${countsLine(d.counts)}\n`,
      );
    }
  }
  return 0;
}

async function review(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { all: { type: 'boolean' } } });
  const config = loadConfig();
  if (positionals[0] === 'resolve') {
    const n = Number(positionals[1]);
    if (!Number.isSafeInteger(n) || n < 1) throw new Error('usage: vesta registry review resolve <number>');
    const done = await withDatabase(config, (q) => resolveReview(q, n));
    process.stdout.write(done ? `review ${n} resolved\n` : `no open review ${n}\n`);
    return done ? 0 : 1;
  }
  const list = await withDatabase(config, (q) => listReviews(q, { ...(positionals[0] ? { registryId: positionals[0] } : {}), includeResolved: Boolean(values.all) }));
  if (!list.length) process.stdout.write('the review list is empty\n');
  for (const r of list)
    process.stdout.write(`${r.id}\t${r.registryId}\t${r.reason}\t${r.registryReference}\t${r.createdAt.toISOString()}${r.resolvedAt ? `\tresolved ${r.resolvedAt.toISOString()}` : ''}\t${r.detail ?? ''}\n`);
  return 0;
}

async function deadLetters(args: string[]): Promise<number> {
  const { positionals } = parseArgs({ args, allowPositionals: true });
  const config = loadConfig();
  const list = await withDatabase(config, (q) => listDeadLetters(q, { ...(positionals[0] ? { registryId: positionals[0] } : {}), limit: 10_000 }));
  if (!list.length) process.stdout.write('the dead-letter list is empty\n');
  for (const r of list) {
    const why = (r.lastError?.issue ?? []).map((i) => `${i.code}${i.diagnostics ? `: ${i.diagnostics}` : ''}`).join('; ');
    process.stdout.write(`${r.registryId}\t${r.direction}\t${r.resourceType}/${r.resourceId}\tversion ${r.version ?? '-'}\t${r.attempts} attempts\t${r.updatedAt.toISOString()}\t${why}\n`);
  }
  return 0;
}

export async function registryCommand(args: string[]): Promise<number> {
  switch (args[0]) {
    case 'sync':
      return sync(args.slice(1));
    case 'status':
      return status(args.slice(1));
    case 'review':
      return review(args.slice(1));
    case 'dead-letters':
      return deadLetters(args.slice(1));
    default:
      process.stderr.write(`usage:\n${REGISTRY_USAGE}\n`);
      return 2;
  }
}
