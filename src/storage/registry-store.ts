// Registry sync state (migration 0013, issue 17): watermarks, runs, counts and breakers per registry
// and direction; each record's last version handled and failures; the review list; claimed windows.
// Every change that several nodes may make at once is one statement, made safe by the database.
import { withTransaction, type Queryable } from './db.js';

export type SyncDirection = 'push' | 'pull';
export type BreakerState = 'closed' | 'open' | 'half-open';

export interface RegistryCounts {
  sent: number;
  stored: number;
  rejected: number;
  retried: number;
  deadLettered: number;
  unmatched: number;
  skipped: number;
}

/** Count names as stored in registry_state.counts (constants: they are written into SQL). */
const COUNT_KEYS: Record<keyof RegistryCounts, string> = {
  sent: 'sent',
  stored: 'stored',
  rejected: 'rejected',
  retried: 'retried',
  deadLettered: 'dead_lettered',
  unmatched: 'unmatched',
  skipped: 'skipped',
};
const COUNT_NAMES = Object.keys(COUNT_KEYS) as (keyof RegistryCounts)[];

export interface RegistryState {
  registryId: string;
  direction: SyncDirection;
  /** Every record changed up to here is stored; the next run asks for changes since. */
  watermark: Date | null;
  lastRunStarted: Date | null;
  lastRunFinished: Date | null;
  lastOutcome: string | null;
  /** One line, no PHI (shown by `vesta registry status`). */
  lastError: string | null;
  /** Totals since the registry was first synced. */
  counts: RegistryCounts;
  /** The worker holding the run of this direction, while its lease lasts. */
  runHolder: string | null;
  runLeaseUntil: Date | null;
}

export interface StatePatch {
  lastRunStarted?: Date | null;
  lastRunFinished?: Date | null;
  lastOutcome?: string | null;
  lastError?: string | null;
  /** Added to the stored counts (atomically). */
  counts?: Partial<RegistryCounts>;
}

type Rows<T> = { rows: T[] };
type Json = Record<string, unknown>;

const rowCount = (r: unknown): number => (r as { rowCount?: number; affectedRows?: number }).rowCount ?? (r as { affectedRows?: number }).affectedRows ?? 0;
const date = (v: Date | string | null | undefined): Date | null => (v == null ? null : new Date(v));
const json = <T>(v: T | string | null): T | null => (v == null ? null : typeof v === 'string' ? (JSON.parse(v) as T) : v);

interface StateRow {
  registry_id: string;
  direction: SyncDirection;
  watermark: Date | string | null;
  last_run_started: Date | string | null;
  last_run_finished: Date | string | null;
  last_outcome: string | null;
  last_error: string | null;
  counts: Json | string | null;
  run_holder: string | null;
  run_lease_until: Date | string | null;
}

function toState(r: StateRow): RegistryState {
  const stored = json<Json>(r.counts) ?? {};
  const counts = Object.fromEntries(COUNT_NAMES.map((k) => [k, Number(stored[COUNT_KEYS[k]] ?? 0)])) as unknown as RegistryCounts;
  return {
    registryId: r.registry_id,
    direction: r.direction,
    watermark: date(r.watermark),
    lastRunStarted: date(r.last_run_started),
    lastRunFinished: date(r.last_run_finished),
    lastOutcome: r.last_outcome,
    lastError: r.last_error,
    counts,
    runHolder: r.run_holder,
    runLeaseUntil: date(r.run_lease_until),
  };
}

function countsJson(add: Partial<RegistryCounts> = {}): string {
  for (const [k, v] of Object.entries(add)) {
    if (!(k in COUNT_KEYS)) throw new TypeError(`unknown registry count "${k}"`);
    if (!Number.isInteger(v) || (v as number) < 0) throw new TypeError(`registry count "${k}" must be a non-negative integer`);
  }
  return JSON.stringify(Object.fromEntries(COUNT_NAMES.map((k) => [COUNT_KEYS[k], add[k] ?? 0])));
}

// --- state -----------------------------------------------------------------------------------------

export async function getState(q: Queryable, registryId: string, direction: SyncDirection): Promise<RegistryState | undefined> {
  const r = (await q.raw('select * from registry_state where registry_id = ? and direction = ?', [registryId, direction])) as Rows<StateRow>;
  return r.rows[0] ? toState(r.rows[0]) : undefined;
}

export async function listStates(q: Queryable): Promise<RegistryState[]> {
  const r = (await q.raw('select * from registry_state order by registry_id, direction')) as Rows<StateRow>;
  return r.rows.map(toState);
}

const STATE_COLUMNS: Record<Exclude<keyof StatePatch, 'counts'>, string> = {
  lastRunStarted: 'last_run_started',
  lastRunFinished: 'last_run_finished',
  lastOutcome: 'last_outcome',
  lastError: 'last_error',
};

/**
 * Creates or changes the state of (registry, direction) in one statement: fields given are set,
 * counts are added to what is stored (several workers may add at once).
 * Returns the state after the change.
 */
export async function upsertState(q: Queryable, registryId: string, direction: SyncDirection, patch: StatePatch): Promise<RegistryState> {
  const columns = ['registry_id', 'direction', 'counts'];
  const values: unknown[] = [registryId, direction, countsJson(patch.counts)];
  const sets: string[] = [];
  for (const [key, column] of Object.entries(STATE_COLUMNS) as [keyof typeof STATE_COLUMNS, string][]) {
    if (patch[key] === undefined) continue;
    columns.push(column);
    values.push(patch[key]);
    sets.push(`${column} = excluded.${column}`);
  }
  if (patch.counts) {
    const sum = COUNT_NAMES.map((k) => `'${COUNT_KEYS[k]}', coalesce((s.counts ->> '${COUNT_KEYS[k]}')::bigint, 0) + coalesce((excluded.counts ->> '${COUNT_KEYS[k]}')::bigint, 0)`);
    sets.push(`counts = jsonb_build_object(${sum.join(', ')})`);
  }
  // With nothing to change the row is still returned (a no-op update locks and returns it).
  if (!sets.length) sets.push('counts = s.counts');
  const r = (await q.raw(
    `insert into registry_state as s (${columns.join(', ')}) values (${columns.map((c) => (c === 'counts' ? '?::jsonb' : '?')).join(', ')})
     on conflict (registry_id, direction) do update set ${sets.join(', ')}
     returning *`,
    values as never[],
  )) as Rows<StateRow>;
  return toState(r.rows[0]);
}

/**
 * Moves the watermark from `expected` (compare-and-set: null = never set) to `next`, only forward.
 * A refused move (someone moved it first, or `next` is not later) leaves it as it is; the answer
 * carries the watermark now stored either way.
 */
export async function advanceWatermark(
  q: Queryable,
  registryId: string,
  direction: SyncDirection,
  expected: Date | null,
  next: Date,
): Promise<{ advanced: boolean; watermark: Date | null }> {
  const moved =
    expected === null
      ? ((await q.raw(
          `insert into registry_state as s (registry_id, direction, watermark, counts) values (?, ?, ?, ?::jsonb)
           on conflict (registry_id, direction) do update set watermark = excluded.watermark where s.watermark is null
           returning watermark`,
          [registryId, direction, next, countsJson()],
        )) as Rows<{ watermark: Date | string }>)
      : ((await q.raw(
          `update registry_state set watermark = ?
           where registry_id = ? and direction = ? and watermark = ? and watermark < ?
           returning watermark`,
          [next, registryId, direction, expected, next],
        )) as Rows<{ watermark: Date | string }>);
  if (moved.rows[0]) return { advanced: true, watermark: date(moved.rows[0].watermark) };
  return { advanced: false, watermark: (await getState(q, registryId, direction))?.watermark ?? null };
}

// --- run lease -------------------------------------------------------------------------------------

/**
 * Takes the run of (registry, direction) for `holder` until `until`: true when no one holds it, its
 * lease has run out (a worker killed mid-run), or `holder` holds it already (a renewal). One statement.
 */
export async function tryLeaseRun(q: Queryable, registryId: string, direction: SyncDirection, holder: string, until: Date): Promise<boolean> {
  const r = (await q.raw(
    `insert into registry_state as s (registry_id, direction, counts, run_holder, run_lease_until) values (?, ?, ?::jsonb, ?, ?)
     on conflict (registry_id, direction) do update set run_holder = excluded.run_holder, run_lease_until = excluded.run_lease_until
       where s.run_holder is null or s.run_lease_until is null or s.run_lease_until < now() or s.run_holder = excluded.run_holder
     returning 1 as leased`,
    [registryId, direction, countsJson(), holder, until],
  )) as Rows<{ leased: number }>;
  return r.rows.length === 1;
}

/** Gives up the lease if `holder` still holds it. */
export async function releaseRun(q: Queryable, registryId: string, direction: SyncDirection, holder: string): Promise<void> {
  await q.raw('update registry_state set run_holder = null, run_lease_until = null where registry_id = ? and direction = ? and run_holder = ?', [registryId, direction, holder]);
}

// --- circuit breaker -------------------------------------------------------------------------------

export interface BreakerRecord {
  registryId: string;
  state: BreakerState;
  consecutiveFailures: number;
  openedAt: Date | null;
  probeStartedAt: Date | null;
  /** The last failure counted, one line without PHI. */
  lastFailure: string | null;
  changedAt: Date;
}

interface BreakerRow {
  registry_id: string;
  state: BreakerState;
  consecutive_failures: number;
  opened_at: Date | string | null;
  probe_started_at: Date | string | null;
  last_failure: string | null;
  changed_at: Date | string;
}

const toBreaker = (r: BreakerRow): BreakerRecord => ({
  registryId: r.registry_id,
  state: r.state,
  consecutiveFailures: Number(r.consecutive_failures),
  openedAt: date(r.opened_at),
  probeStartedAt: date(r.probe_started_at),
  lastFailure: r.last_failure,
  changedAt: date(r.changed_at)!,
});

const CLOSED = (registryId: string): BreakerRecord => ({ registryId, state: 'closed', consecutiveFailures: 0, openedAt: null, probeStartedAt: null, lastFailure: null, changedAt: new Date(0) });

/** The breaker of a registry (closed with no failures when never used). */
export async function getBreaker(q: Queryable, registryId: string): Promise<BreakerRecord> {
  const r = (await q.raw('select * from registry_breaker where registry_id = ?', [registryId])) as Rows<BreakerRow>;
  return r.rows[0] ? toBreaker(r.rows[0]) : CLOSED(registryId);
}

export async function listBreakers(q: Queryable): Promise<BreakerRecord[]> {
  return ((await q.raw('select * from registry_breaker order by registry_id')) as Rows<BreakerRow>).rows.map(toBreaker);
}

/**
 * Counts one failure of a call to the registry, in one statement: the breaker opens when the
 * consecutive failures reach `threshold`, and at once when it was half-open (the probe failed).
 * `openedNow` says whether this call opened it.
 */
export async function breakerFailure(q: Queryable, registryId: string, threshold: number, reason: string, at: Date): Promise<BreakerRecord & { openedNow: boolean }> {
  if (!Number.isInteger(threshold) || threshold < 1) throw new TypeError('threshold must be a positive integer');
  const opens = `(b.state = 'half-open' or (b.state = 'closed' and b.consecutive_failures + 1 >= ?))`;
  const r = (await q.raw(
    `insert into registry_breaker as b (registry_id, state, consecutive_failures, opened_at, last_failure, changed_at)
     values (?, case when 1 >= ? then 'open' else 'closed' end, 1, case when 1 >= ? then ?::timestamptz end, ?, ?)
     on conflict (registry_id) do update set
       state = case when ${opens} then 'open' else b.state end,
       opened_at = case when ${opens} then excluded.changed_at else b.opened_at end,
       probe_started_at = case when ${opens} then null else b.probe_started_at end,
       consecutive_failures = b.consecutive_failures + 1,
       last_failure = excluded.last_failure, changed_at = excluded.changed_at
     returning *, (xmax = 0 and state = 'open') or (xmax <> 0 and state = 'open' and opened_at = changed_at) as opened_now`,
    [registryId, threshold, threshold, at, reason.slice(0, 300), at, threshold, threshold, threshold],
  )) as Rows<BreakerRow & { opened_now: boolean }>;
  return { ...toBreaker(r.rows[0]), openedNow: Boolean(r.rows[0].opened_now) };
}

/** A call to the registry succeeded: the breaker closes and its failures start again from 0. True when that changed anything. */
export async function breakerSuccess(q: Queryable, registryId: string, at: Date): Promise<boolean> {
  return (
    rowCount(
      await q.raw(
        `update registry_breaker set state = 'closed', consecutive_failures = 0, opened_at = null, probe_started_at = null, changed_at = ?
         where registry_id = ? and (state <> 'closed' or consecutive_failures > 0)`,
        [at, registryId],
      ),
    ) > 0
  );
}

/** A probe ended without a verdict: a half-open breaker is open again (its cool-down long past, so the next run probes). */
export async function breakerProbeUndecided(q: Queryable, registryId: string): Promise<void> {
  await q.raw("update registry_breaker set state = 'open', probe_started_at = null where registry_id = ? and state = 'half-open'", [registryId]);
}

/**
 * Lets one caller probe an open breaker once its cool-down has passed (the breaker turns half-open),
 * or take over a probe started a cool-down ago that never reported (its worker died). True for the
 * one caller that gets the probe.
 */
export async function breakerTryProbe(q: Queryable, registryId: string, cooldownSeconds: number, at: Date): Promise<boolean> {
  const since = new Date(at.getTime() - cooldownSeconds * 1000);
  return (
    rowCount(
      await q.raw(
        `update registry_breaker set state = 'half-open', probe_started_at = ?, changed_at = ?
         where registry_id = ? and ((state = 'open' and opened_at <= ?) or (state = 'half-open' and probe_started_at <= ?))`,
        [at, at, registryId, since, since],
      ),
    ) > 0
  );
}

// --- records ---------------------------------------------------------------------------------------

export interface RecordKey {
  registryId: string;
  direction: SyncDirection;
  resourceType: string;
  resourceId: string;
}

export type RecordStatus = 'ok' | 'rejected' | 'dead-letter';

/** An OperationOutcome cut down to what the registry said: severity, code and diagnostics of each issue. */
export interface StoredOutcome {
  resourceType: 'OperationOutcome';
  issue: { severity: string; code: string; diagnostics?: string }[];
}

export interface RegistryRecord extends RecordKey {
  /** Push: the local versionId last sent or tried; pull: the registry's meta.versionId last stored or tried. */
  version: string | null;
  /** Pull: the registry's meta.lastUpdated of that version. */
  lastUpdated: Date | null;
  /** Failed attempts at this version (0 after a success). */
  attempts: number;
  lastError: StoredOutcome | null;
  status: RecordStatus;
  updatedAt: Date;
}

interface RecordRow {
  registry_id: string;
  direction: SyncDirection;
  resource_type: string;
  resource_id: string;
  handled_version: string | null;
  handled_last_updated: Date | string | null;
  attempts: number;
  last_error: StoredOutcome | string | null;
  status: RecordStatus;
  updated_at: Date | string;
}

function toRecord(r: RecordRow): RegistryRecord {
  return {
    registryId: r.registry_id,
    direction: r.direction,
    resourceType: r.resource_type,
    resourceId: r.resource_id,
    version: r.handled_version,
    lastUpdated: date(r.handled_last_updated),
    attempts: Number(r.attempts),
    lastError: json<StoredOutcome>(r.last_error),
    status: r.status,
    updatedAt: date(r.updated_at)!,
  };
}

const SEVERITIES = new Set(['fatal', 'error', 'warning', 'information']);
const MAX_ISSUES = 20;
const MAX_DIAGNOSTICS = 2000;

/**
 * Keeps of a registry's OperationOutcome only each issue's severity, code and diagnostics, as sent
 * (diagnostics cut at 2,000 characters, at most 20 issues, so a registry cannot grow rows without
 * bound): narrative, extensions, details and expressions, which may echo PHI, are dropped.
 */
export function stripOutcome(outcome: unknown): StoredOutcome {
  const issues = Array.isArray((outcome as { issue?: unknown })?.issue) ? ((outcome as { issue: unknown[] }).issue) : [];
  const issue = issues.slice(0, MAX_ISSUES).flatMap((i) => {
    const x = i as { severity?: unknown; code?: unknown; diagnostics?: unknown } | null;
    if (!x || typeof x !== 'object') return [];
    const severity = typeof x.severity === 'string' && SEVERITIES.has(x.severity) ? x.severity : 'error';
    const code = typeof x.code === 'string' && /^[a-z-]{1,40}$/.test(x.code) ? x.code : 'exception';
    const diagnostics = typeof x.diagnostics === 'string' ? x.diagnostics.slice(0, MAX_DIAGNOSTICS) : undefined;
    return [{ severity, code, ...(diagnostics !== undefined ? { diagnostics } : {}) }];
  });
  return { resourceType: 'OperationOutcome', issue: issue.length ? issue : [{ severity: 'error', code: 'exception', diagnostics: 'no usable OperationOutcome was returned' }] };
}

export async function getRecord(q: Queryable, key: RecordKey): Promise<RegistryRecord | undefined> {
  const r = (await q.raw('select * from registry_record where registry_id = ? and direction = ? and resource_type = ? and resource_id = ?', [
    key.registryId,
    key.direction,
    key.resourceType,
    key.resourceId,
  ])) as Rows<RecordRow>;
  return r.rows[0] ? toRecord(r.rows[0]) : undefined;
}

export type RecordOutcome = { version: string | null; lastUpdated?: Date | null } & ({ ok: true } | { ok: false; error: unknown; deadLetterAfter: number });

/**
 * Records how handling one version of a record went, in one statement. Success clears failures;
 * a failure counts one more attempt at that version (a new version starts from one) and moves the
 * record to the dead-letter list when the attempts reach `deadLetterAfter`. `deadLetteredNow` says
 * whether this call put it there (so it is counted once).
 */
export async function recordOutcome(q: Queryable, key: RecordKey, outcome: RecordOutcome): Promise<RegistryRecord & { deadLetteredNow: boolean }> {
  const keyValues = [key.registryId, key.direction, key.resourceType, key.resourceId];
  const version = [outcome.version, outcome.lastUpdated ?? null];
  if (outcome.ok) {
    const r = (await q.raw(
      `insert into registry_record as r (registry_id, direction, resource_type, resource_id, handled_version, handled_last_updated, attempts, last_error, status)
       values (?, ?, ?, ?, ?, ?, 0, null, 'ok')
       on conflict (registry_id, direction, resource_type, resource_id) do update set
         handled_version = excluded.handled_version, handled_last_updated = excluded.handled_last_updated,
         attempts = 0, last_error = null, status = 'ok', updated_at = now()
       returning *`,
      [...keyValues, ...version] as never[],
    )) as Rows<RecordRow>;
    return { ...toRecord(r.rows[0]), deadLetteredNow: false };
  }
  const limit = outcome.deadLetterAfter;
  if (!Number.isInteger(limit) || limit < 1) throw new TypeError('deadLetterAfter must be a positive integer');
  const same = 'r.handled_version is not distinct from excluded.handled_version and r.handled_last_updated is not distinct from excluded.handled_last_updated';
  const attempts = `case when ${same} then r.attempts + 1 else 1 end`;
  return withTransaction(q, async (tx) => {
    // Locks an existing row first, so the status read is the one the upsert replaces.
    const prev = (await tx.raw('select status from registry_record where registry_id = ? and direction = ? and resource_type = ? and resource_id = ? for update', keyValues)) as Rows<{
      status: RecordStatus;
    }>;
    const r = (await tx.raw(
      `insert into registry_record as r (registry_id, direction, resource_type, resource_id, handled_version, handled_last_updated, attempts, last_error, status)
       values (?, ?, ?, ?, ?, ?::timestamptz, 1, ?::jsonb, case when 1 >= ? then 'dead-letter' else 'rejected' end)
       on conflict (registry_id, direction, resource_type, resource_id) do update set
         attempts = ${attempts},
         status = case when ${attempts} >= ? then 'dead-letter' else 'rejected' end,
         handled_version = excluded.handled_version, handled_last_updated = excluded.handled_last_updated,
         last_error = excluded.last_error, updated_at = now()
       returning *`,
      [...keyValues, ...version, JSON.stringify(stripOutcome(outcome.error)), limit, limit] as never[],
    )) as Rows<RecordRow>;
    const rec = toRecord(r.rows[0]);
    const before = prev.rows[0]?.status;
    // No row before: this call inserted it, or lost an insert race to another call and updated it;
    // either way the attempt count tells whether this call reached the limit.
    const deadLetteredNow = rec.status === 'dead-letter' && (before ? before !== 'dead-letter' : rec.attempts === limit);
    return { ...rec, deadLetteredNow };
  });
}

/** Records on the dead-letter list, oldest first. */
export async function listDeadLetters(q: Queryable, opts: { registryId?: string; direction?: SyncDirection; limit?: number } = {}): Promise<RegistryRecord[]> {
  const where = ["status = 'dead-letter'"];
  const values: unknown[] = [];
  if (opts.registryId !== undefined) {
    where.push('registry_id = ?');
    values.push(opts.registryId);
  }
  if (opts.direction !== undefined) {
    where.push('direction = ?');
    values.push(opts.direction);
  }
  values.push(opts.limit ?? 1000);
  const r = (await q.raw(`select * from registry_record where ${where.join(' and ')} order by updated_at, registry_id, direction, resource_type, resource_id limit ?`, values as never[])) as Rows<RecordRow>;
  return r.rows.map(toRecord);
}

// --- review list -----------------------------------------------------------------------------------

export type ReviewReason = 'no-match' | 'several-matches';

export interface RegistryReview {
  id: number;
  registryId: string;
  /** The pulled Immunization at the registry (its reference there). */
  registryReference: string;
  reason: ReviewReason;
  detail: string | null;
  createdAt: Date;
  resolvedAt: Date | null;
}

interface ReviewRow {
  id: number;
  registry_id: string;
  registry_reference: string;
  reason: ReviewReason;
  detail: string | null;
  created_at: Date | string;
  resolved_at: Date | string | null;
}

const toReview = (r: ReviewRow): RegistryReview => ({
  id: Number(r.id),
  registryId: r.registry_id,
  registryReference: r.registry_reference,
  reason: r.reason,
  detail: r.detail,
  createdAt: date(r.created_at)!,
  resolvedAt: date(r.resolved_at),
});

/**
 * Lists a pulled Immunization for review. While an entry for the same reference is open, it is
 * updated instead (a later pull meeting it again adds nothing); `created` says which happened.
 */
export async function addReview(
  q: Queryable,
  review: { registryId: string; registryReference: string; reason: ReviewReason; detail?: string | null },
): Promise<{ id: number; created: boolean }> {
  const r = (await q.raw(
    `insert into registry_review (registry_id, registry_reference, reason, detail) values (?, ?, ?, ?)
     on conflict (registry_id, registry_reference) where resolved_at is null do update set reason = excluded.reason, detail = excluded.detail
     returning id, (xmax = 0) as inserted`,
    [review.registryId, review.registryReference, review.reason, review.detail ?? null],
  )) as Rows<{ id: number; inserted: boolean }>;
  return { id: Number(r.rows[0].id), created: r.rows[0].inserted };
}

/** Open review entries (all with includeResolved), oldest first. */
export async function listReviews(q: Queryable, opts: { registryId?: string; includeResolved?: boolean } = {}): Promise<RegistryReview[]> {
  const where: string[] = [];
  const values: unknown[] = [];
  if (!opts.includeResolved) where.push('resolved_at is null');
  if (opts.registryId !== undefined) {
    where.push('registry_id = ?');
    values.push(opts.registryId);
  }
  const r = (await q.raw(`select * from registry_review${where.length ? ` where ${where.join(' and ')}` : ''} order by id`, values as never[])) as Rows<ReviewRow>;
  return r.rows.map(toReview);
}

/** Marks an open review entry resolved; false when there is none open with that id. */
export async function resolveReview(q: Queryable, id: number): Promise<boolean> {
  if (!Number.isSafeInteger(id) || id < 1 || id > 2147483647) return false;
  return rowCount(await q.raw('update registry_review set resolved_at = now() where id = ? and resolved_at is null', [id])) > 0;
}

// --- schedule windows ------------------------------------------------------------------------------

/**
 * Claims the run of one schedule window for (registry, direction): true for exactly one caller,
 * however many nodes fire the same window at once.
 */
export async function tryClaimRun(q: Queryable, registryId: string, direction: SyncDirection, windowKey: string): Promise<boolean> {
  const r = (await q.raw('insert into registry_run (registry_id, direction, window_key) values (?, ?, ?) on conflict do nothing returning 1 as claimed', [
    registryId,
    direction,
    windowKey,
  ])) as Rows<{ claimed: number }>;
  return r.rows.length === 1;
}

/** Forgets claims made before `before` (their windows are long past); returns how many. */
export async function pruneRuns(q: Queryable, before: Date): Promise<number> {
  return rowCount(await q.raw('delete from registry_run where claimed_at < ?', [before]));
}

// --- push window -----------------------------------------------------------------------------------

/** The head of a resource's current version: what a push needs to decide, never its content. */
export interface ChangedVersion {
  id: string;
  versionId: number;
  lastUpdated: Date;
  deleted: boolean;
}

/**
 * Current versions (deletion markers included) of `resourceType` changed after `after` and before
 * `before`, ordered by (last_updated, id), at most `limit`. `after` without an id is a watermark
 * (strictly later); with an id it is the last row of the previous batch (keyset paging).
 */
export async function listChangedSince(
  q: Queryable,
  resourceType: string,
  after: { lastUpdated: Date; id?: string } | null,
  before: Date,
  limit: number,
): Promise<ChangedVersion[]> {
  const where = ['resource_type = ?', 'last_updated < ?'];
  const values: unknown[] = [resourceType, before];
  if (after && after.id !== undefined) {
    where.push('(last_updated, id) > (?, ?)');
    values.push(after.lastUpdated, after.id);
  } else if (after) {
    where.push('last_updated > ?');
    values.push(after.lastUpdated);
  }
  values.push(limit);
  const r = (await q.raw(`select id, version_id, last_updated, deleted from resource where ${where.join(' and ')} order by last_updated, id limit ?`, values as never[])) as Rows<{
    id: string;
    version_id: number;
    last_updated: Date | string;
    deleted: boolean;
  }>;
  return r.rows.map((x) => ({ id: x.id, versionId: Number(x.version_id), lastUpdated: date(x.last_updated)!, deleted: Boolean(x.deleted) }));
}
