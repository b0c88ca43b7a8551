// Executes planned searches (search/plan.ts) against the resource and index tables.
import type { SqlFragment } from '../search/plan.js';
import type { Queryable } from './db.js';

/** Ids of matching current resources ordered by id, after a keyset position. */
export async function searchIds(q: Queryable, where: SqlFragment, opts: { limit: number; afterId?: string }): Promise<string[]> {
  let sql = `select r.id from resource r where ${where.sql}`;
  const bindings = [...where.bindings];
  if (opts.afterId !== undefined) {
    sql += ' and r.id > ?';
    bindings.push(opts.afterId);
  }
  sql += ' order by r.id limit ?';
  bindings.push(opts.limit);
  const res = (await q.raw(sql, bindings)) as { rows: { id: string }[] };
  return res.rows.map((r) => r.id);
}

export async function countMatches(q: Queryable, where: SqlFragment): Promise<number> {
  const res = (await q.raw(`select count(*) as n from resource r where ${where.sql}`, where.bindings)) as { rows: { n: number | string }[] };
  return Number(res.rows[0].n);
}

/** Serializes conditional interactions on the same criteria for the rest of the transaction. */
export async function lockCriteria(q: Queryable, key: bigint): Promise<void> {
  await q.raw('select pg_advisory_xact_lock(?::bigint)', [key.toString()]);
}
