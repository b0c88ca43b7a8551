// Environment -> frozen, typed Config. A bad value stops start-up with one line naming the variable.
import { join, resolve } from 'node:path';
import { availableParallelism } from 'node:os';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface Config {
  port: number;
  host: string;
  baseUrl: string;
  /** Path under which FHIR is served, taken from BASE_URL ('' for the root). */
  basePath: string;
  databaseUrl: string | undefined;
  databasePoolMax: number;
  /** Server processes sharing the port (WEB_CONCURRENCY; node:cluster); 1 serves in this process. */
  webConcurrency: number;
  dataDir: string;
  redisUrl: string | undefined;
  maxBodyBytes: number;
  maxBundleEntries: number;
  searchDefaultCount: number;
  searchMaxCount: number;
  logLevel: LogLevel;
  corsOrigins: '*' | string[];
  shutdownTimeoutMs: number;
  pageTokenSecret: string | undefined;
  /** Seal PHI elements at rest (PHI_ENCRYPTION=on|off). */
  phiEncryption: boolean;
  /** Key ring: a JWKS-like JSON file, or the same JSON in PHI_KEYS. */
  phiKeysFile: string | undefined;
  phiKeys: string | undefined;
  phiPolicyFile: string | undefined;
  /** Extensions with no definition known to the server: accepted (the default) or refused (VALIDATION_UNKNOWN_EXTENSIONS). */
  unknownExtensions: 'accept' | 'reject';
  /** Authorization (AUTH=on|off): off is for local development only. */
  auth: boolean;
  /** Token-signing key ring: a JSON file (AUTH_KEYS_FILE), or the same JSON in AUTH_KEYS. */
  authKeysFile: string | undefined;
  authKeys: string | undefined;
  /** External token issuers trusted besides Vesta itself (AUTH_ISSUERS, JSON). */
  authIssuers: { issuer: string; audience: string }[];
  /** Accepted clock skew on token times, seconds (AUTH_CLOCK_SKEW, at most 60). */
  authClockSkewSeconds: number;
  /** How often each node reads new token revocations, ms (AUTH_REVOCATION_REFRESH). */
  authRevocationRefreshMs: number;
  /** The built-in SMART authorization server at [base]/auth (AUTH_SERVER=on|off; on by default with AUTH=on). */
  authServer: boolean;
  /** Access tokens for apps (AUTH_TOKEN_TTL, s), for Backend Services (AUTH_BACKEND_TOKEN_TTL, s, at most 300). */
  authTokenTtlSeconds: number;
  authBackendTokenTtlSeconds: number;
  /** offline_access refresh tokens (AUTH_REFRESH_TOKEN_TTL, s); online_access ones end with the session (AUTH_SESSION_TTL, s). */
  authRefreshTokenTtlSeconds: number;
  authSessionTtlSeconds: number;
  /** Login throttling: failures per user (AUTH_LOGIN_MAX_FAILURES) and per address (AUTH_LOGIN_MAX_FAILURES_ADDRESS) within AUTH_LOGIN_WINDOW seconds. */
  authLoginMaxFailures: number;
  authLoginMaxFailuresAddress: number;
  authLoginWindowMs: number;
  /** Client JWKS URLs on http://localhost (AUTH_JWKS_URI_LOOPBACK=on): development and tests only. */
  authJwksUriLoopback: boolean;
  /** Audit ledger (issue 16): AUDIT=off records nothing (benchmarks and local development only; warned at start). */
  audit: boolean;
  /** Audit ledger (issue 16): checkpoint-signing key ring (AUDIT_KEYS_FILE or AUDIT_KEYS; embedded default beside the data). */
  auditKeysFile: string | undefined;
  auditKeys: string | undefined;
  /** Directory of the checkpoint file (AUDIT_CHECKPOINT_DIR), outside the database. */
  auditCheckpointDir: string;
  /** A checkpoint every AUDIT_CHECKPOINT_EVERY linked entries or AUDIT_CHECKPOINT_SECONDS. */
  auditCheckpointEvery: number;
  auditCheckpointMs: number;
  /** How often the sequencer links committed entries (AUDIT_LINK_INTERVAL_MS). */
  auditLinkIntervalMs: number;
  /** Unlinked entries older than this fail `vesta audit verify` (AUDIT_MAX_UNLINKED_SECONDS). */
  auditMaxUnlinkedMs: number;
  /** Immunization registries to sync with (REGISTRY_CONFIG_FILE, a JSON file; issue 17): checked at start. */
  registryConfigFile: string | undefined;
  /** How long a registry run's lease and its BullMQ job lock last without renewal: a dead worker's run is taken over after about this (REGISTRY_TAKEOVER_SECONDS). */
  registryTakeoverMs: number;
  // Request bounds (issue 14, part B): search/history budgets, statement timeout, request deadline.
  /** Limits on one search or history request, checked before any SQL (SEARCH_MAX_*). */
  searchBudgets: {
    maxParameters: number;
    maxValues: number;
    maxRepeats: number;
    maxChainDepth: number;
    maxHasDepth: number;
    maxIncludes: number;
    maxSortKeys: number;
    maxQueryBytes: number;
  };
  /** Rounds of _include:iterate / _revinclude:iterate after the first (SEARCH_INCLUDE_ITERATE_DEPTH). */
  searchIncludeIterateDepth: number;
  /** PostgreSQL statement_timeout of request queries, ms; 0 = none (DATABASE_STATEMENT_TIMEOUT_MS). */
  databaseStatementTimeoutMs: number;
  /** Deadline of one request, ms; its running query is cancelled when it passes; 0 = none (REQUEST_TIMEOUT_MS). */
  requestTimeoutMs: number;
  // Validation cost (issue 14, part C).
  /** Most issues one validation reports; the rest are summed up in a last issue (VALIDATION_MAX_ISSUES). */
  validationMaxIssues: number;
  // Planner statistics after large writes (issue 14, part D).
  /** Rows changed in a searched table since its last ANALYZE that trigger one after writes; 0 = off (PLANNER_ANALYZE_THRESHOLD). */
  plannerAnalyzeThreshold: number;
  /** Quiet time after the last write before that ANALYZE, ms (PLANNER_ANALYZE_DELAY_MS). */
  plannerAnalyzeDelayMs: number;
  // Event-loop stalls (issue 14, part E).
  /** Compile every type's validators in the background after `serve` starts listening (VALIDATOR_WARMUP). */
  validatorWarmUp: boolean;
  /** Most JSON values in one request body, checked before parsing; above it 413 (MAX_BODY_VALUES). */
  maxBodyValues: number;
}

export class ConfigError extends Error {
  constructor(readonly variable: string, message: string) {
    super(`${variable}: ${message}`);
    this.name = 'ConfigError';
  }
}

type Env = Record<string, string | undefined>;

/** WEB_CONCURRENCY: a number of processes (1 to 64) or `auto` (one per core); more than one needs PostgreSQL. */
function webConcurrency(env: Env, databaseUrl: string | undefined): number {
  const raw = env.WEB_CONCURRENCY?.trim().toLowerCase();
  const n = raw === 'auto' ? availableParallelism() : int(env, 'WEB_CONCURRENCY', 1, 1, 64);
  if (n > 1 && !databaseUrl) throw new ConfigError('WEB_CONCURRENCY', `must be 1 without DATABASE_URL (the embedded database is opened by one process), got ${n}`);
  return n;
}

function int(env: Env, name: string, def: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return def;
  if (!/^\d+$/.test(raw.trim())) throw new ConfigError(name, `must be an integer between ${min} and ${max}, got "${raw}"`);
  const n = Number(raw.trim());
  if (n < min || n > max) throw new ConfigError(name, `must be between ${min} and ${max}, got ${n}`);
  return n;
}

const SIZE_UNITS: Record<string, number> = { b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 };

function bytes(env: Env, name: string, def: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return def;
  const m = /^(\d+)\s*(b|kb|mb|gb)?$/i.exec(raw.trim());
  if (!m) throw new ConfigError(name, `must be a size like 20mb or 1048576, got "${raw}"`);
  const n = Number(m[1]) * SIZE_UNITS[(m[2] ?? 'b').toLowerCase()];
  if (n < 1024 || n > 1024 ** 3) throw new ConfigError(name, 'must be between 1kb and 1gb');
  return n;
}

/** An on/off switch (part E). */
function onOff(env: Env, name: string, def: boolean): boolean {
  const raw = env[name]?.trim().toLowerCase();
  if (!raw) return def;
  if (raw !== 'on' && raw !== 'off') throw new ConfigError(name, 'must be on or off');
  return raw === 'on';
}

function url(env: Env, name: string, protocols: string[]): string | undefined {
  const raw = env[name];
  if (raw === undefined || raw === '') return undefined;
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new ConfigError(name, 'is not a valid URL');
  }
  if (!protocols.includes(u.protocol)) throw new ConfigError(name, `must use ${protocols.join(' or ')}`);
  return raw;
}

/** AUTH_ISSUERS: a JSON array of {"issuer": URL, "audience": string}, each issuer discovered at start of use. */
function issuers(env: Env): { issuer: string; audience: string }[] {
  const raw = env.AUTH_ISSUERS?.trim();
  if (!raw) return [];
  let list: unknown;
  try {
    list = JSON.parse(raw);
  } catch {
    throw new ConfigError('AUTH_ISSUERS', 'must be a JSON array of {"issuer": "https://...", "audience": "..."}');
  }
  if (!Array.isArray(list)) throw new ConfigError('AUTH_ISSUERS', 'must be a JSON array of {"issuer": "https://...", "audience": "..."}');
  return list.map((e: unknown, i) => {
    const o = e as { issuer?: unknown; audience?: unknown };
    if (!o || typeof o.issuer !== 'string' || typeof o.audience !== 'string' || !o.audience) throw new ConfigError('AUTH_ISSUERS', `entry ${i} needs "issuer" and "audience" strings`);
    let u: URL;
    try {
      u = new URL(o.issuer);
    } catch {
      throw new ConfigError('AUTH_ISSUERS', `entry ${i}: the issuer is not a URL`);
    }
    const loopback = u.hostname === 'localhost' || u.hostname === '127.0.0.1' || u.hostname === '[::1]';
    if (u.protocol !== 'https:' && !(u.protocol === 'http:' && loopback)) throw new ConfigError('AUTH_ISSUERS', `entry ${i}: the issuer must use https (http only on a loopback address)`);
    return { issuer: o.issuer, audience: o.audience };
  });
}

const LEVELS: LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Reads and validates the configuration; throws ConfigError naming the first bad variable. */
export function loadConfig(env: Env = process.env): Readonly<Config> {
  const port = int(env, 'PORT', 8080, 0, 65535);
  const host = env.HOST?.trim() || '0.0.0.0';
  const baseUrlRaw = url(env, 'BASE_URL', ['http:', 'https:']) ?? `http://localhost:${port}`;
  const base = new URL(baseUrlRaw);
  if (base.search || base.hash) throw new ConfigError('BASE_URL', 'must not carry a query or fragment');
  const basePath = base.pathname.replace(/\/+$/, '');
  const baseUrl = `${base.origin}${basePath}`;

  const logLevel = (env.LOG_LEVEL?.trim().toLowerCase() || 'info') as LogLevel;
  if (!LEVELS.includes(logLevel)) throw new ConfigError('LOG_LEVEL', `must be one of ${LEVELS.join(', ')}`);

  const corsRaw = env.CORS_ORIGINS?.trim() || '*';
  let corsOrigins: '*' | string[] = '*';
  if (corsRaw !== '*') {
    corsOrigins = corsRaw.split(',').map((s) => s.trim()).filter(Boolean);
    for (const o of corsOrigins) {
      let ok = false;
      try {
        const u = new URL(o);
        ok = (u.protocol === 'http:' || u.protocol === 'https:') && u.origin === o;
      } catch {
        ok = false;
      }
      if (!ok) throw new ConfigError('CORS_ORIGINS', `"${o}" is not an origin like https://app.example.org`);
    }
  }

  const searchMaxCount = int(env, 'SEARCH_MAX_COUNT', 1000, 1, 10000);
  const searchDefaultCount = int(env, 'SEARCH_DEFAULT_COUNT', 50, 1, 10000);
  if (searchDefaultCount > searchMaxCount) throw new ConfigError('SEARCH_DEFAULT_COUNT', 'must not exceed SEARCH_MAX_COUNT');

  const pageTokenSecret = env.PAGE_TOKEN_SECRET?.trim() || undefined;
  if (pageTokenSecret !== undefined && pageTokenSecret.length < 32) {
    throw new ConfigError('PAGE_TOKEN_SECRET', 'must be at least 32 characters');
  }

  const unknownExtensions = env.VALIDATION_UNKNOWN_EXTENSIONS?.trim().toLowerCase() || 'accept';
  if (unknownExtensions !== 'accept' && unknownExtensions !== 'reject') throw new ConfigError('VALIDATION_UNKNOWN_EXTENSIONS', 'must be accept or reject');

  const phiRaw = (env.PHI_ENCRYPTION?.trim().toLowerCase() || 'on');
  if (phiRaw !== 'on' && phiRaw !== 'off') throw new ConfigError('PHI_ENCRYPTION', 'must be on or off');
  const phiKeys = env.PHI_KEYS?.trim() || undefined;
  if (phiKeys !== undefined) {
    try {
      JSON.parse(phiKeys);
    } catch {
      throw new ConfigError('PHI_KEYS', 'must be the key ring as JSON');
    }
  }
  const phiKeysFile = env.PHI_KEYS_FILE?.trim() ? resolve(env.PHI_KEYS_FILE.trim()) : undefined;
  const databaseUrl = url(env, 'DATABASE_URL', ['postgres:', 'postgresql:']);
  if (phiRaw === 'on' && databaseUrl && !phiKeys && !phiKeysFile) {
    throw new ConfigError('PHI_KEYS_FILE', 'must name the key ring when DATABASE_URL is set (or set PHI_KEYS, or PHI_ENCRYPTION=off)');
  }

  const authRaw = env.AUTH?.trim().toLowerCase() || 'on';
  if (authRaw !== 'on' && authRaw !== 'off') throw new ConfigError('AUTH', 'must be on or off');
  const authKeys = env.AUTH_KEYS?.trim() || undefined;
  if (authKeys !== undefined) {
    try {
      JSON.parse(authKeys);
    } catch {
      throw new ConfigError('AUTH_KEYS', 'must be the signing key ring as JSON');
    }
  }
  const authKeysFile = env.AUTH_KEYS_FILE?.trim() ? resolve(env.AUTH_KEYS_FILE.trim()) : undefined;
  if (authRaw === 'on' && databaseUrl && !authKeys && !authKeysFile) {
    throw new ConfigError('AUTH_KEYS_FILE', 'must name the token-signing key ring when DATABASE_URL is set (or set AUTH_KEYS; create one with: vesta keys init-signing)');
  }
  const authIssuers = issuers(env);
  const auditRaw = env.AUDIT?.trim().toLowerCase() || 'on';
  if (auditRaw !== 'on' && auditRaw !== 'off') throw new ConfigError('AUDIT', 'must be on or off');
  if (auditRaw === 'on' && databaseUrl && !env.AUDIT_KEYS?.trim() && !env.AUDIT_KEYS_FILE?.trim()) {
    throw new ConfigError('AUDIT_KEYS_FILE', 'must name the audit checkpoint key ring when DATABASE_URL is set (or set AUDIT_KEYS; create one with: vesta keys init-audit)');
  }

  return Object.freeze({
    port,
    host,
    baseUrl,
    basePath,
    databaseUrl,
    databasePoolMax: int(env, 'DATABASE_POOL_MAX', 10, 1, 500),
    webConcurrency: webConcurrency(env, databaseUrl),
    dataDir: resolve(env.DATA_DIR?.trim() || './data'),
    redisUrl: url(env, 'REDIS_URL', ['redis:', 'rediss:']),
    maxBodyBytes: bytes(env, 'MAX_BODY_SIZE', 32 * 1024 ** 2),
    maxBundleEntries: int(env, 'MAX_BUNDLE_ENTRIES', 5000, 1, 100000),
    searchDefaultCount,
    searchMaxCount,
    logLevel,
    corsOrigins,
    shutdownTimeoutMs: int(env, 'SHUTDOWN_TIMEOUT_MS', 10000, 0, 600000),
    pageTokenSecret,
    phiEncryption: phiRaw === 'on',
    unknownExtensions,
    phiKeysFile,
    phiKeys,
    phiPolicyFile: env.PHI_POLICY_FILE?.trim() ? resolve(env.PHI_POLICY_FILE.trim()) : undefined,
    auth: authRaw === 'on',
    authKeysFile,
    authKeys,
    authIssuers,
    authClockSkewSeconds: int(env, 'AUTH_CLOCK_SKEW', 30, 0, 60),
    authRevocationRefreshMs: int(env, 'AUTH_REVOCATION_REFRESH', 10, 1, 3600) * 1000,
    authServer: authRaw === 'on' && onOff(env, 'AUTH_SERVER', true),
    authTokenTtlSeconds: int(env, 'AUTH_TOKEN_TTL', 3600, 60, 86400),
    authBackendTokenTtlSeconds: int(env, 'AUTH_BACKEND_TOKEN_TTL', 300, 30, 300),
    authRefreshTokenTtlSeconds: int(env, 'AUTH_REFRESH_TOKEN_TTL', 90 * 86400, 3600, 366 * 86400),
    authSessionTtlSeconds: int(env, 'AUTH_SESSION_TTL', 8 * 3600, 300, 7 * 86400),
    authLoginMaxFailures: int(env, 'AUTH_LOGIN_MAX_FAILURES', 5, 1, 1000),
    authLoginMaxFailuresAddress: int(env, 'AUTH_LOGIN_MAX_FAILURES_ADDRESS', 20, 1, 100000),
    authLoginWindowMs: int(env, 'AUTH_LOGIN_WINDOW', 900, 10, 86400) * 1000,
    authJwksUriLoopback: onOff(env, 'AUTH_JWKS_URI_LOOPBACK', false),
    audit: auditRaw === 'on',
    auditKeysFile: env.AUDIT_KEYS_FILE?.trim() ? resolve(env.AUDIT_KEYS_FILE.trim()) : undefined,
    auditKeys: env.AUDIT_KEYS?.trim() || undefined,
    auditCheckpointDir: resolve(env.AUDIT_CHECKPOINT_DIR?.trim() || join(resolve(env.DATA_DIR?.trim() || './data'), 'audit-checkpoints')),
    auditCheckpointEvery: int(env, 'AUDIT_CHECKPOINT_EVERY', 1000, 1, 10_000_000),
    auditCheckpointMs: int(env, 'AUDIT_CHECKPOINT_SECONDS', 60, 1, 86400) * 1000,
    auditLinkIntervalMs: int(env, 'AUDIT_LINK_INTERVAL_MS', 100, 10, 60000),
    auditMaxUnlinkedMs: int(env, 'AUDIT_MAX_UNLINKED_SECONDS', 60, 1, 86400) * 1000,
    registryConfigFile: env.REGISTRY_CONFIG_FILE?.trim() ? resolve(env.REGISTRY_CONFIG_FILE.trim()) : undefined,
    registryTakeoverMs: int(env, 'REGISTRY_TAKEOVER_SECONDS', 30, 5, 600) * 1000,
    // Request bounds (issue 14, part B). Defaults sit far above what real clients send: 30 ANDed
    // `name` values took 0.03 s, 100 took 0.66 s, 300 over 60 s (issue 14's measurements).
    searchBudgets: Object.freeze({
      maxParameters: int(env, 'SEARCH_MAX_PARAMETERS', 100, 1, 10000),
      maxValues: int(env, 'SEARCH_MAX_VALUES', 100, 1, 10000),
      maxRepeats: int(env, 'SEARCH_MAX_REPEATS', 20, 1, 1000),
      // parse.ts follows at most 4 hops of chains and _has together.
      maxChainDepth: int(env, 'SEARCH_MAX_CHAIN_DEPTH', 3, 1, 4),
      maxHasDepth: int(env, 'SEARCH_MAX_HAS_DEPTH', 2, 1, 4),
      maxIncludes: int(env, 'SEARCH_MAX_INCLUDES', 20, 0, 1000),
      // sort.ts serves at most 5 keys.
      maxSortKeys: int(env, 'SEARCH_MAX_SORT_KEYS', 5, 1, 5),
      maxQueryBytes: bytes(env, 'SEARCH_MAX_QUERY_SIZE', 8 * 1024),
    }),
    searchIncludeIterateDepth: int(env, 'SEARCH_INCLUDE_ITERATE_DEPTH', 3, 0, 10),
    databaseStatementTimeoutMs: int(env, 'DATABASE_STATEMENT_TIMEOUT_MS', 30000, 0, 3600000),
    requestTimeoutMs: int(env, 'REQUEST_TIMEOUT_MS', 120000, 0, 3600000),
    // Validation cost (issue 14, part C): an invalid resource is checked only a little past this
    // many issues, so a body of 64,000 bad items costs what 100 do.
    validationMaxIssues: int(env, 'VALIDATION_MAX_ISSUES', 100, 1, 100000),
    // Planner statistics (issue 14, part D): autovacuum analyzes a fresh table only after a minute or
    // more; until then chain/_has/sort plans have no statistics. 1000 rows is a few Synthea Bundles.
    plannerAnalyzeThreshold: int(env, 'PLANNER_ANALYZE_THRESHOLD', 1000, 0, 100000000),
    plannerAnalyzeDelayMs: int(env, 'PLANNER_ANALYZE_DELAY_MS', 2000, 0, 600000),
    // Event-loop stalls (issue 14, part E): ajv compiles a type on first use (up to ~0.5 s each);
    // warming them all after listening takes ~4.5 s of background CPU and ~150 MB.
    validatorWarmUp: onOff(env, 'VALIDATOR_WARMUP', true),
    // JSON.parse of a body is one task whose cost follows its number of values (10 million `{}` in
    // 30 MB: 12 s); the largest Synthea Bundle in the test data counts about 67,000.
    maxBodyValues: int(env, 'MAX_BODY_VALUES', 1_000_000, 1000, 100_000_000),
  });
}
