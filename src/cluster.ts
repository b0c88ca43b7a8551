// Serving on every core (issue 18): with WEB_CONCURRENCY above 1 the process started as the server
// becomes a supervisor that applies the migrations once, then forks that many server processes
// (node:cluster) sharing the port. Each is a whole Vesta, like a node behind a load balancer: its own
// pool (DATABASE_POOL_MAX each), audit sequencer (one links at a time, advisory lock), job ticker and
// worker. The supervisor serves nothing; it replaces a server process that dies, gives up when they
// keep dying, and on SIGTERM or SIGINT stops them all gracefully and exits 0 when each did.
import cluster from 'node:cluster';
import type { Logger } from 'pino';
import type { Config } from './config/config.js';
import { openDatabase } from './storage/db.js';
import { migrateLatest } from './storage/migrate.js';

/** More exits than this per process within a minute: something is wrong with every one of them. */
const MAX_EXITS_PER_MINUTE = 5;

export async function superviseServers(config: Readonly<Config>, log: Logger): Promise<void> {
  // Once, before any server process opens the database: knex's migration lock refuses concurrent runs.
  const db = openDatabase({ ...(config.databaseUrl ? { databaseUrl: config.databaseUrl } : {}), poolMax: 1, dataDir: config.dataDir, statementTimeoutMs: 0 });
  try {
    const applied = await migrateLatest(db.knex);
    if (applied.length) log.info({ migrations: applied }, 'migrations applied');
  } finally {
    await db.close();
  }

  const n = config.webConcurrency;
  let stopping = false;
  const exits: number[] = [];
  // How each process ended during the shutdown: 0, or killed by the SIGTERM itself (one still starting
  // has no handler yet and nothing in flight) is clean.
  const codes: (number | string)[] = [];
  for (let i = 0; i < n; i++) cluster.fork();
  log.info({ processes: n, port: config.port }, 'Vesta supervisor started the server processes');

  const stop = (signal: string, code: number) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping the server processes');
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
    // Each drains within SHUTDOWN_TIMEOUT_MS; one that does not is killed a little later.
    const force = setTimeout(() => {
      for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGKILL');
    }, config.shutdownTimeoutMs + 5000);
    force.unref();
    const done = () => {
      if (Object.keys(cluster.workers ?? {}).length) return;
      const failed = code || codes.some((c) => c !== 0 && c !== 'SIGTERM');
      log.info({ exitCodes: codes }, failed ? 'server processes stopped, not all cleanly' : 'shutdown complete');
      process.exit(failed ? 1 : 0);
    };
    cluster.on('exit', () => setImmediate(done));
    done();
  };

  cluster.on('exit', (worker, code, signal) => {
    if (stopping) {
      codes.push(code ?? signal ?? 'unknown');
      return;
    }
    const now = Date.now();
    exits.push(now);
    while (exits[0] < now - 60_000) exits.shift();
    log.error({ pid: worker.process.pid, code, signal }, 'a server process exited; starting another');
    if (exits.length > MAX_EXITS_PER_MINUTE * n) {
      log.error({ exitsInLastMinute: exits.length }, 'server processes keep exiting: stopping');
      stop('exits', 1);
      return;
    }
    setTimeout(() => {
      if (!stopping) cluster.fork();
    }, 500);
  });
  process.on('SIGTERM', () => stop('SIGTERM', 0));
  process.on('SIGINT', () => stop('SIGINT', 0));
}
