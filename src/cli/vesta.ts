#!/usr/bin/env node
// The `vesta` command: serve, worker, migrate, load, keys, token.
import { ConfigError, loadConfig } from '../config/config.js';
import { serve } from '../main.js';
import { load } from './load.js';
import { parseArgs } from 'node:util';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { checkRing, generateKeyRing, rotate, rotateBlind } from '../crypto/key-ring.js';
import { runReseal } from '../jobs/reseal.js';
import { PHI_QUEUE, PhiMaintenance } from '../jobs/phi-maintenance.js';
import { stopOnSignals } from '../shutdown.js';
import { buildServices, loadSigningRing } from '../server.js';
import { checkSigningRing, generateSigningRing, rotateSigningRing, signAccessToken } from '../auth/signing-keys.js';
import { insertRevocation } from '../storage/revocation-store.js';
import { createLogger } from '../log/logger.js';
import { openDatabase } from '../storage/db.js';
import { addClient, addUser, AdminError, listClients, listUsers, setUserDisabled } from '../auth-server/admin.js';
import { withDatabase } from './database.js';
import type { ClientType } from '../auth-server/clients.js';
import { auditCommand } from './audit.js';
import { registryCommand, REGISTRY_USAGE } from './registry.js';
import { loadRegistries, RegistryConfigError } from '../jobs/registry/config.js';
import { RegistrySync, REGISTRY_QUEUE } from '../jobs/registry/scheduler.js';
import { warnAboutRedis } from '../jobs/redis-check.js';
import { DataDirLockedError } from '../storage/data-dir-lock.js';
import { analyzeTables, SEARCHED_TABLES } from '../storage/planner-stats.js';
import { migrateLatest } from '../storage/migrate.js';

const USAGE = `usage: vesta <command>
  serve     start the FHIR server (configuration from the environment, see README)
  migrate   apply pending database migrations and exit
  worker    run the background job worker only (BullMQ; needs REDIS_URL): the PHI re-seal and
            blind re-index jobs and the registry sync, without serving HTTP (every server also runs one)
  load <files or folders> [--url URL] [--concurrency N] [--ndjson-batch N] [--token TOKEN]
            post transaction/batch Bundles, single resources or NDJSON to a FHIR server
            (the bearer token from --token or VESTA_TOKEN)
  keys init                 print a new PHI key ring (JSON) to standard output
  keys rotate <ring file>   add a new active key to a ring file (old keys stay to open old data)
  keys reseal               re-encrypt every stored version still on an older key with the active key
                            (configuration from the environment, as for serve)
  token --scope "<scopes>" [--patient ID] [--fhir-user Type/id] [--client-id ID] [--ttl SECONDS]
            print an access token signed with this server's own key ring (configuration from
            the environment, as for serve; --ttl default 300, at most 86400)
  token revoke <jti> [--until ISO-8601]
            revoke a token id on every node (until the token would expire; default 24 hours;
            embedded database: only while the server is stopped, it reads revocations at start)
  users add <username> [--fhir-user Type/id] [--scope "<clinical scopes>"] [--password-stdin]
            add or update a user of the built-in authorization server (password from standard
            input, or VESTA_PASSWORD; scrypt-hashed, never logged)
  users list | users disable <username> | users enable <username>
  clients add <client_id> --type public|confidential-asymmetric --scope "<allowed scopes>"
            [--redirect-uri URI]... [--jwks-file FILE | --jwks-uri URL] [--name NAME]
            register (or update) a SMART client: public apps use PKCE; confidential-asymmetric
            apps and Backend Services authenticate with private_key_jwt against their JWKS
  clients list
${REGISTRY_USAGE}
  audit verify [--from POSITION] [--to POSITION]
            check the audit ledger: every entry's digest and hash, every checkpoint's signature
            and head (AUDIT_CHECKPOINT_DIR), and the not-yet-linked window; exit 1 on any break
  keys init-audit                    print a new audit checkpoint-signing key ring (JSON)
  keys init-signing                  print a new token-signing key ring (JSON)
  keys rotate-signing <ring file>    add a new active signing key (older keys keep verifying)
  keys rotate-blind <ring file>
                            replace the blind-index key; the servers re-index sealed PHI parameters on
                            their next start (searches on them are incomplete until that finishes)`;

/**
 * `vesta worker`: a node that takes jobs from the BullMQ queues and serves no HTTP (design.md "Jobs").
 * It schedules nothing itself: the servers add jobs when they find work on start.
 */
async function worker(): Promise<void> {
  const config = loadConfig();
  if (!config.redisUrl) throw new ConfigError('REDIS_URL', 'must be set for vesta worker (without Redis every server runs the jobs in-process)');
  const registries = config.registryConfigFile ? loadRegistries(config.registryConfigFile) : [];
  const log = createLogger(config.logLevel);
  await warnAboutRedis(config.redisUrl, log);
  const svc = await buildServices(config, log);
  const registrySync = new RegistrySync(svc, registries, { redisUrl: config.redisUrl, lockDurationMs: config.registryTakeoverMs, sync: { leaseMs: config.registryTakeoverMs } });
  const maintenance = new PhiMaintenance(svc, {
    redisUrl: config.redisUrl,
    onProgress: (job, p) => log.info({ job, progress: p, activeKid: svc.store.activeKid }, 'PHI maintenance in progress'),
  });
  await maintenance.start();
  await registrySync.start();
  log.info({ queues: [PHI_QUEUE, ...(registries.length ? [REGISTRY_QUEUE] : [])], registries: registries.map((r) => r.id) }, 'Vesta worker ready');
  stopOnSignals(log, { stopping: 'worker shutting down after the current batch', stopped: 'worker stopped', failed: 'worker shutdown failed' }, () =>
    Promise.all([maintenance.close(), registrySync.close()]).then(() => svc.db.close()),
  );
}

/** `vesta token`: a short-lived token signed with the server's own key ring, or `vesta token revoke`. */
async function token(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { scope: { type: 'string' }, patient: { type: 'string' }, 'fhir-user': { type: 'string' }, 'client-id': { type: 'string' }, ttl: { type: 'string' }, until: { type: 'string' } },
  });
  const config = loadConfig();
  const log = createLogger(config.logLevel === 'info' ? 'warn' : config.logLevel);
  if (positionals[0] === 'revoke') {
    const jti = positionals[1];
    if (!jti) throw new Error('usage: vesta token revoke <jti> [--until ISO-8601]');
    const until = values.until ? new Date(values.until) : new Date(Date.now() + 86400_000);
    if (Number.isNaN(until.getTime())) throw new Error('--until must be an ISO-8601 date-time');
    await withDatabase(config, (q) => insertRevocation(q, jti, until));
    process.stdout.write(
      config.databaseUrl
        ? `revoked ${jti} until ${until.toISOString()}; every node refuses it within AUTH_REVOCATION_REFRESH seconds\n`
        : `revoked ${jti} until ${until.toISOString()} in the embedded database at ${config.dataDir}; a server reads it at its next start (the embedded database is opened by one process at a time: run this while the server is stopped)\n`,
    );
    return 0;
  }
  if (positionals.length) throw new Error(`unexpected argument ${positionals[0]} (usage: vesta token --scope "<scopes>" ...)`);
  const scope = values.scope?.trim();
  if (!scope) throw new Error('--scope is required, e.g. --scope "system/*.cruds"');
  const ttl = Number(values.ttl ?? 300);
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > 86400) throw new Error('--ttl must be 1 to 86400 seconds');
  const patient = values.patient;
  if (patient !== undefined && !/^[A-Za-z0-9\-.]{1,64}$/.test(patient)) throw new Error('--patient must be a FHIR id');
  if (/(^|\s)patient\//.test(scope) && patient === undefined) process.stderr.write('vesta: warning: patient/ scopes grant nothing without --patient\n');
  const fhirUser = values['fhir-user'];
  if (fhirUser !== undefined && !/^(Practitioner|PractitionerRole|Patient|RelatedPerson|Person)\/[A-Za-z0-9\-.]{1,64}$/.test(fhirUser)) throw new Error('--fhir-user must be like Practitioner/123');
  const clientId = values['client-id'] ?? 'vesta-cli';
  const ring = await loadSigningRing(config, log);
  const issued = await signAccessToken(ring, {
    issuer: config.baseUrl,
    audience: config.baseUrl,
    subject: fhirUser ?? clientId,
    clientId,
    scope,
    ttlSeconds: ttl,
    ...(patient ? { patient } : {}),
    ...(fhirUser ? { fhirUser } : {}),
  });
  process.stdout.write(`${issued.token}\n`);
  process.stderr.write(`vesta: token ${issued.jti} for ${config.baseUrl}, expires ${issued.expiresAt.toISOString()}\n`);
  return 0;
}

async function readPassword(fromStdin: boolean): Promise<string> {
  if (!fromStdin && process.env.VESTA_PASSWORD) return process.env.VESTA_PASSWORD;
  if (!fromStdin && process.stdin.isTTY) throw new Error('give the password on standard input (--password-stdin) or in VESTA_PASSWORD');
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
}

async function users(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { 'fhir-user': { type: 'string' }, scope: { type: 'string' }, 'password-stdin': { type: 'boolean' } } });
  const [sub, username] = positionals;
  if (sub === 'add' && username) {
    const password = await readPassword(values['password-stdin'] === true);
    const r = await withDatabase(loadConfig(), (q) =>
      addUser(q, { username, password, ...(values['fhir-user'] ? { fhirUser: values['fhir-user'] } : {}), ...(values.scope ? { scopes: values.scope } : {}) }),
    );
    process.stdout.write(`user ${username} ${r}\n`);
    return 0;
  }
  if (sub === 'list') {
    const rows = await withDatabase(loadConfig(), (q) => listUsers(q));
    for (const u of rows) process.stdout.write(`${u.username}\t${u.fhirUser ?? '-'}\t${u.disabled ? 'disabled' : 'enabled'}\t${u.scopes}\n`);
    return 0;
  }
  if ((sub === 'disable' || sub === 'enable') && username) {
    const ok = await withDatabase(loadConfig(), (q) => setUserDisabled(q, username, sub === 'disable'));
    process.stdout.write(ok ? `user ${username} ${sub}d\n` : `no user ${username}\n`);
    return ok ? 0 : 1;
  }
  process.stderr.write(`${USAGE}\n`);
  return 2;
}

async function clients(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { type: { type: 'string' }, scope: { type: 'string' }, 'redirect-uri': { type: 'string', multiple: true }, 'jwks-file': { type: 'string' }, 'jwks-uri': { type: 'string' }, name: { type: 'string' } },
  });
  const [sub, clientId] = positionals;
  if (sub === 'add' && clientId) {
    let jwks: { keys: Record<string, unknown>[] } | undefined;
    if (values['jwks-file']) {
      try {
        jwks = JSON.parse(readFileSync(values['jwks-file'], 'utf8')) as { keys: Record<string, unknown>[] };
      } catch (e) {
        throw new Error(`--jwks-file: ${(e as Error).message}`);
      }
    }
    const config = loadConfig();
    const r = await withDatabase(config, (q) =>
      addClient(
        q,
        {
          client_id: clientId,
          type: values.type as ClientType,
          scope: values.scope ?? '',
          redirect_uris: values['redirect-uri'] ?? [],
          ...(values.name ? { client_name: values.name } : {}),
          ...(jwks ? { jwks } : {}),
          ...(values['jwks-uri'] ? { jwks_uri: values['jwks-uri'] } : {}),
        },
        { allowLoopbackJwksUri: config.authJwksUriLoopback },
      ),
    );
    process.stdout.write(`client ${clientId} ${r}\n`);
    return 0;
  }
  if (sub === 'list') {
    const rows = await withDatabase(loadConfig(), (q) => listClients(q));
    for (const c of rows) process.stdout.write(`${c.clientId}\t${String(c.metadata.type)}\t${String(c.metadata.scope)}\t${((c.metadata.redirect_uris as string[]) ?? []).join(' ')}\n`);
    return 0;
  }
  process.stderr.write(`${USAGE}\n`);
  return 2;
}

async function main(argv: string[]): Promise<number> {
  const [cmd] = argv;
  switch (cmd) {
    case 'serve':
      await serve();
      return -1;
    case 'worker':
      await worker();
      return -1;
    case 'migrate': {
      const config = loadConfig();
      const db = openDatabase({ ...(config.databaseUrl ? { databaseUrl: config.databaseUrl } : {}), dataDir: config.dataDir });
      try {
        const applied = await migrateLatest(db.knex);
        // Migrations may rebuild index tables: give the planner statistics now, not when autovacuum gets to it.
        if (applied.length) await analyzeTables(db.knex, SEARCHED_TABLES);
        process.stdout.write(applied.length ? `applied: ${applied.join(', ')}\n` : 'database is up to date\n');
      } finally {
        await db.close();
      }
      return 0;
    }
    case 'keys': {
      const [sub, file] = argv.slice(1);
      if (sub === 'init-audit') {
        process.stdout.write(JSON.stringify(await generateSigningRing(), null, 2) + '\n');
        return 0;
      }
      if (sub === 'init-signing') {
        process.stdout.write(JSON.stringify(await generateSigningRing(), null, 2) + '\n');
        return 0;
      }
      if (sub === 'rotate-signing' && file) {
        const next = await rotateSigningRing(checkSigningRing(JSON.parse(readFileSync(file, 'utf8'))));
        writeFileSync(`${file}.tmp`, JSON.stringify(next, null, 2) + '\n', { mode: 0o600 });
        renameSync(`${file}.tmp`, file);
        process.stdout.write(`active signing key is now ${next.active}; ${next.keys.length} keys in the ring. Restart the servers to sign with it; tokens signed with the older keys keep verifying until you remove them.\n`);
        return 0;
      }
      if (sub === 'init') {
        process.stdout.write(JSON.stringify(generateKeyRing(), null, 2) + '\n');
        return 0;
      }
      if (sub === 'reseal') {
        const config = loadConfig();
        const log = createLogger(config.logLevel === 'info' ? 'warn' : config.logLevel);
        const svc = await buildServices(config, log);
        try {
          const r = await runReseal(svc, {
            onProgress: (p) => process.stdout.write(`reseal: ${p.done}/${p.total} versions on the active key ${svc.store.activeKid ?? ''}\n`),
          });
          const left = await svc.store.countStale(svc.db.knex);
          process.stdout.write(`reseal finished: ${r.done} versions re-sealed, ${left} left on older keys\n`);
          return left === 0 ? 0 : 1;
        } finally {
          await svc.db.close();
        }
      }
      if (sub === 'rotate-blind' && file) {
        const next = rotateBlind(checkRing(JSON.parse(readFileSync(file, 'utf8'))));
        writeFileSync(`${file}.tmp`, JSON.stringify(next, null, 2) + '\n', { mode: 0o600 });
        renameSync(`${file}.tmp`, file);
        process.stdout.write(`blind-index key is now ${next.blind.kid}. Restart the servers: they re-index sealed PHI parameters in the background, and searches on them miss resources not yet re-indexed until it finishes.\n`);
        return 0;
      }
      if (sub === 'rotate' && file) {
        const ring = checkRing(JSON.parse(readFileSync(file, 'utf8')));
        const next = rotate(ring);
        writeFileSync(`${file}.tmp`, JSON.stringify(next, null, 2) + '\n', { mode: 0o600 });
        renameSync(`${file}.tmp`, file);
        process.stdout.write(`active key is now ${next.active}; ${next.keys.length} keys in the ring. Restart the servers to write with it.\n`);
        return 0;
      }
      process.stderr.write(`${USAGE}\n`);
      return 2;
    }
    case 'token':
      return token(argv.slice(1));
    case 'users':
      return users(argv.slice(1));
    case 'audit':
      return auditCommand(argv.slice(1));
    case 'registry':
      return registryCommand(argv.slice(1));
    case 'clients':
      return clients(argv.slice(1));
    case 'load': {
      const { values, positionals } = parseArgs({
        args: argv.slice(1),
        allowPositionals: true,
        options: { url: { type: 'string' }, concurrency: { type: 'string' }, 'ndjson-batch': { type: 'string' }, token: { type: 'string' } },
      });
      const bearer = values.token ?? process.env.VESTA_TOKEN;
      if (!positionals.length) {
        process.stderr.write(`${USAGE}\n`);
        return 2;
      }
      const url = values.url ?? process.env.BASE_URL ?? 'http://localhost:8080';
      const concurrency = Number(values.concurrency ?? 4);
      const ndjsonBatch = Number(values['ndjson-batch'] ?? 500);
      if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 64) throw new Error('--concurrency must be 1 to 64');
      if (!Number.isInteger(ndjsonBatch) || ndjsonBatch < 1) throw new Error('--ndjson-batch must be a positive integer');
      const s = await load(positionals, { url, concurrency, ndjsonBatch, out: process.stdout, ...(bearer ? { headers: { Authorization: `Bearer ${bearer}` } } : {}) });
      process.stdout.write(
        `loaded ${s.bundles} bundles/requests from ${s.files} files: ${s.resources} resources in ${s.seconds.toFixed(1)}s ` +
          `(${(s.resources / Math.max(s.seconds, 0.001)).toFixed(0)} resources/s), ${s.failures.length} failures\n`,
      );
      for (const f of s.failures) process.stdout.write(`  failed: ${f.source}: ${f.status ? `HTTP ${f.status}: ` : ''}${f.reason}\n`);
      return s.failures.length ? 1 : 0;
    }
    default:
      process.stderr.write(`${USAGE}\n`);
      return cmd === undefined || cmd === 'help' || cmd === '--help' ? 0 : 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (e: unknown) => {
    if (e instanceof ConfigError) process.stderr.write(`vesta: configuration error: ${e.message}\n`);
    else if (e instanceof RegistryConfigError) for (const p of e.problems) process.stderr.write(`vesta: configuration error: REGISTRY_CONFIG_FILE: ${p}\n`);
    else if (e instanceof AdminError) process.stderr.write(`vesta: ${e.message.split('\n').join('\nvesta: ')}\n`);
    else process.stderr.write(`vesta: ${(e as Error)?.message ?? String(e)}\n`);
    process.exit(e instanceof ConfigError || e instanceof RegistryConfigError ? 2 : e instanceof DataDirLockedError ? e.exitCode : 1);
  },
);
