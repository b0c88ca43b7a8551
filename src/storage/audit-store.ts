// The audit_ledger table (migration 0011): append, link, read in chain order; and its search rows
// (audit_search, migration 0012), by which the /AuditEvent API finds entries. Knex stays here; the
// chain rules and what the search columns hold (src/audit/search-columns.ts) live in src/audit/.
import type { AuditSearchColumns } from '../audit/search-columns.js';
import { instantCondition, type DateQuery } from '../search/types/date.js';
import { and, frag, or, type SqlFragment } from '../search/sql.js';
import { preparedRows, type Queryable } from './db.js';
import { pace } from '../fhir/pacer.js';

type Rows<T> = { rows: T[] };
const buf = (v: unknown): Buffer => (v instanceof Buffer ? v : Buffer.from(v as Uint8Array));

export interface NewEntry {
  /** The AuditEvent as RFC 8785 canonical JSON: the bytes the digest covers. */
  canonical: string;
  digest: Buffer;
  /** Its search columns (audit_search); without them the entry is chained but no search finds it. */
  columns?: AuditSearchColumns;
}

/** The array columns of audit_search (migration 0012), by AuditSearchColumns key. */
const ARRAY_COLUMNS = {
  type: 'type_tokens',
  subtype: 'subtype_tokens',
  agent: 'agent_refs',
  agentIdentifier: 'agent_idents',
  entity: 'entity_refs',
  entityIdentifier: 'entity_idents',
  patient: 'patient_refs',
  source: 'source_refs',
  sourceIdentifier: 'source_idents',
} as const;
export type AuditArrayColumn = keyof typeof ARRAY_COLUMNS;
const ARRAY_KEYS = Object.keys(ARRAY_COLUMNS) as AuditArrayColumn[];
const ARRAY_NAMES = ARRAY_KEYS.map((k) => ARRAY_COLUMNS[k]);

/**
 * Appends unlinked entries (in the caller's transaction, when it has one) and their search rows, in
 * one statement of a fixed shape whatever the number of entries (four parameters: arrays of the
 * ledger columns and the search rows as JSON), so that appending a group costs one short statement
 * to bind and plan: the per-row placeholders of a VALUES list cost more than the rows themselves
 * (measured 2026-12-05: about 0.5 ms of the server's CPU per statement). The ledger rows go in the
 * order given; each search row joins its entry by digest (distinct within a batch: each event has its
 * own id). A search row left by an entry that is gone (a test truncating the ledger restarts seq) is
 * replaced.
 */
export async function insertEntries(q: Queryable, entries: NewEntry[]): Promise<void> {
  // Chunks of 500: the driver serializes a statement's parameters in one synchronous step (1.3 MB of
  // records per chunk), and the loop yields between chunks (fhir/pacer.ts).
  for (let i = 0; i < entries.length; i += 500) {
    if (i > 0) await pace();
    const part = entries.slice(i, i + 500);
    const search = part.flatMap((e, k) => {
      const c = e.columns;
      if (!c) return [];
      const row: Record<string, unknown> = { ord: k, event_id: c.eventId, recorded: c.recorded ? c.recorded.toISOString() : null, action: c.action, outcome: c.outcome };
      for (const key of ARRAY_KEYS) row[ARRAY_COLUMNS[key]] = c[key];
      return [row];
    });
    // Outside a transaction (the group append of reads): a named prepared statement on a pooled
    // connection, planned once per connection; in a write's transaction, the same text through knex.
    await preparedRows(q, 'vesta_audit_append', INSERT_ENTRIES, [part.map((e) => e.canonical), part.map((e) => e.digest), part.map((_e, k) => k), JSON.stringify(search)]);
  }
}

// The search rows go through jsonb_to_recordset: json_to_recordset re-parses the text of every array
// column of every row, 11 to 32 ms for 192 rows with nine text[] columns against 2.3 to 2.9 ms from jsonb
// (EXPLAIN ANALYZE, 2026-12-06); it was half of an ingested Bundle's audit append.
const INSERT_ENTRIES = `with v as (select * from unnest($1::text[], $2::bytea[], $3::int[]) as v(canonical, digest, ord)),
  l as (insert into audit_ledger (canonical, digest) select canonical, digest from v order by ord returning seq, digest),
  s as (select * from jsonb_to_recordset($4::jsonb) as x(ord int, event_id text, recorded timestamptz, action text, outcome text, ${ARRAY_NAMES.map((c) => `${c} text[]`).join(', ')}))
  insert into audit_search (seq, digest, event_id, recorded, action, outcome, ${ARRAY_NAMES.join(', ')})
  select l.seq, l.digest, s.event_id, s.recorded, s.action, s.outcome, ${ARRAY_NAMES.map((c) => `coalesce(s.${c}, '{}')`).join(', ')}
  from l join v on v.digest = l.digest join s on s.ord = v.ord
  on conflict (seq) do update set digest = excluded.digest, event_id = excluded.event_id, recorded = excluded.recorded, action = excluded.action, outcome = excluded.outcome,
    ${ARRAY_NAMES.map((c) => `${c} = excluded.${c}`).join(', ')}`;

export interface ChainHead {
  position: number;
  hash: Buffer;
}

export async function chainHead(q: Queryable): Promise<ChainHead | undefined> {
  const r = (await q.raw('select position, hash from audit_ledger where position is not null order by position desc limit 1')) as Rows<{ position: string | number; hash: unknown }>;
  const h = r.rows[0];
  return h ? { position: Number(h.position), hash: buf(h.hash) } : undefined;
}

/** The sequencer's scan for unlinked entries (pendingEntries; its test explains it). */
export const PENDING = 'select seq, digest from audit_ledger where position is null order by seq';

/**
 * Committed entries not yet linked, oldest append first. By a plain scan of the unlinked index, never
 * a bitmap scan: every link leaves a dead entry in that index (the row's new version has a position),
 * and only a plain index scan marks such entries dead for the next scan to skip. With a bitmap scan
 * (the planner's choice whenever it expects fewer rows than the limit) every call visited the heap of
 * every entry linked since the last vacuum: 2.7 ms per call under the CRUD bench, growing with the
 * write rate (pg_stat_statements and EXPLAIN, issue 18). Runs in the sequencer's transaction.
 */
export async function pendingEntries(q: Queryable, limit: number): Promise<{ seq: number; digest: Buffer }[]> {
  // A sequential scan would read the whole heap: off too, so the partial index is the only way in.
  await q.raw("select set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)");
  const r = (await q.raw(`${PENDING} limit ?`, [limit])) as Rows<{ seq: string | number; digest: unknown }>;
  return r.rows.map((x) => ({ seq: Number(x.seq), digest: buf(x.digest) }));
}

export async function linkEntries(q: Queryable, links: { seq: number; position: number; prevHash: Buffer; hash: Buffer }[]): Promise<void> {
  for (let i = 0; i < links.length; i += 500) {
    const part = links.slice(i, i + 500);
    await q.raw(
      `update audit_ledger a set position = v.position, prev_hash = v.prev_hash, hash = v.hash, linked_at = now()
       from (values ${part.map(() => '(?::bigint, ?::bigint, ?::bytea, ?::bytea)').join(', ')}) as v(seq, position, prev_hash, hash)
       where a.seq = v.seq`,
      part.flatMap((l) => [l.seq, l.position, l.prevHash, l.hash]),
    );
  }
}

export interface LedgerRow {
  seq: number;
  position: number;
  /** The stored canonical JSON text of the AuditEvent. */
  canonical: string;
  digest: Buffer;
  prevHash: Buffer | undefined;
  hash: Buffer | undefined;
}

/** Linked entries from `fromPosition` on, in chain order. */
export async function linkedFrom(q: Queryable, fromPosition: number, limit: number, toPosition?: number): Promise<LedgerRow[]> {
  const r = (await q.raw(
    `select seq, position, canonical, digest, prev_hash, hash from audit_ledger
     where position >= ?${toPosition !== undefined ? ' and position <= ?' : ''} order by position limit ?`,
    toPosition !== undefined ? [fromPosition, toPosition, limit] : [fromPosition, limit],
  )) as Rows<{ seq: string | number; position: string | number; canonical: string; digest: unknown; prev_hash: unknown; hash: unknown }>;
  return r.rows.map((x) => ({
    seq: Number(x.seq),
    position: Number(x.position),
    canonical: x.canonical,
    digest: buf(x.digest),
    prevHash: x.prev_hash == null ? undefined : buf(x.prev_hash),
    hash: x.hash == null ? undefined : buf(x.hash),
  }));
}

/** The stored hash of the entry at a position (where a partial verification starts). */
export async function hashAt(q: Queryable, position: number): Promise<Buffer | undefined> {
  const r = (await q.raw('select hash from audit_ledger where position = ?', [position])) as Rows<{ hash: unknown }>;
  return r.rows[0]?.hash == null ? undefined : buf(r.rows[0].hash);
}

export async function unlinkedSummary(q: Queryable): Promise<{ count: number; oldest: Date | undefined }> {
  // By append time, not the event's own `recorded` (which a client-made AuditEvent chooses).
  const r = (await q.raw('select count(*)::int as n, min(appended_at) as oldest from audit_ledger where position is null')) as Rows<{ n: number; oldest: Date | string | null }>;
  return { count: Number(r.rows[0]?.n ?? 0), oldest: r.rows[0]?.oldest ? new Date(r.rows[0].oldest) : undefined };
}

/** Takes the sequencer's advisory lock for this transaction if no other node holds it. */
export async function trySequencerLock(q: Queryable, key: bigint): Promise<boolean> {
  const r = (await q.raw('select pg_try_advisory_xact_lock(?::bigint) as ok', [key.toString()])) as Rows<{ ok: boolean }>;
  return r.rows[0]?.ok === true;
}

// ---- the /AuditEvent API ------------------------------------------------------------------------

/** One condition of an AuditEvent search; a search ANDs them. */
export type AuditCondition =
  /** The column holds any of the keys (one parameter's OR values). No keys: nothing matches. */
  | { kind: 'keys'; column: AuditArrayColumn; keys: string[] }
  /** action or outcome is one of the codes. */
  | { kind: 'code'; column: 'action' | 'outcome'; codes: string[] }
  /** The AuditEvent id is one of these. */
  | { kind: 'id'; ids: string[] }
  /** recorded satisfies any of the date comparisons (search/types/date.ts), `now` anchoring `ap`. */
  | { kind: 'recorded'; any: DateQuery[]; now: number };

function conditionSql(c: AuditCondition): SqlFragment {
  switch (c.kind) {
    case 'keys':
      return c.keys.length ? frag(`s.${ARRAY_COLUMNS[c.column]} && array[${c.keys.map(() => '?').join(', ')}]::text[]`, ...c.keys) : frag('false');
    case 'code':
      return c.codes.length ? frag(`s.${c.column} in (${c.codes.map(() => '?').join(', ')})`, ...c.codes) : frag('false');
    case 'id':
      return c.ids.length ? frag(`s.event_id in (${c.ids.map(() => '?').join(', ')})`, ...c.ids) : frag('false');
    case 'recorded':
      return or(c.any.map((d) => instantCondition('s.recorded', d, c.now)));
  }
}

function whereOf(conds: AuditCondition[]): SqlFragment {
  return and(conds.map(conditionSql));
}

export interface AuditEventRow {
  seq: number;
  /** From the search row; null when the entry has none or its event has no valid recorded. */
  recorded: Date | null;
  /** The stored (sealed) AuditEvent as canonical JSON text. */
  canonical: string;
}

/** A search row applies to the entry it was derived from: same seq, same bytes. */
const JOIN = 's.seq = a.seq and s.digest = a.digest';
const FROM = `audit_search s join audit_ledger a on ${JOIN}`;

type EventRows = Rows<{ seq: string | number; recorded: Date | string | null; canonical: string }>;
const eventRow = (x: EventRows['rows'][number]): AuditEventRow => ({ seq: Number(x.seq), recorded: x.recorded == null ? null : new Date(x.recorded), canonical: x.canonical });

/** The entry of an AuditEvent id, through its search row (whose digest must match the entry's bytes). */
export async function eventById(q: Queryable, id: string): Promise<AuditEventRow | undefined> {
  const r = (await q.raw(`select a.seq, s.recorded, a.canonical from ${FROM} where s.event_id = ?`, [id])) as EventRows;
  return r.rows[0] && eventRow(r.rows[0]);
}

/** Where a page starts: just after this entry in the page's order. */
export interface AuditPosition {
  recorded: Date | null;
  seq: number;
}

/**
 * Matching entries in `order` of recorded (entries without one first in ascending order), then seq,
 * starting after `after`. Keyset paging: each page is one index range, however deep.
 */
export async function searchEvents(q: Queryable, conds: AuditCondition[], opts: { order: 'asc' | 'desc'; limit: number; after?: AuditPosition }): Promise<AuditEventRow[]> {
  const parts = [whereOf(conds)];
  const at = opts.after;
  if (at) {
    const r = at.recorded;
    if (opts.order === 'desc') parts.push(r ? frag('(s.recorded, s.seq) < (?, ?) or s.recorded is null', r, at.seq) : frag('s.recorded is null and s.seq < ?', at.seq));
    else parts.push(r ? frag('(s.recorded, s.seq) > (?, ?)', r, at.seq) : frag('s.recorded is not null or s.seq > ?', at.seq));
  }
  const where = and(parts);
  const order = opts.order === 'desc' ? 's.recorded desc nulls last, s.seq desc' : 's.recorded asc nulls first, s.seq asc';
  const r = (await q.raw(`select s.seq, s.recorded, a.canonical from ${FROM} where ${where.sql} order by ${order} limit ?`, [...where.bindings, opts.limit])) as EventRows;
  return r.rows.map(eventRow);
}

/** How many entries match (_total=accurate, _summary=count). */
export async function countEvents(q: Queryable, conds: AuditCondition[]): Promise<number> {
  const where = whereOf(conds);
  const r = (await q.raw(`select count(*)::int as n from ${FROM} where ${where.sql}`, where.bindings)) as Rows<{ n: number | string }>;
  return Number(r.rows[0]?.n ?? 0);
}

/** The planner's estimate of the matches (_total=estimate): no scan. */
export async function estimateEvents(q: Queryable, conds: AuditCondition[]): Promise<number> {
  const where = whereOf(conds);
  const res = (await q.raw(`explain (format json) select 1 from ${FROM} where ${where.sql}`, where.bindings)) as { rows: Record<string, unknown>[] };
  const cell = Object.values(res.rows[0] ?? {})[0];
  const plan = (typeof cell === 'string' ? JSON.parse(cell) : cell) as { Plan?: { 'Plan Rows'?: number } }[];
  return Math.max(0, Math.round(Number(plan?.[0]?.Plan?.['Plan Rows'] ?? 0)));
}
