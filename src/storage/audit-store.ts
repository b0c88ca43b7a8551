// The audit_ledger table (migration 0011): append, link, read in chain order. Knex stays here; the
// chain rules live in src/audit/.
import type { Queryable } from './db.js';

type Rows<T> = { rows: T[] };
const buf = (v: unknown): Buffer => (v instanceof Buffer ? v : Buffer.from(v as Uint8Array));

export interface NewEntry {
  eventId: string;
  recorded: Date;
  event: Record<string, unknown>;
  digest: Buffer;
}

/** Appends unlinked entries (in the caller's transaction, when it has one). */
export async function insertEntries(q: Queryable, entries: NewEntry[]): Promise<void> {
  for (let i = 0; i < entries.length; i += 500) {
    const part = entries.slice(i, i + 500);
    await q.raw(
      `insert into audit_ledger (event_id, recorded, event, digest) values ${part.map(() => '(?, ?, ?::jsonb, ?)').join(', ')}`,
      part.flatMap((e) => [e.eventId, e.recorded, JSON.stringify(e.event), e.digest]),
    );
  }
}

export interface ChainHead {
  position: number;
  hash: Buffer;
}

export async function chainHead(q: Queryable): Promise<ChainHead | undefined> {
  const r = (await q.raw('select position, hash from audit_ledger where position is not null order by position desc limit 1')) as Rows<{ position: string | number; hash: unknown }>;
  const h = r.rows[0];
  return h ? { position: Number(h.position), hash: buf(h.hash) } : undefined;
}

/** Committed entries not yet linked, oldest append first. */
export async function pendingEntries(q: Queryable, limit: number): Promise<{ seq: number; digest: Buffer }[]> {
  const r = (await q.raw('select seq, digest from audit_ledger where position is null order by seq limit ?', [limit])) as Rows<{ seq: string | number; digest: unknown }>;
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
  eventId: string;
  position: number;
  event: Record<string, unknown>;
  digest: Buffer;
  prevHash: Buffer | undefined;
  hash: Buffer | undefined;
}

/** Linked entries from `fromPosition` on, in chain order. */
export async function linkedFrom(q: Queryable, fromPosition: number, limit: number, toPosition?: number): Promise<LedgerRow[]> {
  const r = (await q.raw(
    `select seq, event_id, position, event, digest, prev_hash, hash from audit_ledger
     where position >= ?${toPosition !== undefined ? ' and position <= ?' : ''} order by position limit ?`,
    toPosition !== undefined ? [fromPosition, toPosition, limit] : [fromPosition, limit],
  )) as Rows<{ seq: string | number; event_id: string; position: string | number; event: Record<string, unknown> | string; digest: unknown; prev_hash: unknown; hash: unknown }>;
  return r.rows.map((x) => ({
    seq: Number(x.seq),
    eventId: x.event_id,
    position: Number(x.position),
    event: typeof x.event === 'string' ? (JSON.parse(x.event) as Record<string, unknown>) : x.event,
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
  const r = (await q.raw('select count(*)::int as n, min(recorded) as oldest from audit_ledger where position is null')) as Rows<{ n: number; oldest: Date | string | null }>;
  return { count: Number(r.rows[0]?.n ?? 0), oldest: r.rows[0]?.oldest ? new Date(r.rows[0].oldest) : undefined };
}

/** Takes the sequencer's advisory lock for this transaction if no other node holds it. */
export async function trySequencerLock(q: Queryable, key: bigint): Promise<boolean> {
  const r = (await q.raw('select pg_try_advisory_xact_lock(?::bigint) as ok', [key.toString()])) as Rows<{ ok: boolean }>;
  return r.rows[0]?.ok === true;
}
