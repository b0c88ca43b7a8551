// Test servers on a fresh real PostgreSQL database with the server's own database settings
// (statement timeout), optionally reached through a TCP proxy the test can cut and restore, and
// pg_stat_activity probes for "no query of this database is still running".
import { randomBytes } from 'node:crypto';
import { createServer, connect, type Server, type Socket } from 'node:net';
import pg from 'pg';
import { createLogger } from '../../src/log/logger.js';
import { buildServices, startServer } from '../../src/server.js';
import { openDatabase } from '../../src/storage/db.js';
import { freePort, testConfig, tokenFor, type TestServer } from './backends.js';

export async function admin<T = Record<string, unknown>>(sql: string, values: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: process.env.TEST_DATABASE_URL });
  await client.connect();
  try {
    return (await client.query(sql, values)).rows as T[];
  } finally {
    await client.end();
  }
}

/** A TCP forwarder to PostgreSQL that can refuse connections and cut the open ones, then come back on the same port. */
export class PgProxy {
  private server: Server | undefined;
  private sockets = new Set<Socket>();
  private constructor(readonly port: number, private readonly target: { host: string; port: number }) {}

  static async start(target: URL): Promise<PgProxy> {
    const p = new PgProxy(await freePort(), { host: target.hostname, port: Number(target.port || 5432) });
    await p.up();
    return p;
  }

  async up(): Promise<void> {
    const server = createServer((client) => {
      const upstream = connect(this.target.port, this.target.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => s.destroy());
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => resolve());
    });
    this.server = server;
  }

  /** Refuses new connections (the port is closed) and cuts the open ones: an outage as clients see it. */
  async down(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    for (const sock of this.sockets) sock.destroy();
    if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
  }
}

export interface PgTestServer extends TestServer {
  database: string;
}

/** A server over a fresh database on TEST_DATABASE_URL (through `proxy` when given), configured by env as production is. */
export async function startPgServer(env: Record<string, string> = {}, proxy?: PgProxy): Promise<PgTestServer> {
  const database = `vesta_t_${randomBytes(6).toString('hex')}`;
  await admin(`create database ${database}`);
  const u = new URL(process.env.TEST_DATABASE_URL!);
  u.pathname = `/${database}`;
  if (proxy) {
    u.hostname = '127.0.0.1';
    u.port = String(proxy.port);
  }
  const config = await testConfig({ DATABASE_URL: u.toString(), ...env });
  // As buildServices opens it in production: pool size and statement timeout from the configuration.
  const db = openDatabase({ databaseUrl: u.toString(), poolMax: config.databasePoolMax, statementTimeoutMs: config.databaseStatementTimeoutMs });
  const svc = await buildServices(config, createLogger(config.logLevel), db);
  const running = await startServer(svc);
  return {
    svc,
    running,
    url: running.url,
    database,
    token: await tokenFor(config.baseUrl),
    close: async () => {
      await running.close();
      await admin(`drop database if exists ${database} with (force)`);
    },
  };
}

/** Statements of `database` still running (other than idle sessions), as PostgreSQL sees them. */
export async function activeQueries(database: string): Promise<number> {
  // The audit ledger's own work (the sequencer linking every 100 ms, a request's record being
  // appended) is not a request's query left running.
  const rows = await admin<{ n: number }>("select count(*)::int as n from pg_stat_activity where datname = $1 and state <> 'idle' and pid <> pg_backend_pid() and query not like '%audit_%'", [database]);
  return rows[0].n;
}

/** Polls until `check` holds or `ms` pass; returns whether it held. */
export async function eventually(check: () => Promise<boolean>, ms: number, every = 50): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, every));
  }
}
