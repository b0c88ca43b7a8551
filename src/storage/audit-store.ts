// The audit_ledger table (migration 0011): append, link, read in chain order. Knex stays here; the
// chain rules live in src/audit/.
import type { Queryable } from './db.js';

type Rows<T> = { rows: T[] };
const buf = (v: unknown): Buffer => (v instanceof Buffer ? v : Buffer.from(v as Uint8Array));

export interface NewEntry {
  /** The AuditEvent as RFC 8785 canonical JSON: the bytes the digest covers. */
  canonical: string;
  digest: Buffer;
}

/** Appends unlinked entries (in the caller's transaction, when it has one). */
export async function insertEntries(q: Queryable, entries: NewEntry[]): Promise<void> {
  for (let i = 0; i < entries.length; i += 500) {
    const part = entries.slice(i, i + 500);
    await q.raw(
      `insert into audit_ledger (canonical, digest) values ${part.map(() => '(?, ?)').join(', ')}`,
      part.flatMap((e) => [e.canonical, e.digest]),
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
