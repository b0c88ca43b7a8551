// Blind index storage (design.md "PHI at rest"): the keyed-HMAC rows of sealed PHI parameters
// (search/blind.ts) written in the same statement as the other index rows of a version
// (search-store.ts writeIndexRows), and the claim of resources whose blind rows are missing or were
// computed with another blind key (jobs/blind-reindex.ts).
import type { PhiIndexMode } from '../search/phi-seam.js';
import { ownerDelete, type Queryable, type Tx } from './db.js';
import type { IndexWrite } from './search-store.js';
import { stringifyArrayPaced } from '../fhir/pacer.js';

/**
 * Data-modifying CTEs (and their bindings, in order) that replace the blind rows of the written
 * resources and record the blind key they were computed with. Nothing without sealing.
 */
export async function blindIndexCtes(writes: IndexWrite[], mode: PhiIndexMode): Promise<{ ctes: string[]; bindings: string[] }> {
  const blind = mode.sealed ? mode.blind : undefined;
  const ctes: string[] = [];
  const bindings: string[] = [];
  if (!blind) return { ctes, bindings };
  const mine = writes.filter((w) => blind.protectedTypes().has(w.resourceType));
  if (!mine.length) return { ctes, bindings };
  const replaced = mine.filter((w) => w.replace).map((w) => ({ t: w.resourceType, i: w.id }));
  if (replaced.length) {
    const d = ownerDelete('idx_blind', replaced);
    ctes.push(`d_blind as (${d.sql})`);
    bindings.push(...d.bindings);
  }
  // Paced: the MACs of a resource with many names or identifiers take seconds of CPU (fhir/pacer.ts).
  const records: { t: string; i: string; p: string; m: string }[] = [];
  for (const w of mine) {
    if (!w.rows) continue;
    for (const r of await blind.rowsOfPaced(w.resourceType, w.rows)) records.push({ t: w.resourceType, i: w.id, p: r.param, m: r.mac });
  }
  if (records.length) {
    ctes.push("i_blind as (insert into idx_blind (resource_type, resource_id, param, mac) select t, i, p, decode(m, 'hex') from json_to_recordset(?::json) as x(t text, i text, p text, m text))");
    bindings.push(await stringifyArrayPaced(records));
  }
  const live = mine.filter((w) => w.rows).map((w) => ({ t: w.resourceType, i: w.id }));
  if (live.length) {
    ctes.push(
      's_blind as (insert into idx_blind_state (resource_type, resource_id, kid) select t, i, ? from json_to_recordset(?::json) as x(t text, i text) ' +
        'on conflict (resource_type, resource_id) do update set kid = excluded.kid)',
    );
    bindings.push(blind.kid, JSON.stringify(live));
  }
  const gone = mine.filter((w) => !w.rows && w.replace).map((w) => ({ t: w.resourceType, i: w.id }));
  if (gone.length) {
    const d = ownerDelete('idx_blind_state', gone);
    ctes.push(`g_blind as (${d.sql})`);
    bindings.push(...d.bindings);
  }
  return { ctes, bindings };
}

/** Current resources of these types whose blind rows are not on the blind key `kid`. */
function staleWhere(types: string[]): string {
  return (
    `r.resource_type in (${types.map(() => '?').join(', ')}) and r.deleted = false and not exists ` +
    '(select 1 from idx_blind_state s where s.resource_type = r.resource_type and s.resource_id = r.id and s.kid = ?)'
  );
}

export async function countBlindStale(q: Queryable, types: string[], kid: string): Promise<number> {
  if (!types.length) return 0;
  const res = (await q.raw(`select count(*) as n from resource r where ${staleWhere(types)}`, [...types, kid])) as { rows: { n: number | string }[] };
  return Number(res.rows[0].n);
}

/**
 * Claims (row locks, SKIP LOCKED) up to `limit` stale resources after `after` in (type, id) order for
 * re-indexing in this transaction; a writer of the same resource waits for it.
 */
export async function claimBlindStale(tx: Tx, types: string[], kid: string, limit: number, after?: { type: string; id: string }): Promise<{ type: string; id: string }[]> {
  if (!types.length) return [];
  const from = after ? ' and (r.resource_type, r.id) > (?, ?)' : '';
  const res = (await tx.raw(`select r.resource_type, r.id from resource r where ${staleWhere(types)}${from} order by r.resource_type, r.id limit ? for update of r skip locked`, [
    ...types,
    kid,
    ...(after ? [after.type, after.id] : []),
    limit,
  ])) as { rows: { resource_type: string; id: string }[] };
  return res.rows.map((r) => ({ type: r.resource_type, id: r.id }));
}
