// One sync run with one immunization registry (issue 17, items 3-6): push sends the Immunizations
// changed in Vesta since the push watermark, pull stores the registry's Immunizations changed since
// the pull watermark for the Patients both sides know. In-process and one run at a time per registry
// and direction; the queue and schedule around it live elsewhere. Every read and write of local data
// goes through the interactions as the job's principal (validation, PHI sealing, authorization and an
// AuditEvent naming vesta-job:registry-sync), and a watermark only moves over records all handled,
// so a stopped or crashed run means a refetch, never a gap; re-sending is harmless (conditional
// create and update on identifiers) and skipped anyway when the version was handled before.
import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import type { Bundle, Resource as FhirResource } from 'fhir/r4.js';
import { jobPrincipal } from '../../auth/principal.js';
import { isFhirError } from '../../fhir/errors.js';
import { audited, newTrail } from '../../interactions/audit.js';
import { AuditTrail } from '../../audit/trail.js';
import type { InteractionResult, RequestContext, Services } from '../../interactions/context.js';
import { read } from '../../interactions/read.js';
import { search } from '../../interactions/search.js';
import { conditionalUpdate } from '../../interactions/update.js';
import {
  addReview,
  advanceWatermark,
  breakerFailure,
  breakerProbeUndecided,
  breakerSuccess,
  breakerTryProbe,
  getBreaker,
  getRecord,
  releaseRun,
  tryLeaseRun,
  getState,
  listChangedSince,
  recordOutcome,
  upsertState,
  type ChangedVersion,
  type RecordKey,
  type RegistryCounts,
  type RegistryRecord,
  type ReviewReason,
  type BreakerState,
  type SyncDirection,
} from '../../storage/registry-store.js';
import { RegistryError, type RegistryClient, type Resource, type SearchBundle } from './client.js';
import type { RegistryConfig } from './config.js';

export const JOB_NAME = 'registry-sync';
/** What each direction needs of local data, and nothing more (issue 17 item 5). */
export const PUSH_SCOPE = 'system/Immunization.r system/Patient.r';
export const PULL_SCOPE = 'system/Patient.s system/Immunization.cus';

export interface SyncReport extends RegistryCounts {
  direction: SyncDirection;
  watermarkBefore: Date | null;
  watermarkAfter: Date | null;
  /** Why the run stopped before the end of its window (one line, no PHI); absent when it finished. */
  stopped?: string;
  /** The run did not start: the registry's circuit breaker is open (`stopped` says until when). */
  notStarted?: boolean;
  /** The breaker when the run ended. */
  breaker: BreakerState;
}

/** Another worker (here or on another node) is running this direction of this registry. */
export class RunBusyError extends Error {
  constructor(registryId: string, direction: SyncDirection) {
    super(`registry ${registryId}: a ${direction} run is already in progress`);
    this.name = 'RunBusyError';
  }
}

/** How long a run's lease lasts without renewal (a killed worker's run is taken over after it). */
export const RUN_LEASE_MS = 30_000;

export interface SyncOptions {
  /** Push: versions written in the last lagMs are left for the next run (a write committing late keeps its earlier lastUpdated). Default 5000. */
  lagMs?: number;
  /** Push: local versions fetched per batch. Default 100. */
  batchSize?: number;
  /** Stops the run between records and cuts backoff waits short. */
  signal?: AbortSignal;
  /** For tests: the wall clock (ms) and the jitter source. */
  now?: () => number;
  random?: () => number;
  /** Called after each record handled, with the counts so far (a progress bar, a job's progress). */
  onProgress?: (counts: Readonly<RegistryCounts>) => void;
  /** Who runs it (a worker's id), for the run lease; default a new id per run. */
  holder?: string;
  /** For tests: the lease length (default RUN_LEASE_MS); renewed every third of it. */
  leaseMs?: number;
  /** Records handled at once (default 8); the registry's rate limit still spaces its requests. */
  concurrency?: number;
}

type Registry = Pick<RegistryConfig, 'id' | 'baseUrl' | 'pageSize' | 'patientIdentifierSystem' | 'retry' | 'deadLetterAfter' | 'breaker'>;

/** The run cannot go on (registry unreachable after retries, authorization refused, local outage). */
class RunStopped extends Error {
  /** Push: how far the records before the stop were all handled. */
  watermark?: Date | null;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RunStopped';
  }
}

// A failure that stopped a run is stored on the record (so a record failing run after run ends on
// the dead-letter list) as an issue with this code and prefix; it is not the registry's verdict on
// the record, so that version is tried again, unlike a rejection.
const PENDING_CODE = 'transient';
const PENDING_PREFIX = 'vesta: not handled yet: ';

function pendingOutcome(message: string) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: PENDING_CODE, diagnostics: `${PENDING_PREFIX}${message}` }] };
}

function rejectedOutcome(diagnostics: string) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'processing', diagnostics }] };
}

/** Whether a version needs no more work: sent or stored, rejected by the registry or Vesta, or dead-lettered. */
function settled(rec: RegistryRecord | undefined, version: string): boolean {
  if (!rec || rec.version !== version) return false;
  if (rec.status !== 'rejected') return true;
  const first = rec.lastError?.issue[0];
  return !(first?.code === PENDING_CODE && first.diagnostics?.startsWith(PENDING_PREFIX));
}

/** A registry error worth retrying: 5xx, 408, 429, timeouts and network errors. */
function transient(e: unknown): boolean {
  if (!(e instanceof RegistryError)) return false;
  if (e.code === 'timeout' || e.code === 'network') return true;
  return e.code === 'http' && e.status !== undefined && (e.status >= 500 || e.status === 408 || e.status === 429);
}

/** A failure that says the registry is not there: 5xx, timeouts and network errors (not 429, which is an answer). */
function breakerCounts(e: unknown): e is RegistryError {
  return e instanceof RegistryError && (e.code === 'timeout' || e.code === 'network' || (e.code === 'http' && e.status !== undefined && e.status >= 500));
}

/** The registry's refusal of this record (a 4xx other than 408, 429 and the authorization ones). */
function rejection(e: unknown): e is RegistryError {
  return e instanceof RegistryError && e.code === 'http' && e.status !== undefined && e.status >= 400 && e.status < 500 && ![401, 403, 408, 429].includes(e.status);
}

/** A failure that says nothing about the record: the run stops and nothing is stored on it. */
function jobWide(e: unknown): boolean {
  if (isFhirError(e)) return e.status === 401 || e.status === 403;
  return e instanceof RegistryError && (e.code === 'auth' || (e.code === 'http' && (e.status === 401 || e.status === 403)));
}

/** Vesta's refusal of a pulled record (invalid, several matches); not its outages or the job's own scopes. */
function localRejection(e: unknown): boolean {
  return isFhirError(e) && e.status < 500 && !jobWide(e) && e.code !== 'retry-exhausted';
}

/** A failure outside any record (a registry search, a page) ends the run as stopped, not as a crash. */
function asStop(e: unknown): unknown {
  return e instanceof RegistryError ? new RunStopped(e.message, { cause: e }) : e;
}

/**
 * Runs `fn` over `items` with at most `limit` at once, launching in order. After a failure nothing
 * more is launched; the calls in flight finish. `firstUndone` is the index of the first item that
 * failed or never ran (items.length when all succeeded), `error` that item's failure.
 */
export async function inOrderPool<T>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<void>): Promise<{ firstUndone: number; error?: unknown }> {
  let next = 0;
  let stopped = false;
  const failed = new Map<number, unknown>();
  const lane = async () => {
    while (!stopped && next < items.length) {
      const i = next++;
      try {
        await fn(items[i], i);
      } catch (e) {
        failed.set(i, e);
        stopped = true;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, lane));
  const first = Math.min(next, ...failed.keys());
  return failed.has(first) ? { firstUndone: first, error: failed.get(first) } : { firstUndone: first };
}

/** The value of `key`, made once by `make` and shared by concurrent callers; a failure is forgotten so a later caller tries again. */
function shared<K, V>(map: Map<K, Promise<V>>, key: K, make: () => Promise<V>): Promise<V> {
  let p = map.get(key);
  if (!p) {
    p = make();
    map.set(key, p);
    p.catch(() => map.delete(key));
  }
  return p;
}

const running = new Set<string>();
/** The longest Retry-After a run waits for (longer than registry.retry.maxDelayMs when that is shorter). */
const MAX_RETRY_AFTER_MS = 60_000;

class Run {
  readonly counts: RegistryCounts = { sent: 0, stored: 0, rejected: 0, retried: 0, deadLettered: 0, unmatched: 0, skipped: 0 };
  readonly runId = randomUUID();
  readonly now: () => number;
  private readonly random: () => number;
  /** Set when this run's failures opened the breaker, or the lease was lost: no more registry calls. */
  halted?: string;
  breaker: BreakerState = 'closed';

  constructor(
    readonly svc: Services,
    readonly registry: Registry,
    readonly client: RegistryClient,
    readonly direction: SyncDirection,
    readonly scope: string,
    readonly opts: SyncOptions,
  ) {
    this.now = opts.now ?? Date.now;
    this.random = opts.random ?? Math.random;
  }

  key(resourceId: string): RecordKey {
    return { registryId: this.registry.id, direction: this.direction, resourceType: 'Immunization', resourceId };
  }

  checkStop(): void {
    if (this.halted) throw new RunStopped(this.halted);
    if (this.opts.signal?.aborted) throw new RunStopped('stopped on request');
  }

  progress(): void {
    this.opts.onProgress?.(this.counts);
  }

  /** A registry call answered (whatever it said about the record): the breaker closes. */
  private async callSucceeded(): Promise<void> {
    if (await breakerSuccess(this.svc.db.knex, this.registry.id, new Date(this.now()))) this.breaker = 'closed';
  }

  /** A registry call failed for want of the registry (5xx, timeout, network): counted by the breaker. */
  private async callFailed(e: RegistryError): Promise<void> {
    const reason = e.status !== undefined ? `${e.code} ${e.status}` : e.code;
    const b = await breakerFailure(this.svc.db.knex, this.registry.id, this.registry.breaker.failures, reason, new Date(this.now()));
    this.breaker = b.state;
    if (b.state === 'open') {
      if (b.openedNow) this.svc.log.warn({ registry: this.registry.id, failures: b.consecutiveFailures, cooldownSeconds: this.registry.breaker.cooldownSeconds }, 'registry circuit breaker opened');
      this.halted = `circuit breaker open after ${b.consecutiveFailures} consecutive failed calls (last: ${reason})`;
    }
  }

  /** A local interaction as the job's principal, leaving its AuditEvent. */
  async local(interaction: string, type: string, run: (ctx: RequestContext) => Promise<InteractionResult>): Promise<InteractionResult> {
    const ctx: RequestContext = {
      requestId: this.runId,
      principal: jobPrincipal(JOB_NAME, this.scope),
      clock: () => new Date(this.now()),
      baseUrl: this.svc.config.baseUrl,
      audit: newTrail(interaction, type),
    };
    return audited(this.svc, () => ctx, () => run(ctx));
  }

  /** Local search, every page (the next link's query carries the page token). */
  async *localSearch(type: string, query: [string, string][]): AsyncGenerator<FhirResource> {
    let q: [string, string][] | undefined = query;
    while (q) {
      const r = await this.local('search-type', type, (ctx) => search(this.svc, ctx, { type, query: q! }));
      const bundle = r.body as Bundle;
      for (const e of bundle.entry ?? []) if (e.resource && e.search?.mode !== 'include') yield e.resource;
      const next = bundle.link?.find((l) => l.relation === 'next')?.url;
      q = next ? [...new URL(next).searchParams] : undefined;
    }
  }

  /**
   * A registry call with retries: exponential backoff with full jitter (a Retry-After is waited
   * instead when given), registry.retry.attempts calls in all. What keeps failing is thrown.
   */
  async registryCall<T>(call: () => Promise<T>): Promise<T> {
    const { attempts, baseDelayMs, maxDelayMs } = this.registry.retry;
    for (let attempt = 1; ; attempt++) {
      this.checkStop();
      let result: T;
      try {
        result = await call();
      } catch (e) {
        // A refusal is an answer: the registry is up. Only its absence counts against the breaker.
        if (breakerCounts(e)) await this.callFailed(e);
        else if (e instanceof RegistryError && e.code === 'http') await this.callSucceeded();
        if (this.halted) throw new RunStopped(this.halted, { cause: e });
        if (!transient(e) || attempt >= attempts) throw e;
        const backoff = this.random() * Math.min(maxDelayMs, baseDelayMs * 2 ** (attempt - 1));
        const asked = (e as RegistryError).retryAfterMs;
        // A registry asking for a long pause gets it from the schedule: the run stops, the next one retries.
        if (asked !== undefined && asked > Math.max(maxDelayMs, MAX_RETRY_AFTER_MS)) throw e;
        this.counts.retried++;
        const wait = asked ?? backoff;
        try {
          await delay(wait, undefined, this.opts.signal ? { signal: this.opts.signal } : {});
        } catch {
          throw new RunStopped('stopped on request');
        }
        continue;
      }
      await this.callSucceeded();
      return result;
    }
  }

  /**
   * What to do with a failure while handling a record: a rejection is stored with the registry's
   * OperationOutcome; anything else but a job-wide refusal counts a failed run on the record and
   * stops the run, unless that puts the record on the dead-letter list (then the run passes it).
   */
  async failed(resourceId: string, version: string, e: unknown, lastUpdated?: Date | null): Promise<'rejected' | 'dead-lettered'> {
    const key = this.key(resourceId);
    const deadLetterAfter = this.registry.deadLetterAfter;
    if (rejection(e)) return this.reject(resourceId, version, e.outcome ?? rejectedOutcome(e.message), lastUpdated);
    if (localRejection(e)) return this.reject(resourceId, version, rejectedOutcome(`Vesta refused it: ${(e as { code: string }).code}`), lastUpdated);
    if (e instanceof RunStopped || jobWide(e)) throw e instanceof RunStopped ? e : new RunStopped((e as Error).message, { cause: e });
    // Anything else is not the registry's or Vesta's answer but a fault here: not held against the record.
    if (!(e instanceof RegistryError) && !isFhirError(e)) throw e;
    const message = e instanceof RegistryError ? e.message : `Vesta answered ${e.status} (${e.code})`;
    const rec = await recordOutcome(this.svc.db.knex, key, { version, lastUpdated: lastUpdated ?? null, ok: false, error: pendingOutcome(message), deadLetterAfter });
    if (rec.status === 'dead-letter') {
      if (rec.deadLetteredNow) this.counts.deadLettered++;
      return 'dead-lettered';
    }
    throw new RunStopped(message, { cause: e });
  }

  /** Stores the refusal of this version with its OperationOutcome; it is not tried again. */
  async reject(resourceId: string, version: string, outcome: unknown, lastUpdated?: Date | null): Promise<'rejected' | 'dead-lettered'> {
    const rec = await recordOutcome(this.svc.db.knex, this.key(resourceId), { version, lastUpdated: lastUpdated ?? null, ok: false, error: outcome, deadLetterAfter: this.registry.deadLetterAfter });
    if (rec.status === 'dead-letter') {
      if (rec.deadLetteredNow) this.counts.deadLettered++;
      return 'dead-lettered';
    }
    this.counts.rejected++;
    return 'rejected';
  }

  /**
   * Records the disclosure of a local record to the registry (the local read that preceded it has a
   * record of its own): an AuditEvent with the job as agent, the record and its patient as entities.
   */
  async disclosed(resourceId: string, version: string, patient: string | undefined, what: string): Promise<void> {
    const trail = new AuditTrail(`job:${JOB_NAME}`);
    trail.resource('Immunization', resourceId, version, patient ? [patient] : []);
    const origin = { principal: jobPrincipal(JOB_NAME, this.scope), requestId: this.runId, clock: () => new Date(this.now()) };
    await this.svc.audit.appendNow([this.svc.audit.event(origin, trail, 200, `${what} registry ${this.registry.id}`)]);
  }

  async ok(resourceId: string, version: string, lastUpdated?: Date | null): Promise<void> {
    await recordOutcome(this.svc.db.knex, this.key(resourceId), { version, lastUpdated: lastUpdated ?? null, ok: true });
  }
}

/** Runs `body` as the only run of (registry, direction) in this process, and keeps its state row. */
async function runOnce(
  svc: Services,
  registry: Registry,
  client: RegistryClient,
  direction: SyncDirection,
  opts: SyncOptions,
  body: (run: Run, before: Date | null) => Promise<Date | null>,
): Promise<SyncReport> {
  const lock = `${registry.id}\n${direction}`;
  if (running.has(lock)) throw new RunBusyError(registry.id, direction);
  const q = svc.db.knex;
  const holder = `${opts.holder ?? 'run'}/${randomUUID()}`;
  const leaseMs = opts.leaseMs ?? RUN_LEASE_MS;
  const now = opts.now ?? Date.now;
  running.add(lock);
  let renew: NodeJS.Timeout | undefined;
  let probing: Run | undefined;
  try {
    // One run per (registry, direction) across every node: a lease, renewed while the run lasts (on
    // the wall clock, which the database's expiry check uses, whatever clock a test gives the run).
    if (!(await tryLeaseRun(q, registry.id, direction, holder, new Date(Date.now() + leaseMs)))) throw new RunBusyError(registry.id, direction);
    const run = new Run(svc, registry, client, direction, direction === 'push' ? PUSH_SCOPE : PULL_SCOPE, opts);
    renew = setInterval(() => {
      tryLeaseRun(q, registry.id, direction, holder, new Date(Date.now() + leaseMs)).then(
        (held) => {
          if (!held) run.halted = 'the run lost its lease (another worker took it over)';
        },
        (e: unknown) => svc.log.warn({ registry: registry.id, direction, err: { message: (e as Error)?.message } }, 'renewing the registry run lease failed'),
      );
    }, Math.max(10, Math.floor(leaseMs / 3)));
    renew.unref();

    // The breaker: closed, or open past its cool-down and this run is the one probe; else no run.
    const breaker = await getBreaker(q, registry.id);
    if (breaker.state !== 'closed') {
      if (!(await breakerTryProbe(q, registry.id, registry.breaker.cooldownSeconds, new Date(now())))) {
        const probeAt = new Date((breaker.openedAt ?? breaker.changedAt).getTime() + registry.breaker.cooldownSeconds * 1000);
        const why =
          breaker.state === 'open'
            ? `circuit breaker open since ${breaker.openedAt?.toISOString()} (${breaker.consecutiveFailures} consecutive failed calls, last: ${breaker.lastFailure ?? 'unknown'}); next probe after ${probeAt.toISOString()}`
            : 'circuit breaker half-open: another run is probing the registry';
        await upsertState(q, registry.id, direction, { lastOutcome: 'not-started', lastError: why });
        svc.log.warn({ registry: registry.id, direction }, `registry sync not started: ${why}`);
        const wm = (await getState(q, registry.id, direction))?.watermark ?? null;
        return { direction, ...run.counts, watermarkBefore: wm, watermarkAfter: wm, stopped: why, notStarted: true, breaker: breaker.state };
      }
      run.breaker = 'half-open';
      probing = run;
      svc.log.info({ registry: registry.id, direction }, 'registry circuit breaker half-open: this run probes the registry');
    }

    await upsertState(q, registry.id, direction, { lastRunStarted: new Date(now()), lastOutcome: 'running', lastError: null });
    const before = (await getState(q, registry.id, direction))?.watermark ?? null;
    let stopped: string | undefined;
    let next: Date | null = null;
    try {
      // The probe: one light call first, so a run with nothing to exchange still closes (or reopens) the breaker.
      if (run.breaker === 'half-open') await run.registryCall(() => client.request('GET', 'metadata', opts.signal ? { signal: opts.signal } : {}));
      next = await body(run, before);
    } catch (thrown) {
      const e = asStop(thrown);
      if (!(e instanceof RunStopped)) {
        // Not a registry or record problem (the database, a bug): the caller decides; status says so.
        await upsertState(q, registry.id, direction, { lastRunFinished: new Date(now()), lastOutcome: 'failed', lastError: `internal error (${(e as Error)?.name ?? 'unknown'})`, counts: run.counts }).catch(() => undefined);
        throw e;
      }
      stopped = e.message;
      next = e.watermark ?? null;
    }
    let after = before;
    if (next && (!before || next > before)) after = (await advanceWatermark(q, registry.id, direction, before, next)).watermark;
    await upsertState(q, registry.id, direction, {
      lastRunFinished: new Date(now()),
      lastOutcome: stopped ? 'stopped' : 'completed',
      lastError: stopped ?? null,
      counts: run.counts,
    });
    if (stopped) svc.log.warn({ registry: registry.id, direction, ...run.counts }, `registry sync stopped: ${stopped}`);
    else svc.log.info({ registry: registry.id, direction, ...run.counts }, 'registry sync finished');
    return { direction, ...run.counts, watermarkBefore: before, watermarkAfter: after, ...(stopped ? { stopped } : {}), breaker: run.breaker };
  } finally {
    clearInterval(renew);
    // A probe that got neither an answer nor a counted failure (stopped on request, the token refused)
    // decided nothing: the breaker is open again, with the cool-down already past, for the next run.
    if (probing) await breakerProbeUndecided(q, registry.id).catch(() => undefined);
    running.delete(lock);
    await releaseRun(q, registry.id, direction, holder).catch(() => undefined);
  }
}

/** The id of a `Patient/<id>` reference (relative, or absolute under `base`), else undefined. */
function patientId(reference: unknown, base: string): string | undefined {
  if (typeof reference !== 'string') return undefined;
  const rel = reference.startsWith(`${base}/`) ? reference.slice(base.length + 1) : reference;
  return /^Patient\/([A-Za-z0-9\-.]{1,64})$/.exec(rel)?.[1];
}

/** A resource as sent to the other side: its id and meta belong to the side it came from. */
function withoutEnvelope<T extends { id?: unknown; meta?: unknown }>(r: T): Omit<T, 'id' | 'meta'> {
  const { id: _id, meta: _meta, ...rest } = r;
  return rest;
}

type Identifier = { system?: string; value?: string };

function identifiersIn(r: object, system: string): string[] {
  const list = (r as { identifier?: unknown }).identifier;
  const ids = Array.isArray(list) ? (list as Identifier[]) : [];
  return [...new Set(ids.filter((i) => i?.system === system && typeof i.value === 'string' && i.value).map((i) => i.value!))];
}

/** Token search value: `|`, `,`, `$` and `\` in a system or value are escaped (search.html#escaping). */
function token(system: string, value: string): string {
  const esc = (s: string) => s.replace(/[\\|,$]/g, (c) => `\\${c}`);
  return `${esc(system)}|${esc(value)}`;
}

// --- push ------------------------------------------------------------------------------------------

/**
 * Sends the local Immunizations changed since the push watermark (up to now - lagMs), oldest first.
 * The watermark moves to the last record such that it and all before it are handled.
 */
export async function pushOnce(svc: Services, registry: Registry, client: RegistryClient, opts: SyncOptions = {}): Promise<SyncReport> {
  return runOnce(svc, registry, client, 'push', opts, async (run, before) => {
    const cutoff = new Date((opts.now ?? Date.now)() - (opts.lagMs ?? 5000));
    const batchSize = opts.batchSize ?? 100;
    // Per run: local Patients read, and the registry's id of each patient identifier made present there.
    const patients: PushCache = { local: new Map(), remote: new Map() };
    // Versions are handled in (lastUpdated, id) order; the watermark may only name a time all of whose
    // versions are handled, so it trails the record being handled by one distinct lastUpdated.
    let lastHandled: Date | null = null;
    let safe: Date | null = null;
    let cursor: { lastUpdated: Date; id?: string } | null = before ? { lastUpdated: before } : null;
    try {
      for (;;) {
        const batch = await listChangedSince(svc.db.knex, 'Immunization', cursor, cutoff, batchSize);
        if (!batch.length) break;
        // Several records at once; the watermark only counts the handled prefix of the batch.
        const { firstUndone, error } = await inOrderPool(batch, opts.concurrency ?? 8, async (v) => {
          run.checkStop();
          await pushRecord(run, v, patients);
          run.progress();
        });
        for (const v of batch.slice(0, firstUndone)) {
          if (lastHandled && lastHandled < v.lastUpdated) safe = lastHandled;
          lastHandled = v.lastUpdated;
        }
        if (firstUndone < batch.length) {
          // The first record not handled: its lastUpdated (and its equals) may not be passed.
          if (lastHandled && lastHandled < batch[firstUndone].lastUpdated) safe = lastHandled;
          throw error ?? new RunStopped('stopped on request');
        }
        const last = batch[batch.length - 1];
        cursor = { lastUpdated: last.lastUpdated, id: last.id };
        if (batch.length < batchSize) break;
      }
    } catch (thrown) {
      const e = asStop(thrown);
      if (e instanceof RunStopped) e.watermark = safe;
      throw e;
    }
    return lastHandled;
  });
}

interface PushCache {
  local: Map<string, Promise<FhirResource>>;
  remote: Map<string, Promise<string>>;
}

async function pushRecord(run: Run, v: ChangedVersion, patients: PushCache): Promise<void> {
  const { svc, registry, client } = run;
  const rec = await getRecord(svc.db.knex, run.key(v.id));
  if (settled(rec, String(v.versionId))) {
    run.counts.skipped++;
    return;
  }
  const ours = { identifier: token(`${svc.config.baseUrl}/Immunization`, v.id) };
  if (v.deleted) {
    try {
      await deleteAtRegistry(run, ours);
    } catch (e) {
      await run.failed(v.id, String(v.versionId), e);
      return;
    }
    await run.disclosed(v.id, String(v.versionId), undefined, 'deletion sent to');
    await run.ok(v.id, String(v.versionId));
    run.counts.sent++;
    return;
  }
  let imm: FhirResource & { patient?: { reference?: string }; meta?: { versionId?: string; source?: string } };
  try {
    imm = (await run.local('read', 'Immunization', (ctx) => read(svc, ctx, { type: 'Immunization', id: v.id }))).body as typeof imm;
  } catch (e) {
    // Deleted or gone since it was listed: its deletion is a later version, handled when reached.
    if (isFhirError(e) && (e.status === 404 || e.status === 410)) {
      run.counts.skipped++;
      return;
    }
    throw new RunStopped(isFhirError(e) ? `reading a local Immunization failed (${e.code})` : 'reading a local Immunization failed', { cause: e });
  }
  const version = imm.meta?.versionId ?? String(v.versionId);
  if (version !== String(v.versionId) && settled(await getRecord(svc.db.knex, run.key(v.id)), version)) {
    run.counts.skipped++;
    return;
  }
  // Pulled from this registry: sending it back would make it the registry's own duplicate.
  const source = imm.meta?.source;
  if (typeof source === 'string' && (source === registry.baseUrl || source.startsWith(`${registry.baseUrl}/`))) {
    run.counts.skipped++;
    return;
  }
  const reject = async (why: string) => void (await run.reject(v.id, version, rejectedOutcome(why)));
  const pid = patientId(imm.patient?.reference, svc.config.baseUrl);
  if (!pid) return reject('the Immunization does not reference a local Patient (Patient/<id>); not sent');
  let patient: FhirResource;
  try {
    patient = await shared(patients.local, pid, async () => (await run.local('read', 'Patient', (ctx) => read(svc, ctx, { type: 'Patient', id: pid }))).body as FhirResource);
  } catch (e) {
    if (isFhirError(e) && (e.status === 404 || e.status === 410)) return reject(`its Patient/${pid} does not exist here; not sent`);
    throw new RunStopped(isFhirError(e) ? `reading a local Patient failed (${e.code})` : 'reading a local Patient failed', { cause: e });
  }
  const value = identifiersIn(patient, registry.patientIdentifierSystem)[0];
  if (value === undefined) return reject(`its Patient/${pid} has no identifier in ${registry.patientIdentifierSystem}, which identifies patients at registry ${registry.id}; not sent`);
  try {
    const criteria = token(registry.patientIdentifierSystem, value);
    // One conditional create per patient, however many of its records are in flight.
    const remote = await shared(patients.remote, criteria, () => presentPatient(run, patient, criteria));
    const ownSystem = `${svc.config.baseUrl}/Immunization`;
    const body = withoutEnvelope(imm) as Resource & { identifier?: Identifier[] };
    const others = (Array.isArray(body.identifier) ? body.identifier : []).filter((i) => i?.system !== ownSystem);
    const sent: Resource = { ...body, resourceType: 'Immunization', identifier: [...others, { system: ownSystem, value: v.id }], patient: { reference: `Patient/${remote}` } };
    await run.registryCall(() => client.conditionalUpdate('Immunization', ours, sent, run.opts.signal ? { signal: run.opts.signal } : {}));
  } catch (e) {
    await run.failed(v.id, version, e);
    return;
  }
  await run.disclosed(v.id, version, pid, 'sent to');
  await run.ok(v.id, version);
  run.counts.sent++;
}

/** The registry's id of the Patient, created there by a conditional create on its identifier when new. */
async function presentPatient(run: Run, patient: FhirResource, criteria: string): Promise<string> {
  const { client, registry } = run;
  // References name local resources the registry does not have.
  const { generalPractitioner: _gp, managingOrganization: _mo, link: _link, ...body } = withoutEnvelope(patient as FhirResource & Record<string, unknown>);
  const o = run.opts.signal ? { signal: run.opts.signal } : {};
  const r = await run.registryCall(() => client.conditionalCreate(body as Resource, { identifier: criteria }, o));
  const id = r.resource?.id ?? (r.location ? /\/Patient\/([^/]+)/.exec(new URL(r.location, `${registry.baseUrl}/`).pathname)?.[1] : undefined);
  if (id) return id;
  const found = await run.registryCall(() => client.search('Patient', { identifier: criteria, _count: 2 }, o));
  const ids = (found.entry ?? []).filter((e) => e.resource?.resourceType === 'Patient').map((e) => e.resource!.id!);
  if (ids.length !== 1) throw new RegistryError('malformed', registry.id, `the Patient created by identifier is found ${ids.length} times`);
  return ids[0];
}

/** Deletes the Immunization Vesta sent; where the registry refuses deletes (405), marks it entered-in-error. */
async function deleteAtRegistry(run: Run, criteria: { identifier: string }): Promise<void> {
  const { client } = run;
  const o = run.opts.signal ? { signal: run.opts.signal } : {};
  const found = await run.registryCall(() => client.search('Immunization', { ...criteria, _count: 10 }, o));
  for (const e of found.entry ?? []) {
    const r = e.resource;
    if (r?.resourceType !== 'Immunization' || !r.id) continue;
    try {
      await run.registryCall(() => client.delete('Immunization', r.id!, o));
    } catch (err) {
      if (!(err instanceof RegistryError && err.code === 'http' && err.status === 405)) throw err;
      const marked: Resource = { ...(withoutEnvelope(r) as Resource), id: r.id, resourceType: 'Immunization', status: 'entered-in-error' };
      await run.registryCall(() => client.conditionalUpdate('Immunization', criteria, marked, o));
    }
  }
}

// --- pull ------------------------------------------------------------------------------------------

/**
 * Stores the registry's Immunizations changed since the pull watermark for every local Patient with
 * an identifier in the registry's system. The watermark moves to the newest registry lastUpdated
 * handled (no later than now - lagMs) only when the whole window is handled.
 */
export async function pullOnce(svc: Services, registry: Registry, client: RegistryClient, opts: SyncOptions = {}): Promise<SyncReport> {
  return runOnce(svc, registry, client, 'pull', opts, async (run, before) => {
    const sys = registry.patientIdentifierSystem;
    const o = opts.signal ? { signal: opts.signal } : {};
    const seen = new Set<string>();
    const remotePatients = new Map<string, Promise<Resource>>();
    const localMatches = new Map<string, Promise<string[]>>();
    let newest: Date | null = null;
    for await (const patient of run.localSearch('Patient', [
      // `system|`: any identifier in the system (search.html#token).
      ['identifier', token(sys, '')],
      ['_count', '100'],
    ])) {
      for (const value of identifiersIn(patient, sys)) {
        const q: Record<string, string> = { 'patient:Patient.identifier': token(sys, value), _count: String(registry.pageSize) };
        if (before) q._lastUpdated = `gt${before.toISOString()}`;
        let page: SearchBundle | undefined = await run.registryCall(() => client.search('Immunization', q, o));
        while (page) {
          // Patients the registry included in the page need no read.
          for (const e of page.entry ?? []) if (e.resource?.resourceType === 'Patient' && e.resource.id) remotePatients.set(e.resource.id, Promise.resolve(e.resource));
          const imms: Resource[] = [];
          for (const e of page.entry ?? []) {
            const imm = e.resource;
            if (imm?.resourceType !== 'Immunization' || !imm.id || seen.has(imm.id)) continue;
            seen.add(imm.id);
            imms.push(imm);
          }
          // The watermark moves only when the whole window is handled: any failure stops the run.
          const { error, firstUndone } = await inOrderPool(imms, opts.concurrency ?? 8, async (imm) => {
            run.checkStop();
            await pullRecord(run, imm, remotePatients, localMatches);
            run.progress();
            const lu = imm.meta?.lastUpdated ? new Date(imm.meta.lastUpdated) : null;
            if (lu && !Number.isNaN(lu.getTime()) && (!newest || lu > newest)) newest = lu;
          });
          if (firstUndone < imms.length) throw error ?? new RunStopped('stopped on request');
          const current: SearchBundle = page;
          page = await run.registryCall(() => client.nextPage(current, o));
        }
      }
    }
    // A registry write committing late may carry a lastUpdated before the newest seen: the lag keeps
    // the watermark behind it (what is fetched again is skipped by version).
    const limit = new Date((opts.now ?? Date.now)() - (opts.lagMs ?? 5000));
    // (Set in the pool's callbacks, which TypeScript's narrowing does not follow.)
    const last = newest as Date | null;
    return last && last > limit ? limit : last;
  });
}

async function pullRecord(run: Run, imm: Resource, remotePatients: Map<string, Promise<Resource>>, localMatches: Map<string, Promise<string[]>>): Promise<void> {
  const { svc, registry, client } = run;
  const ownSystem = `${svc.config.baseUrl}/Immunization`;
  // Vesta's own pushed records, seen again at the registry: already here.
  if (identifiersIn(imm, ownSystem).length) {
    run.counts.skipped++;
    return;
  }
  const id = imm.id!;
  const version = imm.meta?.versionId ?? imm.meta?.lastUpdated ?? '';
  const lastUpdated = imm.meta?.lastUpdated ? new Date(imm.meta.lastUpdated) : null;
  if (settled(await getRecord(svc.db.knex, run.key(id)), version)) {
    run.counts.skipped++;
    return;
  }
  const reference = `${registry.baseUrl}/Immunization/${id}`;
  const review = async (reason: ReviewReason, detail: string) => {
    await addReview(svc.db.knex, { registryId: registry.id, registryReference: reference, reason, detail });
    run.counts.unmatched++;
  };
  try {
    const rpid = patientId((imm.patient as { reference?: string } | undefined)?.reference, registry.baseUrl);
    if (!rpid) return review('no-match', 'the Immunization does not reference a Patient at the registry');
    const remote = await shared(remotePatients, rpid, () => run.registryCall(() => client.read('Patient', rpid, run.opts.signal ? { signal: run.opts.signal } : {})));
    const sys = registry.patientIdentifierSystem;
    const values = identifiersIn(remote, sys);
    const matches = new Set<string>();
    for (const value of values) {
      const t = token(sys, value);
      const ids = await shared(localMatches, t, async () => {
        const found: string[] = [];
        for await (const p of run.localSearch('Patient', [['identifier', t], ['_count', '2'], ['_elements', 'identifier']])) found.push(p.id!);
        return found;
      });
      for (const x of ids) matches.add(x);
    }
    if (matches.size === 0) return review('no-match', `no local Patient has the registry patient's identifier in ${sys}`);
    if (matches.size > 1) return review('several-matches', `${matches.size} local Patients have the registry patient's identifiers in ${sys}`);
    const local = [...matches][0];
    const theirs = `${registry.baseUrl}/Immunization`;
    const body = withoutEnvelope(imm) as Resource & { identifier?: Identifier[] };
    const others = (Array.isArray(body.identifier) ? body.identifier : []).filter((i) => i?.system !== theirs);
    const stored = { ...body, resourceType: 'Immunization', meta: { source: reference }, identifier: [...others, { system: theirs, value: id }], patient: { reference: `Patient/${local}` } };
    const criteria = new URLSearchParams({ identifier: token(theirs, id) }).toString();
    await run.local('update', 'Immunization', (ctx) => conditionalUpdate(svc, ctx, { type: 'Immunization', criteria, body: stored }));
  } catch (e) {
    await run.failed(id, version, e, lastUpdated);
    return;
  }
  await run.ok(id, version, lastUpdated);
  run.counts.stored++;
}
