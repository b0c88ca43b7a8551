// Test backends: the embedded PostgreSQL (PGlite, in memory) always; real PostgreSQL when
// TEST_DATABASE_URL names a server, each test file in its own fresh database.
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import pg from 'pg';
import { loadConfig, type Config } from '../../src/config/config.js';
import type { Services } from '../../src/interactions/context.js';
import { createLogger, type Logger } from '../../src/log/logger.js';
import { buildServices, startServer, type Running } from '../../src/server.js';
import { openDatabase, type Database } from '../../src/storage/db.js';
import { generateKeyRing } from '../../src/crypto/key-ring.js';
import { generateSigningRing, signAccessToken } from '../../src/auth/signing-keys.js';
import request from 'supertest';

/** One key ring per test process, so every test server seals PHI as production does. */
export const TEST_KEY_RING = generateKeyRing();
/** One token-signing ring per test process: every test server verifies bearer tokens as production does. */
export const TEST_SIGNING_RING = await generateSigningRing();
/** One audit checkpoint-signing ring per test process. */
export const TEST_AUDIT_RING = await generateSigningRing();

export interface TokenOptions {
  scope?: string;
  patient?: string;
  fhirUser?: string;
  clientId?: string;
  ttlSeconds?: number;
}

/** A token signed by the test server's own key ring (as `vesta token` signs them). */
export async function tokenFor(baseUrl: string, opts: TokenOptions = {}): Promise<string> {
  const { token } = await signAccessToken(TEST_SIGNING_RING, {
    issuer: baseUrl,
    audience: baseUrl,
    subject: opts.clientId ?? 'test-client',
    clientId: opts.clientId ?? 'test-client',
    scope: opts.scope ?? 'system/*.cruds',
    ttlSeconds: opts.ttlSeconds ?? 3600,
    ...(opts.patient ? { patient: opts.patient } : {}),
    ...(opts.fhirUser ? { fhirUser: opts.fhirUser } : {}),
  });
  return token;
}

/** A supertest agent for a server at `url` (its BASE_URL `baseUrl`) with a system/*.cruds token of the test signing ring. */
export async function agentFor(url: string, baseUrl = url) {
  return request.agent(url).set('Authorization', `Bearer ${await tokenFor(baseUrl)}`);
}

/** A supertest agent on the server whose every request carries a bearer token (system/*.cruds unless given). */
export function authed(t: { url: string; token: string }, token = t.token) {
  return request.agent(t.url).set('Authorization', `Bearer ${token}`);
}

export type BackendName = 'embedded' | 'pg';

/** The audit settings of a test server: the test ring, and checkpoints in a folder of its own outside the repository. */
export function testAuditEnv(): Record<string, string> {
  return { AUDIT_KEYS: JSON.stringify(TEST_AUDIT_RING), AUDIT_CHECKPOINT_DIR: mkdtempSync(join(tmpdir(), 'vesta-checkpoints-')) };
}

/** The configuration of a test server on a free port: the test key rings, silent logs, then `env`. */
export async function testConfig(env: Record<string, string> = {}): Promise<Config> {
  const port = String(await freePort());
  return loadConfig({
    PORT: port,
    HOST: '127.0.0.1',
    LOG_LEVEL: 'silent',
    BASE_URL: `http://127.0.0.1:${port}`,
    PAGE_TOKEN_SECRET: 'test-secret-test-secret-test-secret!',
    PHI_KEYS: JSON.stringify(TEST_KEY_RING),
    AUTH_KEYS: JSON.stringify(TEST_SIGNING_RING),
    ...testAuditEnv(),
    ...env,
  });
}

export function backends(): BackendName[] {
  return process.env.TEST_DATABASE_URL ? ['embedded', 'pg'] : ['embedded'];
}

/** Backends for tests about concurrency: real PostgreSQL when available, else embedded. */
export function concurrencyBackends(): BackendName[] {
  return process.env.TEST_DATABASE_URL ? ['pg', 'embedded'] : ['embedded'];
}

/** One statement on the TEST_DATABASE_URL server (creating and dropping test databases). */
export async function adminQuery(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: process.env.TEST_DATABASE_URL });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface TestServer {
  svc: Services;
  running: Running;
  url: string;
  /** A system/*.cruds token for this server. */
  token: string;
  close(): Promise<void>;
}

/** A fresh, empty database of the given backend (a new database on the pg server, dropped by drop()). */
export async function openTestDatabase(backend: BackendName): Promise<{ db: Database; drop?: () => Promise<void> }> {
  if (backend !== 'pg') return { db: openDatabase({ dataDir: ':memory:' }) };
  const name = `vesta_t_${randomBytes(6).toString('hex')}`;
  await adminQuery(`create database ${name}`);
  const u = new URL(process.env.TEST_DATABASE_URL!);
  u.pathname = `/${name}`;
  return { db: openDatabase({ databaseUrl: u.toString(), poolMax: 20 }), drop: () => adminQuery(`drop database if exists ${name} with (force)`) };
}

/** A server on a random port over a fresh database of the given backend. */
export async function startTestServer(backend: BackendName, env: Record<string, string> = {}, opts: { log?: Logger } = {}): Promise<TestServer> {
  const { db, drop } = await openTestDatabase(backend);
  const config = await testConfig(env);
  const svc = await buildServices(config, opts.log ?? createLogger('silent'), db);
  const running = await startServer(svc);
  return {
    svc,
    running,
    url: running.url,
    token: await tokenFor(config.baseUrl),
    close: async () => {
      await running.close();
      if (drop) await drop();
    },
  };
}
