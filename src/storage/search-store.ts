// Search index storage (https://hl7.org/fhir/R4/search.html): writes the index rows of a version in
// its transaction, and executes planned searches (search/plan.ts, search/sort.ts) against the
// resource and index tables.
import { INDEX_TABLES, type IndexKind, type IndexRows, type TextRow } from '../search/index-rows.js';
import { protectIndexValue, protectTextRow, type PhiIndexMode } from '../search/phi-seam.js';
import { TEXT_SEARCH_CONFIG } from '../search/types/text.js';
import type { SearchPlan } from '../search/plan.js';
import type { SqlFragment } from '../search/sql.js';
import type { SortKey } from '../search/sort.js';
import { ownerDelete, type Queryable } from './db.js';
import { blindIndexCtes } from './blind-index-store.js';
import { pace, stringifyArrayPaced } from '../fhir/pacer.js';
import { CURRENT_COLUMNS, type CurrentRow } from './current-rows.js';

// ---- index writes --------------------------------------------------------------------------------

/** Columns per table: [column, SQL type of the JSON value, IndexRows member, SQL computing the stored value when not the JSON value itself]. */
const COLUMNS: Record<IndexKind, [string, string, string, string?][]> = {
  token: [['system', 'text', 'system'], ['code', 'text', 'code'], ['text_norm', 'text', 'text']],
  string: [['value_norm', 'text', 'norm'], ['value_exact', 'text', 'exact']],
  reference: [['target_type', 'text', 'targetType'], ['target_id', 'text', 'targetId'], ['url', 'text', 'url'], ['version', 'text', 'version']],
  date: [['low', 'bigint', 'low'], ['high', 'bigint', 'high']],
  number: [['low', 'numeric', 'low'], ['high', 'numeric', 'high']],
  quantity: [['low', 'numeric', 'low'], ['high', 'numeric', 'high'], ['system', 'text', 'system'], ['code', 'text', 'code'], ['unit', 'text', 'unit']],
  uri: [['uri', 'text', 'uri']],
  position: [['latitude', 'double precision', 'latitude'], ['longitude', 'double precision', 'longitude']],
  // Full text arrives as text and is stored only as its tsvector (search/types/text.ts).
  text: [['doc', 'text', 'doc', `to_tsvector('${TEXT_SEARCH_CONFIG}', doc)`]],
};

const KINDS = Object.keys(INDEX_TABLES) as IndexKind[];

export interface IndexWrite {
  resourceType: string;
  id: string;
  /** Absent for a deletion: the old rows go and none come. */
  rows?: IndexRows;
  /** Whether rows of an earlier version may exist (false for a first version: no deletes needed). */
  replace: boolean;
}

/**
 * The rows of one index table for some resources, as json_to_recordset records ({t, i, p, g, columns}),
 * after the PHI seam: a PHI parameter's value is kept only as protectIndexValue (protectTextRow) returns it.
 * Shared by the index writes and by authorization's matching of unstored versions, so both see the same rows.
 */
function indexRecords(kind: IndexKind, owners: { resourceType: string; id: string; rows?: IndexRows }[], mode: PhiIndexMode): Record<string, unknown>[] {
  const cols = COLUMNS[kind];
  const records: Record<string, unknown>[] = [];
  for (const w of owners) {
    for (const row of (w.rows?.[kind] ?? []) as unknown as Record<string, unknown>[]) {
      const kept: Record<string, unknown> | undefined =
        kind === 'text' ? protectTextRow(w.resourceType, row as unknown as TextRow, mode) : protectIndexValue(w.resourceType, row.param as string, row, mode);
      if (kept === undefined) continue;
      const rec: Record<string, unknown> = { t: w.resourceType, i: w.id, p: kept.param, g: kept.grp ?? null };
      for (const [col, , key] of cols) rec[col] = kept[key] ?? null;
      records.push(rec);
    }
  }
  return records;
}

/** `json_to_recordset(?::json) as x(...)` typed for the records of `kind`. */
function recordset(kind: IndexKind): string {
  return `json_to_recordset(?::json) as x(t text, i text, p text, g smallint, ${COLUMNS[kind].map((c) => `${c[0]} ${c[1]}`).join(', ')})`;
}

/** Resources per statement: keeps each JSON parameter to a few megabytes. */
const WRITE_CHUNK = 250;

/**
 * Writes (replacing) the index rows of several resources. All tables go in one statement per chunk:
 * data-modifying CTEs delete the old rows and insert the new (every sub-statement sees the same
 * snapshot, so the deletes never see the inserts), and the rows of each table travel as one JSON
 * parameter, so a resource with hundreds of rows is one round trip and never meets the bind limit.
 */
export async function writeIndexRows(q: Queryable, writes: IndexWrite[], mode: PhiIndexMode): Promise<void> {
  for (let i = 0; i < writes.length; i += WRITE_CHUNK) await writeChunk(q, writes.slice(i, i + WRITE_CHUNK), mode);
}

async function writeChunk(q: Queryable, writes: IndexWrite[], mode: PhiIndexMode): Promise<void> {
  const { ctes, bindings } = await indexCtes(writes, mode);
  if (ctes.length) await q.raw(`with ${ctes.join(', ')} select 1`, bindings);
}

/**
 * The data-modifying CTEs (and their bindings, in order) that write the index rows of `writes`
 * (at most WRITE_CHUNK of them): for writeIndexRows, or to join another statement (a single version's
 * write is one statement, storage/resource-store.ts).
 */
export async function indexCtes(writes: IndexWrite[], mode: PhiIndexMode): Promise<{ ctes: string[]; bindings: string[] }> {
  const ctes: string[] = [];
  const bindings: string[] = [];
  const owners = writes.filter((w) => w.replace).map((w) => ({ t: w.resourceType, i: w.id }));
  if (owners.length) {
    for (const kind of KINDS) {
      const d = ownerDelete(INDEX_TABLES[kind], owners);
      ctes.push(`d_${kind} as (${d.sql})`);
      bindings.push(...d.bindings);
    }
  }
  for (const kind of KINDS) {
    // Between tables: the records of a large resource take a while to build (fhir/pacer.ts).
    await pace();
    const cols = COLUMNS[kind];
    const records = indexRecords(kind, writes, mode);
    if (!records.length) continue;
    const names = cols.map((c) => c[0]).join(', ');
    const values = cols.map((c) => c[3] ?? c[0]).join(', ');
    ctes.push(`i_${kind} as (insert into ${INDEX_TABLES[kind]} (resource_type, resource_id, param, grp, ${names}) select t, i, p, g, ${values} from ${recordset(kind)})`);
    bindings.push(await stringifyArrayPaced(records));
  }
  // Sealed PHI parameters: their keyed-HMAC rows go to idx_blind in the same statement.
  const blind = await blindIndexCtes(writes, mode);
  ctes.push(...blind.ctes);
  bindings.push(...blind.bindings);
  return { ctes, bindings };
}

// ---- searches ------------------------------------------------------------------------------------

/** Ids of matching current resources ordered by id (conditional interactions: enough to tell 0, 1 and many apart). */
export async function searchIds(q: Queryable, where: SqlFragment, opts: { limit: number }): Promise<string[]> {
  const res = (await q.raw(`select r.id from resource r where ${where.sql} order by r.id limit ?`, [...where.bindings, opts.limit])) as { rows: { id: string }[] };
  return res.rows.map((r) => r.id);
}

/** A position in a result: the sort key values (as text, null when absent), the type and the id. */
export interface PageCursor {
  keys: (string | null)[];
  type: string;
  id: string;
}

export interface PageRow {
  type: string;
  id: string;
  keys: (string | null)[];
  /** The current row of the match, read in the page's own statement. */
  row: CurrentRow;
}

/**
 * `page.k{i}` comes strictly after (or, walking backwards, strictly before) the cursor value in the
 * key's order, where resources without a value come last.
 */
function beyond(i: number, k: SortKey, v: string | null, backwards: boolean): SqlFragment {
  const col = `page.k${i}`;
  if (backwards) {
    if (v === null) return { sql: `${col} is not null`, bindings: [] };
    return { sql: `${col} ${k.desc ? '>' : '<'} ?::${k.type}`, bindings: [v] };
  }
  if (v === null) return { sql: 'false', bindings: [] };
  const cmp = k.desc ? '<' : '>';
  return { sql: k.notNull ? `${col} ${cmp} ?::${k.type}` : `(${col} ${cmp} ?::${k.type} or ${col} is null)`, bindings: [v] };
}

function same(i: number, v: string | null, k: SortKey): SqlFragment {
  const col = `page.k${i}`;
  return v === null ? { sql: `${col} is null`, bindings: [] } : { sql: `${col} = ?::${k.type}`, bindings: [v] };
}

/**
 * Keyset predicate for (k0, ..., kn, type, id) beyond the cursor under mixed directions. When one type
 * is searched (and the cursor is of it) the tie-break is on the id alone: a row comparison
 * `(resource_type, id) > (?, ?)` would be taken by PostgreSQL as a range condition on the primary key
 * for every probe of a nested loop, scanning from the cursor to the end of the type each time.
 */
function keyset(keys: SortKey[], c: PageCursor, backwards: boolean, singleType: string | undefined): SqlFragment {
  let acc: SqlFragment =
    singleType !== undefined && c.type === singleType
      ? { sql: `page.id ${backwards ? '<' : '>'} ?`, bindings: [c.id] }
      : { sql: `(page.resource_type, page.id) ${backwards ? '<' : '>'} (?, ?)`, bindings: [c.type, c.id] };
  for (let i = keys.length - 1; i >= 0; i--) {
    const gt = beyond(i, keys[i], c.keys[i] ?? null, backwards);
    const eq = same(i, c.keys[i] ?? null, keys[i]);
    acc = { sql: `(${gt.sql}) or ((${eq.sql}) and (${acc.sql}))`, bindings: [...gt.bindings, ...eq.bindings, ...acc.bindings] };
  }
  return acc;
}

function orderOf(alias: string, k: SortKey, i: number, backwards: boolean): string {
  const col = `${alias}.k${i}`;
  const desc = backwards ? !k.desc : k.desc;
  if (k.notNull) return `${col}${desc ? ' desc' : ''}`;
  return `${col}${desc ? ' desc' : ''} ${backwards ? 'nulls first' : 'nulls last'}`;
}

/**
 * One page of matches in _sort order, then resource type and id (which makes keyset paging exact):
 * the rows after `after`, or with `before` the rows just before it (returned in forward order). Each
 * row carries its key values for the next cursor.
 */
export interface PageOptions {
  limit: number;
  after?: PageCursor;
  before?: PageCursor;
  /** Also count every match (accurate _total) in the same statement: the matches are found once for both. */
  total?: boolean;
}

/** One page of rows (each with its current row), and the number of all matches when asked for and the page is not empty. */
export async function searchPage(q: Queryable, plan: SearchPlan, keys: SortKey[], opts: PageOptions): Promise<{ rows: PageRow[]; total?: number }> {
  const { sql, bindings } = pageQuery(plan, keys, opts);
  const res = (await q.raw(sql, bindings)) as { rows: (CurrentRow & Record<string, unknown>)[] };
  const rows = res.rows.map((row) => ({
    type: row.resource_type,
    id: row.id,
    keys: keys.map((_k, i) => (row[`c${i}`] as string | null) ?? null),
    row: { resource_type: row.resource_type, id: row.id, version_id: row.version_id, last_updated: row.last_updated, content: row.content, sealed: row.sealed },
  }));
  const total = opts.total && res.rows.length ? Number(res.rows[0].total) : undefined;
  return { rows: opts.before !== undefined ? rows.reverse() : rows, ...(total !== undefined ? { total } : {}) };
}

/**
 * The SQL of one page (exported so tests can EXPLAIN exactly what a search runs). It returns the
 * current rows of the page (CURRENT_COLUMNS) with the keys, so a page is read in this one statement.
 */
export function pageQuery(plan: SearchPlan, keys: SortKey[], opts: PageOptions): SqlFragment {
  const backwards = opts.before !== undefined;
  const cursor = opts.before ?? opts.after;
  const dir = backwards ? ' desc' : '';
  const d = !keys.length && plan.type !== undefined && (!cursor || cursor.type === plan.type) ? plan.driven : undefined;
  if (d && plan.type !== undefined) {
    // Index-only: the first `limit` distinct ids of the source in id order, then their resource rows.
    // Same order and keyset as below, for one type. Without a total the walk stops after a page;
    // with one, the matches are collected once (materialized) and both counted and paged.
    const after = cursor ? ` ${opts.total ? 'where m.id' : 'and s.id'} ${backwards ? '<' : '>'} ?` : '';
    const afterBindings = cursor ? [cursor.id] : [];
    if (opts.total) {
      return {
        sql:
          `with m as materialized (select distinct s.id ${d.sql}) select r.resource_type, r.id, ${CURRENT_COLUMNS}, (select count(*) from m) as total from resource r ` +
          `where r.resource_type = ? and r.deleted = false and r.id in (select m.id from m${after} order by m.id${dir} limit ?) order by r.id${dir} limit ?`,
        bindings: [...d.bindings, plan.type, ...afterBindings, opts.limit, opts.limit],
      };
    }
    return {
      sql: `select r.resource_type, r.id, ${CURRENT_COLUMNS} from resource r where r.resource_type = ? and r.deleted = false and r.id in (select distinct s.id ${d.sql}${after} order by s.id${dir} limit ?) order by r.id${dir} limit ?`,
      bindings: [plan.type, ...d.bindings, ...afterBindings, opts.limit, opts.limit],
    };
  }
  // The page is chosen on ids and keys alone (a sort or a materialized count never carries the
  // content), then its rows are joined back by primary key and put in the same order.
  const where = plan.where;
  const select = keys.map((k, i) => `, ${k.expr.sql} as k${i}`).join('');
  const bindings = [...keys.flatMap((k) => k.expr.bindings), ...where.bindings];
  const cols = keys.map((_k, i) => `, page.k${i}, page.k${i}::text as c${i}`).join('');
  const matches = `select r.resource_type, r.id${select} from resource r where ${where.sql}`;
  let sql = opts.total
    ? `with m as materialized (${matches}) select page.resource_type, page.id${cols}, (select count(*) from m) as total from m page`
    : `select page.resource_type, page.id${cols} from (${matches}) page`;
  if (cursor) {
    const ks = keyset(keys, cursor, backwards, plan.type);
    sql += ` where ${ks.sql}`;
    bindings.push(...ks.bindings);
  }
  const order = (alias: string) => [...keys.map((k, i) => orderOf(alias, k, i, backwards)), `${alias}.resource_type${dir}`, `${alias}.id${dir}`].join(', ');
  sql += ` order by ${order('page')} limit ?`;
  bindings.push(opts.limit);
  const outer = ['q.resource_type', 'q.id', ...keys.map((_k, i) => `q.c${i}`), ...(opts.total ? ['q.total'] : [])].join(', ');
  sql = `select ${outer}, ${CURRENT_COLUMNS} from (${sql}) q join resource r on r.resource_type = q.resource_type and r.id = q.id order by ${order('q')}`;
  return { sql, bindings };
}

/** The SQL of an accurate count (exported so tests can EXPLAIN it): index entries only when the plan allows. */
export function countQuery(plan: SearchPlan): SqlFragment {
  if (plan.driven) return { sql: `select count(*) as n from (select distinct s.id ${plan.driven.sql}) q`, bindings: plan.driven.bindings };
  return { sql: `select count(*) as n from resource r where ${plan.where.sql}`, bindings: plan.where.bindings };
}

export async function countMatches(q: Queryable, plan: SearchPlan): Promise<number> {
  const c = countQuery(plan);
  const res = (await q.raw(c.sql, c.bindings)) as { rows: { n: number | string }[] };
  return Number(res.rows[0].n);
}

/** The planner's row estimate for the search (_total=estimate): no scan of the matches. */
export async function estimateMatches(q: Queryable, where: SqlFragment): Promise<number> {
  const res = (await q.raw(`explain (format json) select 1 from resource r where ${where.sql}`, where.bindings)) as { rows: Record<string, unknown>[] };
  const cell = Object.values(res.rows[0] ?? {})[0];
  const plan = (typeof cell === 'string' ? JSON.parse(cell) : cell) as { Plan?: { 'Plan Rows'?: number } }[];
  return Math.max(0, Math.round(Number(plan?.[0]?.Plan?.['Plan Rows'] ?? 0)));
}

/** _include: the targets that `params` of the given sources refer to (local references only). */
export async function referencedTargets(q: Queryable, sourceType: string, ids: string[], params: string[], targetType: string | undefined, limit: number): Promise<{ type: string; id: string }[]> {
  if (!ids.length || !params.length) return [];
  const bindings: (string | number)[] = [sourceType, ...ids, ...params];
  let sql = `select distinct x.target_type as type, x.target_id as id from idx_reference x where x.resource_type = ? and x.resource_id in (${ids.map(() => '?').join(', ')}) and x.param in (${params.map(() => '?').join(', ')}) and x.target_id is not null`;
  if (targetType) {
    sql += ' and x.target_type = ?';
    bindings.push(targetType);
  }
  bindings.push(limit);
  const res = (await q.raw(`${sql} limit ?`, bindings)) as { rows: { type: string; id: string }[] };
  return res.rows;
}

/** The targets of `targetType` that each of the given resources refers to through `params` (source id -> target ids). */
export async function targetsBySource(q: Queryable, sourceType: string, ids: string[], params: string[], targetType: string): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  if (!params.length) return out;
  for (let i = 0; i < ids.length; i += 1000) {
    const part = ids.slice(i, i + 1000);
    const res = (await q.raw(
      `select distinct x.resource_id as source, x.target_id as target from idx_reference x where x.resource_type = ? and x.resource_id = any(?::text[]) and x.param in (${params.map(() => '?').join(', ')}) and x.target_type = ? and x.target_id is not null`,
      [sourceType, part, ...params, targetType],
    )) as { rows: { source: string; target: string }[] };
    for (const r of res.rows) out.set(r.source, [...(out.get(r.source) ?? []), r.target]);
  }
  return out;
}

/** _revinclude: resources of `sourceType` whose `params` refer to the given targets. */
export async function referringSources(q: Queryable, sourceType: string, params: string[], targetType: string, ids: string[], limit: number): Promise<{ type: string; id: string }[]> {
  if (!ids.length || !params.length) return [];
  const res = (await q.raw(
    `select distinct x.resource_type as type, x.resource_id as id from idx_reference x where x.resource_type = ? and x.param in (${params.map(() => '?').join(', ')}) and x.target_type = ? and x.target_id in (${ids.map(() => '?').join(', ')}) limit ?`,
    [sourceType, ...params, targetType, ...ids, limit],
  )) as { rows: { type: string; id: string }[] };
  return res.rows;
}

/** Serializes conditional interactions on the same criteria for the rest of the transaction. */
export async function lockCriteria(q: Queryable, key: bigint): Promise<void> {
  await q.raw('select pg_advisory_xact_lock(?::bigint)', [key.toString()]);
}

// ---- authorization matching (auth/access.ts) ------------------------------------------------------

/** Which of the given current resources of `type` satisfy `where` (conditions on `r`), by the stored index rows. */
export async function matchCurrent(q: Queryable, type: string, ids: string[], where: SqlFragment): Promise<Set<string>> {
  if (!ids.length) return new Set();
  const res = (await q.raw(`select r.id from resource r where r.resource_type = ? and r.id in (${ids.map(() => '?').join(', ')}) and (${where.sql})`, [
    type,
    ...ids,
    ...where.bindings,
  ])) as { rows: { id: string }[] };
  return new Set(res.rows.map((r) => r.id));
}

/** A resource version to test against search conditions without its index rows being stored (an older version, or one about to be written). */
export interface MatchCandidate {
  resourceType: string;
  id: string;
  lastUpdated: Date;
  rows: IndexRows;
}

/**
 * Which candidates satisfy the conditions of their type (`whereByType`, conditions on `r` as
 * search/plan.ts writes them), evaluated by the same SQL over the candidates' own index rows: the
 * statement's CTEs take the names of `resource` and the index tables, so the planner's SQL runs
 * unchanged against the candidates (the conditions must not follow references to other resources:
 * no chains or _has). Candidates sharing a type and id (versions of one resource) go in separate
 * statements. Returns the indexes of the matching candidates.
 */
export async function matchCandidates(q: Queryable, candidates: MatchCandidate[], whereByType: Map<string, SqlFragment>, mode: PhiIndexMode): Promise<Set<number>> {
  const matched = new Set<number>();
  let pending = candidates.map((c, k) => ({ c, k })).filter(({ c }) => whereByType.has(c.resourceType));
  while (pending.length) {
    const seen = new Set<string>();
    const round: typeof pending = [];
    const later: typeof pending = [];
    for (const p of pending) {
      const key = `${p.c.resourceType}/${p.c.id}`;
      (seen.has(key) ? later : round).push(p);
      seen.add(key);
    }
    pending = later;
    const ctes: string[] = [];
    const bindings: string[] = [];
    ctes.push('resource as (select resource_type, id, last_updated, false as deleted, k from json_to_recordset(?::json) as x(resource_type text, id text, last_updated timestamptz, k int))');
    bindings.push(JSON.stringify(round.map(({ c, k }) => ({ resource_type: c.resourceType, id: c.id, last_updated: c.lastUpdated.toISOString(), k }))));
    for (const kind of KINDS) {
      const cols = COLUMNS[kind];
      const records = indexRecords(kind, round.map(({ c }) => c), mode);
      ctes.push(`${INDEX_TABLES[kind]} as (select t as resource_type, i as resource_id, p as param, g as grp, ${cols.map((c) => `${c[3] ?? c[0]} as ${c[0]}`).join(', ')} from ${recordset(kind)})`);
      bindings.push(JSON.stringify(records));
    }
    const types = [...new Set(round.map(({ c }) => c.resourceType))];
    const conds = types.map((t) => whereByType.get(t)!);
    const res = (await q.raw(`with ${ctes.join(', ')} select r.k from resource r where ${conds.map((c) => `(${c.sql})`).join(' or ')}`, [
      ...bindings,
      ...conds.flatMap((c) => c.bindings),
    ])) as { rows: { k: number }[] };
    for (const r of res.rows) matched.add(Number(r.k));
  }
  return matched;
}
