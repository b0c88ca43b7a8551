// Database handle: pg with a pool when DATABASE_URL is set, embedded PostgreSQL (PGlite) otherwise.
// The same migrations and SQL serve both. This folder is the only code that imports knex or pg.
import { AsyncLocalStorage } from 'node:async_hooks';
import { mkdirSync } from 'node:fs';
import knexPkg from 'knex';
import type { Knex } from 'knex';
import ClientPgLite from 'knex-pglite';
import pg from 'pg';
import { acquireDataDirLock, type DataDirLock } from './data-dir-lock.js';

const knexFactory = (knexPkg as unknown as { knex?: typeof knexPkg }).knex ?? knexPkg;

// int8 (bigint, e.g. history seq and counts) as JS numbers: values stay far below 2^53.
pg.types.setTypeParser(20, (v: string) => Number(v));

export type Db = Knex;
export type Tx = Knex.Transaction;
export type Queryable = Knex | Knex.Transaction;

export interface DbOptions {
  databaseUrl?: string;
  poolMax?: number;
  /** Directory for the embedded database; ':memory:' for an in-memory one (tests). */
  dataDir?: string;
  /** statement_timeout of request queries on PostgreSQL, ms (0 or unset: none). PGlite cannot interrupt a statement. */
  statementTimeoutMs?: number;
}

export interface Database {
  knex: Knex;
  kind: 'pg' | 'embedded';
  close(): Promise<void>;
}

/** Opens the database described by the options. */
export function openDatabase(opts: DbOptions): Database {
  if (opts.databaseUrl) {
    const timeout = opts.statementTimeoutMs ?? 0;
    const knex = knexFactory({
      client: 'pg',
      // A session setting sent at connect: every statement is bounded, the server enforces it.
      // jit=off: JIT compilation of a search's many sub-plans cost seconds per query (Patient/x/* 8.4 s
      // with JIT, 0.1 s without, 73 Synthea bundles, issue 14) for no gain at these row counts.
      connection: { connectionString: opts.databaseUrl, application_name: 'vesta', options: '-c jit=off', ...(timeout > 0 ? { statement_timeout: timeout } : {}) },
      pool: { min: 0, max: opts.poolMax ?? 10 },
      acquireConnectionTimeout: 30000,
      // knex prefixes a failed statement to its error message; with values inlined that would carry
      // search values (PHI) into the logs. Placeholders only.
      compileSqlOnError: false,
    });
    guardQueries(knex, true, timeout > 0);
    return { knex, kind: 'pg', close: () => knex.destroy() };
  }
  const dir = opts.dataDir ?? './data';
  let connection: Record<string, string> = {};
  let lock: DataDirLock | undefined;
  if (dir !== ':memory:') {
    const path = `${dir.replace(/\/+$/, '')}/pgdata`;
    mkdirSync(path, { recursive: true });
    // Before PGlite touches the files: a second process on the same folder would diverge silently.
    lock = acquireDataDirLock(dir);
    connection = { filename: path };
  }
  // PGlite is single-connection: knex-pglite fixes the pool at one, which serializes all access.
  const knex = knexFactory({
    client: ClientPgLite as unknown as Knex.Config['client'],
    dialect: 'postgres',
    connection,
    acquireConnectionTimeout: 120000,
    compileSqlOnError: false,
  } as Knex.Config);
  guardQueries(knex, false, false);
  return { knex, kind: 'embedded', close: () => knex.destroy().finally(() => lock?.release()) };
}

/** PostgreSQL error codes that mean "the same work may succeed if tried again". */
const RETRYABLE = new Set(['40001', '40P01']);

export function pgCode(e: unknown): string | undefined {
  const c = (e as { code?: unknown })?.code;
  return typeof c === 'string' ? c : undefined;
}

export class RetryExhausted extends Error {
  constructor(readonly attempts: number, cause: unknown) {
    super(`transaction retried ${attempts} times`, { cause });
  }
}

/**
 * Runs fn in one database transaction, retrying on serialization failures and deadlocks, and on
 * unique violations when the caller says a retry resolves them (e.g. two update-as-creates).
 */
export async function withTransaction<T>(
  knex: Knex,
  fn: (tx: Tx) => Promise<T>,
  opts: { attempts?: number; retryOnUniqueViolation?: boolean } = {},
): Promise<T> {
  // Inside an open transaction this is a savepoint: a retry must restart the outermost
  // transaction, so nested calls run once and let the error travel up.
  const attempts = (knex as { isTransaction?: boolean }).isTransaction ? 1 : (opts.attempts ?? 5);
  let last: unknown;
  for (let i = 0; i < attempts; i++) {
    try {
      return await knex.transaction(fn);
    } catch (e) {
      const code = pgCode(e);
      const retry = (code && RETRYABLE.has(code)) || (opts.retryOnUniqueViolation && code === '23505');
      if (!retry) throw e;
      last = e;
      await new Promise((r) => setTimeout(r, 2 + Math.random() * 10 * (i + 1)));
    }
  }
  if (attempts === 1) throw last;
  throw new RetryExhausted(attempts, last);
}

/** Takes a transaction-scoped advisory lock (released at commit or rollback). */
export async function advisoryXactLock(q: Queryable, key: bigint): Promise<void> {
  await q.raw('select pg_advisory_xact_lock(?::bigint)', [key.toString()]);
}

/**
 * Takes several transaction-scoped advisory locks in one statement, one after the other in the
 * order given (a volatile function in the select list is evaluated after the ORDER BY).
 */
export async function advisoryXactLocks(q: Queryable, keys: bigint[]): Promise<void> {
  if (!keys.length) return;
  if (keys.length === 1) return advisoryXactLock(q, keys[0]);
  await q.raw('select pg_advisory_xact_lock(k.v::bigint) from json_array_elements_text(?::json) with ordinality as k(v, n) order by k.n', [
    JSON.stringify(keys.map((k) => k.toString())),
  ]);
}

interface PgConnection {
  query(config: { name: string; text: string; values: unknown[] }): Promise<{ rows: unknown[] }>;
}
interface KnexClientInternals {
  pglite?: unknown;
  acquireConnection(): Promise<PgConnection>;
  cancelQuery(conn: PgConnection): Promise<unknown>;
  releaseConnection(c: PgConnection): Promise<unknown>;
}

/**
 * Rows of a hot read (read by id), run outside any transaction on real PostgreSQL as a named prepared
 * statement on a pooled connection: no query builder, no re-parse and re-plan per call (measured about
 * 25% more reads/s than the knex builder in-process). `text` uses $1.. placeholders; inside a
 * transaction or on the embedded database it goes through knex.raw with the same values.
 */
export async function preparedRows<T>(q: Queryable, name: string, text: string, values: unknown[]): Promise<T[]> {
  const client = (q as unknown as { client: KnexClientInternals }).client;
  if (!(q as { isTransaction?: boolean }).isTransaction && client.pglite === undefined) {
    const conn = await client.acquireConnection();
    try {
      const work = () => conn.query({ name, text, values }).catch((e: unknown) => discardIfBroken(conn, e));
      return (await underSignal(work, text, () => client.cancelQuery(conn))).rows as T[];
    } finally {
      await client.releaseConnection(conn);
    }
  }
  const r = (await q.raw(text.replace(/\$\d+/g, '?'), values as Knex.RawBinding[])) as { rows: T[] };
  return r.rows;
}

// Request scope (design.md: "nothing a request starts may outlive it"). http/deadline.ts runs each
// request under an AbortSignal; every query started in that async context checks it first and, on
// PostgreSQL, is cancelled in the server (pg_cancel_backend from a separate connection) when it fires.
const requestSignal = new AsyncLocalStorage<AbortSignal>();

/**
 * A statement refused or cancelled because its request's signal fired; `reason` is the signal's.
 * A wrapper because knex rewrites the message of whatever a statement throws (it prefixes the SQL).
 */
export class RequestAborted extends Error {
  constructor(readonly reason: unknown) {
    super('the request was aborted');
    this.name = 'RequestAborted';
  }
}

/** Runs fn with its queries bound to signal: none starts after it fires, a running one is cancelled. */
export function runWithSignal<T>(signal: AbortSignal, fn: () => T): T {
  return requestSignal.run(signal, fn);
}

/**
 * Runs fn outside any request scope: work shared by many requests (a group append of audit records)
 * must not be cancelled because the request that happened to start it hit its deadline.
 */
export function detached<T>(fn: () => T): T {
  return requestSignal.exit(fn);
}

interface GuardedClient {
  _query(conn: unknown, obj: { sql?: string }): Promise<unknown>;
  cancelQuery(conn: unknown): Promise<unknown>;
}

/** Runs one statement of the current request scope (if any) under its signal. */
async function underSignal<T>(work: () => Promise<T>, sql: string | undefined, cancel: (() => Promise<unknown>) | undefined): Promise<T> {
  const signal = requestSignal.getStore();
  // Transaction ends always run: knex neither retries a refused COMMIT nor rolls back after it, so
  // refusing one would return the connection to the pool inside an open transaction.
  if (!signal || /^\s*(rollback|commit)\b/i.test(sql ?? '')) return work();
  if (signal.aborted) throw new RequestAborted(signal.reason);
  let cancelling: Promise<unknown> | undefined;
  const onAbort = () => {
    cancelling = cancel?.().catch(() => undefined);
  };
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    return await work();
  } catch (e) {
    throw signal.aborted ? new RequestAborted(signal.reason) : e;
  } finally {
    signal.removeEventListener('abort', onAbort);
    // The connection goes back to the pool only once the cancel was delivered, so a late cancel cannot
    // hit the next statement on it (an idle backend ignores a cancel).
    if (cancelling) await cancelling;
  }
}

/**
 * Wraps the dialect's statement runner: request-scoped statements honour the request's signal, and
 * background transactions (migrations, jobs: no request scope) are exempt from the statement timeout.
 */
function guardQueries(knex: Knex, cancellable: boolean, timeout: boolean): void {
  const client = knex.client as unknown as GuardedClient;
  const raw = client._query.bind(client);
  const run = (conn: unknown, obj: { sql?: string }) => raw(conn, obj).catch((e: unknown) => discardIfBroken(conn, e));
  client._query = async (conn, obj) => {
    if (!requestSignal.getStore()) {
      const r = await run(conn, obj);
      if (timeout && /^\s*begin/i.test(obj.sql ?? '')) await run(conn, { sql: 'set local statement_timeout = 0' });
      return r;
    }
    return underSignal(() => run(conn, obj), obj.sql, cancellable ? () => client.cancelQuery(conn) : undefined);
  };
}

/**
 * A connection whose server ended it (57P01, a cut socket) reports that only on its next event
 * tick; marked now, knex destroys it on release instead of handing it to the next request.
 */
function discardIfBroken(conn: unknown, e: unknown): never {
  if (databaseUnavailable(e) && conn && typeof conn === 'object') {
    const c = conn as { __knex__disposed?: unknown };
    c.__knex__disposed ??= e;
  }
  throw e;
}

/** PostgreSQL codes and socket errors that mean "the database is not reachable now", not "this request is wrong". */
const UNAVAILABLE_CODES = new Set(['57P01', '57P02', '57P03', '53300', '08000', '08001', '08003', '08004', '08006', 'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EPIPE', 'EAI_AGAIN']);

/** True for a database outage, a connection lost mid-request or an exhausted pool (answered 503, retry later). */
export function databaseUnavailable(e: unknown): boolean {
  const x = e as { code?: unknown; name?: unknown; message?: unknown; errors?: unknown } | undefined;
  if (!x || typeof x !== 'object') return false;
  if (typeof x.code === 'string' && UNAVAILABLE_CODES.has(x.code)) return true;
  // knex: "Knex: Timeout acquiring a connection. The pool is probably full."
  if (x.name === 'KnexTimeoutError') return true;
  // knex prefixes the driver's message with the statement: matched anywhere, at the end.
  if (typeof x.message === 'string' && /(Connection terminated|Client has encountered a connection error and is not queryable|Connection ended unexpectedly)[^\n]*$/.test(x.message)) return true;
  // Node reports a refused connection to every address of a host as one AggregateError.
  return Array.isArray(x.errors) && x.errors.some((inner) => databaseUnavailable(inner));
}

/** PostgreSQL cancelled the statement because statement_timeout passed (57014 is also a user cancel). */
export function isStatementTimeout(e: unknown): boolean {
  return pgCode(e) === '57014' && /statement timeout/i.test(String((e as { message?: unknown }).message ?? ''));
}

/**
 * Deletes the rows of `table` owned by these resources. One owner (every single write) by plain
 * equality, probed by the owner index: joined to json_to_recordset (estimated at 100 rows) the planner
 * chose a hash join over a full scan of the table, 10 ms at 20,000 rows and growing with it (issue 18). Shared by the index tables' writes (search-store.ts, blind-index-store.ts).
 */
export function ownerDelete(table: string, owners: { t: string; i: string }[]): { sql: string; bindings: string[] } {
  if (owners.length === 1) return { sql: `delete from ${table} where resource_type = ? and resource_id = ?`, bindings: [owners[0].t, owners[0].i] };
  return { sql: `delete from ${table} x using json_to_recordset(?::json) as o(t text, i text) where x.resource_type = o.t and x.resource_id = o.i`, bindings: [JSON.stringify(owners)] };
}
