// Composition root: config -> dependencies -> HTTP server; SIGTERM/SIGINT shut down gracefully.
import { ConfigError, loadConfig } from './config/config.js';
import { createLogger } from './log/logger.js';
import { buildServices, startServer } from './server.js';
import { runReseal } from './jobs/reseal.js';

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
  const log = createLogger(config.logLevel);
  const svc = await buildServices(config, log);
  const running = await startServer(svc);
  log.info({ port: config.port, baseUrl: config.baseUrl, database: svc.db.kind }, 'Vesta FHIR R4 server listening');
  let stopping = false;
  // After a key rotation, versions on older keys are re-sealed in the background (in-process; the
  // job is idempotent, so several nodes doing it at once only share the rows via SKIP LOCKED).
  let resealing: Promise<unknown> = Promise.resolve();
  if ((await svc.store.countStale(svc.db.knex)) > 0) {
    resealing = runReseal(svc, {
      shouldStop: () => stopping,
      onProgress: (p) => log.info({ reseal: p, activeKid: svc.store.activeKid }, 're-sealing PHI on older keys'),
    }).catch((e: unknown) => log.error({ err: { message: (e as Error)?.message } }, 're-seal stopped with an error'));
  }
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down: draining in-flight requests');
    resealing.then(() => running.close()).then(
      () => {
        log.info('shutdown complete');
        process.exit(0);
      },
      (e: unknown) => {
        log.error({ err: { message: (e as Error)?.message } }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

const invokedDirectly = process.argv[1] && /main\.(js|ts)$/.test(process.argv[1]);
if (invokedDirectly) {
  serve().catch((e: unknown) => {
    process.stderr.write(`vesta: failed to start: ${(e as Error)?.message ?? String(e)}\n`);
    process.exit(1);
  });
}
