// Wiring shared by `vesta serve` and the tests: config -> dependencies -> HTTP server, and the
// graceful shutdown that undoes it (stop accepting, finish in-flight requests, close pools).
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Config } from './config/config.js';
import { Auditor } from './audit/auditor.js';
import { AuditSequencer } from './audit/sequencer.js';
import { FileCheckpointSink } from './audit/checkpoint.js';
import { ConfigError } from './config/config.js';
import { PlaintextCodec, type PhiCodec } from './crypto/phi-codec.js';
import { JweCodec } from './crypto/jwe-codec.js';
import { checkRing, LocalKeyRing, readOrCreateRingFile, type KeyRingFile } from './crypto/key-ring.js';
import { loadPhiPolicy } from './crypto/phi-policy.js';
import { resourceTypeInfo } from './fhir/definitions.js';
import { join } from 'node:path';
import { createApp } from './http/app.js';
import { SmartAuthServer } from './auth-server/index.js';
import { answerClientErrors } from './http/client-error.js';
import type { Services } from './interactions/context.js';
import { createLogger, type Logger } from './log/logger.js';
import { PageTokens } from './search/page-token.js';
import { openDatabase, type Database } from './storage/db.js';
import { migrateLatest } from './storage/migrate.js';
import { analyzeTables, PlannerStats, SEARCHED_TABLES } from './storage/planner-stats.js';
import { R4Validator } from './validation/validator.js';
import { ResourceStore } from './storage/resource-store.js';
import { AuthService } from './auth/authenticator.js';
import { RevocationList } from './auth/revocations.js';
import { checkSigningRing, readOrCreateSigningRing, type SigningRingFile } from './auth/signing-keys.js';

/** The token-signing key ring the configuration names (embedded default: beside the data, created on first start). */
export async function loadSigningRing(config: Readonly<Config>, log: Logger): Promise<SigningRingFile> {
  if (config.authKeys) return checkSigningRing(JSON.parse(config.authKeys));
  if (config.authKeysFile) return (await readOrCreateSigningRing(config.authKeysFile, false)).ring;
  const path = join(config.dataDir, 'auth-keys.json');
  const r = await readOrCreateSigningRing(path, true);
  if (r.created) log.warn({ path }, 'generated a new token-signing key ring beside the embedded database; tokens signed with it stop verifying if it is lost');
  return r.ring;
}

/**
 * The audit checkpoint-signing key ring (AUDIT_KEYS or AUDIT_KEYS_FILE; the embedded default lives
 * beside the data and is created on first start, as the other rings are).
 */
export async function loadAuditRing(config: Readonly<Config>, log: Logger | undefined, create: boolean): Promise<SigningRingFile> {
  try {
    if (config.auditKeys) return checkSigningRing(JSON.parse(config.auditKeys));
    if (config.auditKeysFile) return (await readOrCreateSigningRing(config.auditKeysFile, false)).ring;
    const path = join(config.dataDir, 'audit-keys.json');
    const r = await readOrCreateSigningRing(path, create && !config.databaseUrl);
    if (r.created) log?.warn({ path }, 'generated a new audit checkpoint key ring beside the embedded database; checkpoints signed with it cannot be checked without it');
    return r.ring;
  } catch (e) {
    throw new ConfigError(config.auditKeys ? 'AUDIT_KEYS' : 'AUDIT_KEYS_FILE', (e as Error).message.replace('vesta keys init-signing', 'vesta keys init-audit'));
  }
}

/** The resource server's authentication: own key ring, trusted external issuers, shared revocations. */
export async function buildAuth(config: Readonly<Config>, log: Logger, database: Database): Promise<AuthService> {
  if (!config.auth) log.warn('AUTH=off: authorization is disabled and every request is allowed; for local development only');
  const revocations = new RevocationList(database.knex, config.authRevocationRefreshMs);
  await revocations.start();
  return new AuthService({
    enabled: config.auth,
    issuer: config.baseUrl,
    audience: config.baseUrl,
    ring: await loadSigningRing(config, log),
    external: config.authIssuers,
    skewSeconds: config.authClockSkewSeconds,
    revocations,
  });
}

/** The PHI codec the configuration asks for (design.md "PHI at rest"). */
export async function buildCodec(config: Readonly<Config>, log: Logger): Promise<PhiCodec> {
  if (!config.phiEncryption) {
    log.warn('PHI_ENCRYPTION=off: resources are stored as plaintext JSON');
    return new PlaintextCodec();
  }
  const policy = loadPhiPolicy(config.phiPolicyFile, resourceTypeInfo().map((t) => t.type));
  let ring: KeyRingFile;
  if (config.phiKeys) ring = checkRing(JSON.parse(config.phiKeys));
  else if (config.phiKeysFile) ring = readOrCreateRingFile(config.phiKeysFile, false).ring;
  else {
    // Embedded default only (config refuses DATABASE_URL without keys): a ring beside the data.
    const path = join(config.dataDir, 'phi-keys.json');
    const r = readOrCreateRingFile(path, true);
    if (r.created) log.warn({ path }, 'generated a new PHI key ring beside the embedded database; back it up: without it the PHI cannot be read');
    ring = r.ring;
  }
  return new JweCodec(await LocalKeyRing.fromFile(ring), policy);
}

/** Opens the database, runs migrations and builds the services. */
export async function buildServices(config: Readonly<Config>, log: Logger = createLogger(config.logLevel), db?: Database): Promise<Services> {
  const database =
    db ?? openDatabase({ ...(config.databaseUrl ? { databaseUrl: config.databaseUrl } : {}), poolMax: config.databasePoolMax, dataDir: config.dataDir, statementTimeoutMs: config.databaseStatementTimeoutMs });
  const applied = await migrateLatest(database.knex);
  if (applied.length) {
    log.info({ migrations: applied }, 'migrations applied');
    // Migrations may rebuild index tables; plans should not wait for autovacuum to see them.
    await analyzeTables(database.knex, SEARCHED_TABLES).catch((e: unknown) => log.warn({ err: { message: (e as Error)?.message } }, 'ANALYZE after migrations failed'));
  }
  if (!config.audit) log.warn('AUDIT=off: no AuditEvent is recorded; for benchmarks and local development only');
  const codec = await buildCodec(config, log);
  if (!config.pageTokenSecret) log.warn('PAGE_TOKEN_SECRET is not set: paging links are signed with a per-process key and stop working on restart or on another node');
  return {
    config,
    db: database,
    store: new ResourceStore(codec),
    audit: new Auditor(database.knex, codec, { baseUrl: config.baseUrl, enabled: config.audit, log }),
    pageTokens: new PageTokens(config.pageTokenSecret),
    validator: new R4Validator({ unknownExtensions: config.unknownExtensions, maxIssues: config.validationMaxIssues }),
    auth: await buildAuth(config, log, database),
    log,
  };
}

export interface Running {
  server: Server;
  /** The built-in SMART authorization server (AUTH_SERVER=on). */
  authServer: SmartAuthServer | undefined;
  url: string;
  /** Background ANALYZE after large writes (storage/planner-stats.ts). */
  stats: PlannerStats;
  /** Links the audit ledger and writes its checkpoints (undefined with AUDIT=off). */
  sequencer: AuditSequencer | undefined;
  close(): Promise<void>;
}

/** Starts listening; close() drains in-flight requests (bounded by shutdownTimeoutMs) and closes the pool. */
export async function startServer(svc: Services): Promise<Running> {
  const sequencer = svc.config.audit
    ? new AuditSequencer(svc.db.knex, {
        ledger: svc.config.baseUrl,
        ring: await loadAuditRing(svc.config, svc.log, true),
        sink: new FileCheckpointSink(svc.config.auditCheckpointDir),
        intervalMs: svc.config.auditLinkIntervalMs,
        checkpointEvery: svc.config.auditCheckpointEvery,
        checkpointMs: svc.config.auditCheckpointMs,
        log: svc.log,
      })
    : undefined;
  // Entries a previous process appended but did not link (a crash) are linked now.
  await sequencer?.start();
  const authServer = svc.config.authServer ? await SmartAuthServer.create(svc) : undefined;
  const app = createApp(svc, authServer ? { authServer } : {});
  const server = createServer(app);
  answerClientErrors(server, svc.log);
  const stats = new PlannerStats(svc.db.knex, {
    kind: svc.db.kind,
    threshold: svc.config.plannerAnalyzeThreshold,
    debounceMs: svc.config.plannerAnalyzeDelayMs,
    maxWaitMs: Math.max(10000, svc.config.plannerAnalyzeDelayMs),
    log: svc.log,
  });
  // Every successful write may have been a large one (a Bundle, a step of `vesta load`); the check
  // itself is one catalogue query after writes pause, so counting entries here is not needed.
  server.on('request', (req, res) => {
    if (req.method === 'GET' || req.method === 'HEAD' || req.method === 'OPTIONS') return;
    res.once('finish', () => {
      if (res.statusCode < 300) stats.poke();
    });
  });
  // Idle keep-alive sockets outlive a load balancer's (commonly 60 s). headersTimeout must exceed
  // keepAliveTimeout: otherwise Node may close a reused socket while a client is sending its next
  // request ("other side closed"; seen in npm run bench while loading 699 Bundles over 4 sockets).
  server.keepAliveTimeout = 65000;
  server.headersTimeout = 66000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(svc.config.port, svc.config.host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      const drained = new Promise<void>((resolve) => server.close(() => resolve()));
      // Keep-alive sockets become idle once their request is answered; close them as they do.
      server.closeIdleConnections();
      const sweep = setInterval(() => server.closeIdleConnections(), 50);
      const timer = setTimeout(() => server.closeAllConnections(), svc.config.shutdownTimeoutMs);
      await drained;
      clearInterval(sweep);
      clearTimeout(timer);
      authServer?.close();
      svc.auth.close();
      await stats.close();
      // Every record appended is linked and checkpointed before the pool closes.
      await svc.audit.drain();
      await sequencer?.stop();
      await svc.db.close();
    })();
    return closing;
  };
  return { server, authServer, url: `http://127.0.0.1:${addr.port}`, stats, sequencer, close };
}
