// PHI maintenance jobs (design.md "Jobs", "PHI at rest"): the re-seal after a key rotation
// (jobs/reseal.ts) and the blind re-index (jobs/blind-reindex.ts). With REDIS_URL they run on a BullMQ
// queue: every node runs a worker, and a job is added under a fixed id per key (adding it again while
// it exists is a no-op), so several nodes starting at once schedule it once; a job stopped by a
// shutdown fails and is retried by any worker, and BullMQ's at-least-once delivery is safe because
// both jobs only ever look for work not yet done. Without Redis the same job code runs in-process.
import { QueueEvents, Queue, Worker, type Job } from 'bullmq';
import type { Services } from '../interactions/context.js';
import { countBlindReindex, runBlindReindex } from './blind-reindex.js';
import { runReseal, type ResealProgress } from './reseal.js';

export type PhiJobName = 'reseal' | 'blind-reindex';

export const PHI_QUEUE = 'vesta-phi';

export interface PhiJobProgress extends ResealProgress {
  failed?: number;
}

export interface PhiMaintenanceOptions {
  /** Redis for BullMQ; without it the jobs run in-process. */
  redisUrl?: string;
  /** BullMQ key prefix (default "bull"); tests use a unique one. */
  prefix?: string;
  batchSize?: number;
  onProgress?: (job: PhiJobName, p: PhiJobProgress) => void;
}

type JobServices = Pick<Services, 'db' | 'store' | 'log' | 'audit'>;

/** Work left per job (0 when none). */
export async function pendingPhiWork(svc: JobServices): Promise<Record<PhiJobName, number>> {
  return { reseal: await svc.store.countStale(svc.db.knex), 'blind-reindex': await countBlindReindex(svc) };
}

/** The job id a job is scheduled under: one per key, so scheduling twice is one job. */
function jobId(svc: JobServices, name: PhiJobName): string {
  const mode = svc.store.phiIndexMode;
  return `${name}-${name === 'reseal' ? svc.store.activeKid : (mode.blind?.kid ?? 'none')}`;
}

export class PhiMaintenance {
  private stopping = false;
  private local: Promise<unknown> = Promise.resolve();
  private readonly localJobs: Promise<unknown>[] = [];
  private queue?: Queue;
  private worker?: Worker;
  private events?: QueueEvents;
  private readonly scheduled: Job[] = [];

  constructor(
    private readonly svc: JobServices,
    private readonly opts: PhiMaintenanceOptions = {},
  ) {}

  /** Runs one job to its end (or until stopped), reporting progress. */
  private async run(name: PhiJobName, report: (p: PhiJobProgress) => void | Promise<void>): Promise<PhiJobProgress> {
    const common = { shouldStop: () => this.stopping, onProgress: (p: PhiJobProgress) => void report(p), ...(this.opts.batchSize ? { batchSize: this.opts.batchSize } : {}) };
    return name === 'reseal' ? runReseal(this.svc, common) : runBlindReindex(this.svc, common);
  }

  /** Starts the BullMQ worker (a no-op without Redis); every node runs one. */
  async start(): Promise<void> {
    if (!this.opts.redisUrl || this.worker || this.stopping) return;
    const base = { connection: { url: this.opts.redisUrl }, ...(this.opts.prefix ? { prefix: this.opts.prefix } : {}) };
    this.queue = new Queue(PHI_QUEUE, base);
    this.worker = new Worker(
      PHI_QUEUE,
      async (job: Job) => {
        const name = job.name as PhiJobName;
        const result = await this.run(name, async (p) => {
          this.opts.onProgress?.(name, p);
          await job.updateProgress({ ...p });
        });
        // Stopped by a shutdown with work left: fail, so that a worker (here or on another node) retries.
        if (this.stopping && (await pendingPhiWork(this.svc))[name] > (result.failed ?? 0)) throw new Error(`${name} stopped by a shutdown before its end; it will be retried`);
        return result;
      },
      { ...base, concurrency: 1 },
    );
    this.worker.on('failed', (job, err) => this.svc.log.warn({ job: job?.name, err: { message: err.message } }, 'PHI maintenance job failed'));
    await this.worker.waitUntilReady();
  }

  /** Starts the worker (with Redis) and schedules every job that has work (or the named ones); returns the names scheduled. */
  async schedule(only?: PhiJobName[]): Promise<PhiJobName[]> {
    await this.start();
    const pending = await pendingPhiWork(this.svc);
    const names = (Object.keys(pending) as PhiJobName[]).filter((n) => (only ? only.includes(n) : pending[n] > 0));
    if (!names.length) return names;
    if (this.queue) {
      for (const name of names) {
        // Completed jobs stay a minute so a waiter never misses the end; failed ones go (a new schedule retries).
        this.scheduled.push(await this.queue!.add(name, {}, { jobId: jobId(this.svc, name), removeOnComplete: { age: 60 }, removeOnFail: true, attempts: 5, backoff: { type: 'exponential', delay: 1000 } }));
      }
      return names;
    }
    for (const name of names) {
      // One after the other; a failure is logged and does not stop the next job.
      const job = this.local.then(() => this.run(name, (p) => this.opts.onProgress?.(name, p)));
      job.catch((e: unknown) => this.svc.log.error({ job: name, err: { message: (e as Error)?.message } }, 'PHI maintenance job failed'));
      this.localJobs.push(job);
      this.local = job.catch(() => undefined);
    }
    return names;
  }

  /** Resolves when the jobs scheduled here have finished (rejects if one failed for good). */
  async drained(): Promise<void> {
    if (!this.opts.redisUrl) {
      await Promise.all(this.localJobs);
      return;
    }
    if (!this.scheduled.length) return;
    this.events ??= new QueueEvents(PHI_QUEUE, { connection: { url: this.opts.redisUrl }, ...(this.opts.prefix ? { prefix: this.opts.prefix } : {}) });
    await this.events.waitUntilReady();
    await Promise.all(this.scheduled.map((j) => j.waitUntilFinished(this.events!)));
  }

  /** Stops after the current batch and closes the Redis connections. */
  async close(): Promise<void> {
    this.stopping = true;
    await this.local;
    await this.worker?.close();
    await this.events?.close();
    await this.queue?.close();
  }
}
