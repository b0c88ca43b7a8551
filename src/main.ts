// Composition root: config -> dependencies -> HTTP server; SIGTERM/SIGINT shut down gracefully.
import { ConfigError, loadConfig } from './config/config.js';
import { createLogger } from './log/logger.js';
import { buildServices, startServer } from './server.js';
import { PhiMaintenance } from './jobs/phi-maintenance.js';
import { stopOnSignals } from './shutdown.js';
import { DataDirLockedError } from './storage/data-dir-lock.js';
import { loadRegistries, RegistryConfigError, type RegistryConfig } from './jobs/registry/config.js';
import { primeValidators, warmUpValidators } from './validation/validator.js';
import { RegistrySync } from './jobs/registry/scheduler.js';
import cluster from 'node:cluster';
import { superviseServers } from './cluster.js';
import { warnAboutRedis } from './jobs/redis-check.js';

export async function serve(): Promise<void> {
  let config;
  try {
    config = loadConfig();
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`vesta: configuration error: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
  // The registries (issue 17) are checked before anything starts: every problem on a line of its own.
  let registries: RegistryConfig[] = [];
  try {
    registries = config.registryConfigFile ? loadRegistries(config.registryConfigFile) : [];
  } catch (e) {
    if (e instanceof RegistryConfigError) {
      for (const p of e.problems) process.stderr.write(`vesta: configuration error: REGISTRY_CONFIG_FILE: ${p}\n`);
      process.exit(2);
    }
    throw e;
  }
  const log = createLogger(config.logLevel);
  // WEB_CONCURRENCY > 1: this process supervises that many server processes (cluster.ts), each of
  // which runs the rest of this function.
  if (config.webConcurrency > 1 && cluster.isPrimary) return superviseServers(config, log);
  const svc = await buildServices(config, log);
  // The shared part of the validators' compile is too long to run beside requests: before listening.
  if (config.validatorWarmUp) primeValidators();
  const running = await startServer(svc);
  log.info({ port: config.port, baseUrl: config.baseUrl, database: svc.db.kind }, 'Vesta FHIR R4 server listening');
  // The validators of every type are compiled in the background (validation/validator.ts), so no
  // request pays a type's first compile as one long stall of the event loop (issue 14).
  if (config.validatorWarmUp) {
    warmUpValidators().then(
      (w) => log.info(w, 'validators compiled for every resource type'),
      (e: unknown) => log.error({ err: { message: (e as Error)?.message } }, 'validator warm-up failed'),
    );
  }
  // After a key rotation, versions on older keys are re-sealed, and resources without blind index rows
  // on the active blind key are re-indexed, in the background: on BullMQ workers with REDIS_URL,
  // in-process without (jobs/phi-maintenance.ts; both jobs are idempotent and share rows via SKIP LOCKED).
  const maintenance = new PhiMaintenance(svc, {
    ...(config.redisUrl ? { redisUrl: config.redisUrl } : {}),
    onProgress: (job, p) => log.info({ job, progress: p, activeKid: svc.store.activeKid }, 'PHI maintenance in progress'),
  });
  // Not awaited: the server serves while Redis is reached or the jobs run.
  maintenance.schedule().then(
    (jobs) => jobs.length && log.info({ jobs, queue: config.redisUrl ? 'bullmq' : 'in-process' }, 'PHI maintenance scheduled'),
    (e: unknown) => log.error({ err: { message: (e as Error)?.message } }, 'PHI maintenance could not be scheduled'),
  );
  if (config.redisUrl) void warnAboutRedis(config.redisUrl, log);
  // Registry sync (jobs/registry/scheduler.ts): every node ticks the schedule; one claims each window.
  const registrySync = new RegistrySync(svc, registries, {
    ...(config.redisUrl ? { redisUrl: config.redisUrl } : {}),
    lockDurationMs: config.registryTakeoverMs,
    sync: { leaseMs: config.registryTakeoverMs },
  });
  registrySync.start().then(
    () => registries.length && log.info({ registries: registries.map((r) => r.id), queue: config.redisUrl ? 'bullmq' : 'in-process' }, 'registry sync scheduled'),
    (e: unknown) => log.error({ err: { message: (e as Error)?.message } }, 'registry sync could not be started'),
  );
  stopOnSignals(log, { stopping: 'shutting down: draining in-flight requests', stopped: 'shutdown complete', failed: 'shutdown failed' }, () =>
    Promise.all([maintenance.close(), registrySync.close()]).then(() => running.close()),
  );
}

const invokedDirectly = process.argv[1] && /main\.(js|ts)$/.test(process.argv[1]);
if (invokedDirectly) {
  serve().catch((e: unknown) => {
    process.stderr.write(`vesta: failed to start: ${(e as Error)?.message ?? String(e)}\n`);
    process.exit(e instanceof DataDirLockedError ? e.exitCode : 1);
  });
}
