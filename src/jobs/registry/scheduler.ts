// The registry sync's schedule and queue (issue 17 item 6; design.md "Jobs"). Every node (each server
// and each `vesta worker`) runs the same ticker: at the start of each schedule window of a registry
// and direction it adds one job whose id names (registry, direction, window), which BullMQ keeps once
// however many nodes add it; without Redis the node that claims the window in the database
// (registry_run: one claim per window) runs it. Either way the same window never runs twice. With REDIS_URL the job goes on a BullMQ queue served by every
// node's worker (at-least-once delivery: a worker killed mid-run leaves a stalled job that another
// worker takes back, and the run is idempotent); without Redis the same job code runs in-process.
// A run needs the run lease of its direction (sync.ts): a window whose job finds it held ends without a
// run (the next window covers it); a job that fails (an internal error, a shutdown) is retried with
// exponential backoff and jitter.
import { hostname } from 'node:os';
import { Queue, Worker, type Job } from 'bullmq';
import { CronExpressionParser } from 'cron-parser';
import type { Services } from '../../interactions/context.js';
import { pruneRuns, tryClaimRun, type RegistryCounts, type SyncDirection } from '../../storage/registry-store.js';
import { RegistryClient } from './client.js';
import type { RegistryConfig, RegistrySchedule } from './config.js';
import { pullOnce, pushOnce, RunBusyError, type SyncOptions, type SyncReport } from './sync.js';

export const REGISTRY_QUEUE = 'vesta-registry';

export interface RegistryJobData {
  registryId: string;
  direction: SyncDirection;
  /** The window's start (ms since the epoch), or the time of a run asked for by hand. */
  window: number;
}

export interface RegistrySyncOptions {
  /** Redis for BullMQ; without it runs are in-process. */
  redisUrl?: string;
  /** BullMQ key prefix (default "bull"); tests use their own. */
  prefix?: string;
  /** Run the schedule's ticker (default true). */
  schedule?: boolean;
  /** Serve the queue with a worker (default true; with Redis only). */
  work?: boolean;
  /** The registry client of a registry (tests pass their own; default from its configuration). */
  clientFor?: (registry: RegistryConfig) => RegistryClient;
  /** Passed to each run (lag, batch size; tests). */
  sync?: Pick<SyncOptions, 'lagMs' | 'batchSize' | 'leaseMs'>;
  /** BullMQ lock of a job being run (default 30 s): a killed worker's job is taken back after about this long. */
  lockDurationMs?: number;
  /** Job attempts (default 8) and the first backoff (default 5 s, doubled each time, with jitter). */
  attempts?: number;
  backoffMs?: number;
  onProgress?: (data: RegistryJobData, counts: Readonly<RegistryCounts>) => void;
  onRun?: (data: RegistryJobData, report: SyncReport) => void;
  now?: () => number;
}

/** The directions a registry is synced in. */
export function directionsOf(registry: Pick<RegistryConfig, 'direction'>): SyncDirection[] {
  return registry.direction === 'both' ? ['push', 'pull'] : [registry.direction];
}

/** The start of the first schedule window after `after` (ms): every N seconds from the epoch, or the next cron minute (UTC). */
export function nextWindow(schedule: RegistrySchedule, after: number): number {
  if ('everySeconds' in schedule) {
    const period = schedule.everySeconds * 1000;
    return (Math.floor(after / period) + 1) * period;
  }
  return CronExpressionParser.parse(schedule.cron, { currentDate: new Date(after), tz: 'UTC' }).next().getTime();
}

/** The BullMQ job id of a window: one per (registry, direction, window); BullMQ refuses `:` in ids. */
export function jobIdOf(d: RegistryJobData): string {
  return `registry-sync.${d.registryId}.${d.direction}.${d.window}`;
}

/** The registry client built from a registry's configuration. */
export function clientOf(svc: Pick<Services, 'log'>, r: RegistryConfig): RegistryClient {
  return new RegistryClient({ id: r.id, baseUrl: r.baseUrl, auth: r.auth, requestTimeoutMs: r.requestTimeoutMs, rateLimit: r.rateLimit, pageSize: r.pageSize, log: svc.log });
}

// Timers cannot wait longer than about 24.8 days; a far window is waited for in steps.
const MAX_TIMER_MS = 6 * 3600 * 1000;
// Claims older than this are forgotten (their windows are long past).
const CLAIM_RETENTION_MS = 7 * 86400 * 1000;

export class RegistrySync {
  private readonly byId: Map<string, RegistryConfig>;
  private readonly clients = new Map<string, RegistryClient>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly local = new Map<string, Promise<unknown>>();
  private readonly aborts = new Set<AbortController>();
  private readonly now: () => number;
  private readonly holder = `${hostname()}/${process.pid}`;
  private queue?: Queue;
  private worker?: Worker;
  private closed = false;

  constructor(
    private readonly svc: Services,
    readonly registries: readonly RegistryConfig[],
    private readonly opts: RegistrySyncOptions = {},
  ) {
    this.byId = new Map(registries.map((r) => [r.id, r]));
    this.now = opts.now ?? Date.now;
  }

  private connection() {
    return { connection: { url: this.opts.redisUrl! }, ...(this.opts.prefix ? { prefix: this.opts.prefix } : {}) };
  }

  /** Starts the worker (with Redis) and the ticker of every registry and direction. */
  async start(): Promise<void> {
    if (this.closed || !this.registries.length) return;
    if (this.opts.redisUrl) {
      this.queue = new Queue(REGISTRY_QUEUE, this.connection());
      if (this.opts.work !== false) {
        this.worker = new Worker(REGISTRY_QUEUE, (job: Job<RegistryJobData>) => this.process(job), {
          ...this.connection(),
          concurrency: 2 * this.registries.length,
          lockDuration: this.opts.lockDurationMs ?? 30_000,
          // A job whose worker died is taken back, however often that happens (the run is idempotent).
          maxStalledCount: 100,
          stalledInterval: this.opts.lockDurationMs ?? 30_000,
        });
        this.worker.on('failed', (job, err) =>
          this.svc.log.warn({ job: job?.id, attempt: job?.attemptsMade, err: { name: err.name, message: err.message } }, 'registry sync job failed'),
        );
        this.worker.on('error', (err) => this.svc.log.warn({ err: { message: err.message } }, 'registry sync worker error'));
        await this.worker.waitUntilReady();
      }
      await this.queue.waitUntilReady();
    }
    if (this.opts.schedule !== false) for (const r of this.registries) for (const d of directionsOf(r)) this.tick(r, d);
  }

  private tick(registry: RegistryConfig, direction: SyncDirection): void {
    if (this.closed) return;
    const at = nextWindow(registry.schedule, this.now());
    const wait = Math.max(0, at - this.now());
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (this.closed) return;
      if (wait > MAX_TIMER_MS) return this.tick(registry, direction);
      this.fire({ registryId: registry.id, direction, window: at }).catch((e: unknown) =>
        this.svc.log.error({ registry: registry.id, direction, err: { message: (e as Error)?.message } }, 'registry sync window could not be scheduled'),
      );
      this.tick(registry, direction);
    }, Math.min(wait, MAX_TIMER_MS));
    t.unref();
    this.timers.add(t);
  }

  /**
   * A schedule window starts. With Redis every node adds the window's job under the same id and
   * BullMQ keeps one (it keeps finished jobs for days, past any window that can still fire); without,
   * the one node that claims the window in the database runs it.
   */
  private async fire(d: RegistryJobData): Promise<void> {
    if (this.queue) {
      await this.enqueue(d);
      return;
    }
    if (!(await tryClaimRun(this.svc.db.knex, d.registryId, d.direction, String(d.window)))) return;
    await this.enqueue(d);
    if (Math.random() < 0.01) await pruneRuns(this.svc.db.knex, new Date(this.now() - CLAIM_RETENTION_MS));
  }

  /**
   * Adds the run of a window (or of a time asked for by hand) to the queue; in-process it starts it.
   * Adding the same (registry, direction, window) twice is one job.
   */
  async enqueue(d: RegistryJobData): Promise<Job<RegistryJobData> | undefined> {
    if (!this.byId.has(d.registryId)) throw new Error(`no registry "${d.registryId}" is configured`);
    if (this.queue) {
      return (await this.queue.add('sync', d, {
        jobId: jobIdOf(d),
        attempts: this.opts.attempts ?? 8,
        backoff: { type: 'exponential', delay: this.opts.backoffMs ?? 5000, jitter: 0.5 },
        removeOnComplete: { age: 7 * 86400, count: 10_000 },
        removeOnFail: { age: 30 * 86400 },
      })) as Job<RegistryJobData>;
    }
    const key = `${d.registryId}\n${d.direction}`;
    // In-process, one run per direction at a time; a window arriving during a run waits for it.
    const run = (this.local.get(key) ?? Promise.resolve()).then(() => (this.closed ? undefined : this.runInProcess(d)));
    const settled = run.catch((e: unknown) => {
      if (!(e instanceof RunBusyError)) this.svc.log.error({ registry: d.registryId, direction: d.direction, err: { name: (e as Error)?.name, message: (e as Error)?.message } }, 'registry sync run failed');
    });
    this.local.set(key, settled);
    return undefined;
  }

  private async runInProcess(d: RegistryJobData): Promise<SyncReport> {
    const abort = new AbortController();
    this.aborts.add(abort);
    try {
      return await this.runNow(d.registryId, d.direction, { signal: abort.signal, onProgress: (c) => this.opts.onProgress?.(d, c), data: d });
    } finally {
      this.aborts.delete(abort);
    }
  }

  /**
   * A BullMQ job: one run. An internal error or a shutdown fails it, to be retried. A run of the same
   * direction already in progress (here, on another node, or a killed worker's until its lease runs
   * out) makes this window's job end without a run: the watermark has not passed anything that run
   * does not cover, so the next window takes what is left.
   */
  private async process(job: Job<RegistryJobData>): Promise<SyncReport | { busy: string }> {
    const d = job.data;
    const abort = new AbortController();
    this.aborts.add(abort);
    let last = 0;
    try {
      const report = await this.runNow(d.registryId, d.direction, {
        signal: abort.signal,
        data: d,
        onProgress: (c) => {
          this.opts.onProgress?.(d, c);
          if (this.now() - last < 1000) return;
          last = this.now();
          job.updateProgress({ ...c }).catch(() => undefined);
        },
      });
      if (abort.signal.aborted && report.stopped) throw new Error(`stopped by a shutdown before its end (${report.stopped}); it will be retried`);
      return report;
    } catch (e) {
      if (!(e instanceof RunBusyError)) throw e;
      this.svc.log.info({ job: job.id }, 'registry sync window skipped: a run of the same direction is in progress');
      return { busy: e.message };
    } finally {
      this.aborts.delete(abort);
    }
  }

  /** One run of (registry, direction) in this process, now. */
  async runNow(
    registryId: string,
    direction: SyncDirection,
    o: { signal?: AbortSignal; onProgress?: (c: Readonly<RegistryCounts>) => void; data?: RegistryJobData } = {},
  ): Promise<SyncReport> {
    const registry = this.byId.get(registryId);
    if (!registry) throw new Error(`no registry "${registryId}" is configured`);
    let client = this.clients.get(registryId);
    if (!client) {
      client = this.opts.clientFor ? this.opts.clientFor(registry) : clientOf(this.svc, registry);
      this.clients.set(registryId, client);
    }
    const options: SyncOptions = { ...this.opts.sync, holder: this.holder, ...(o.signal ? { signal: o.signal } : {}), ...(o.onProgress ? { onProgress: o.onProgress } : {}) };
    const report = direction === 'push' ? await pushOnce(this.svc, registry, client, options) : await pullOnce(this.svc, registry, client, options);
    this.opts.onRun?.(o.data ?? { registryId, direction, window: this.now() }, report);
    return report;
  }

  /** Stops the ticker, stops runs between records, and closes the Redis connections. */
  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const a of this.aborts) a.abort();
    await this.worker?.close();
    await Promise.all([...this.local.values()]);
    await this.queue?.close();
  }
}
