// Versioned resource rows (https://hl7.org/fhir/R4/http.html#versioning): the current row per
// resource, every version in resource_history, and the search index rows of the current version.
import type { Resource } from 'fhir/r4.js';
import type { Knex } from 'knex';
import type { PhiCodec } from '../crypto/phi-codec.js';
import type { IndexRows } from '../search/index-extract.js';
import type { PhiIndexMode } from '../search/phi-seam.js';
import { phiIndexModeOf } from '../search/blind.js';
import { preparedRows, type Queryable, type Tx } from './db.js';
import type { CurrentRow } from './current-rows.js';
import { indexCtes, writeIndexRows, type IndexWrite } from './search-store.js';
import { extractIndexRows } from '../search/index-extract.js';
import { pace } from '../fhir/pacer.js';

export type WriteMethod = 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** Versions with content not examined under `kid` (see ResourceStore.countStale). */
function stale<T extends Knex.QueryBuilder>(qb: T, kid: string): T {
  return qb.whereNotNull('content').where((w) => w.whereNull('sealed_kid').orWhereNot('sealed_kid', kid)) as T;
}

export interface VersionHead {
  versionId: number;
  lastUpdated: Date;
  deleted: boolean;
}

export interface StoredVersion extends VersionHead {
  resourceType: string;
  id: string;
  method: WriteMethod;
  /** Absent for a deletion marker. */
  resource?: Resource;
  seq?: number;
}

/**
 * Where storage reports each version it writes: the audit trail of the interaction (issue 16).
 * Storage's write methods take only an AuditedTx, a transaction that carries one; the interaction
 * layer's auditedTransaction (interactions/audit.ts) is what makes it, and appends the AuditEvent in
 * the same transaction, so no write reaches the database without its record.
 */
export interface WriteRecorder {
  wrote(v: NewVersion): void;
}

/** The property of a transaction that holds its WriteRecorder. */
export const AUDIT_SCOPE: unique symbol = Symbol('vesta.audit-scope');

export type AuditedTx = Tx & { readonly [AUDIT_SCOPE]: WriteRecorder };

/** The transaction's recorder; a write without one is a programming error, refused before any SQL. */
function recorderOf(tx: AuditedTx): WriteRecorder {
  const r = (tx as unknown as Record<symbol, WriteRecorder | undefined>)[AUDIT_SCOPE];
  if (!r || typeof r.wrote !== 'function') throw new Error('a resource write outside an audited transaction');
  return r;
}

export interface NewVersion {
  resourceType: string;
  id: string;
  versionId: number;
  lastUpdated: Date;
  method: WriteMethod;
  /** The resource with meta already set; absent for a delete. */
  resource?: Resource;
  index?: IndexRows;
  /** The version this one replaces (undefined when the resource never existed). */
  previous?: number;
  /**
   * The row as stored (sealed and serialised), when it was made before the transaction
   * (ResourceStore.sealRow); storage makes it at write time otherwise.
   */
  row?: SealedRow;
  /** A deletion: the patients whose compartment held the version it ends (for its AuditEvent). */
  formerPatients?: string[];
}

export interface HistoryQuery {
  resourceType?: string;
  id?: string;
  since?: Date;
  at?: { start: Date; end: Date };
  /** Keyset: only versions with seq below this. */
  beforeSeq?: number;
  limit: number;
}

interface Row {
  resource_type: string;
  id: string;
  version_id: number;
  last_updated: Date | string;
  deleted: boolean;
  content: Resource | string | null;
  sealed: string | null;
  method?: WriteMethod;
  seq?: number;
}

/** A version's stored form: the content without its sealed elements (JSON text), and the JWE of them. */
export interface SealedRow {
  /** The version number the JWE's header binds and the lastUpdated in the content (ms): a row is written only as that version. */
  versionId: number;
  lastUpdated: number;
  content: string | null;
  sealed: string | null;
  sealedKid: string | null;
}

/** Whether a version's row made before the transaction is still its row (same version and lastUpdated). */
function rowFits(v: NewVersion): boolean {
  return v.row !== undefined && v.row.versionId === v.versionId && v.row.lastUpdated === v.lastUpdated.getTime();
}

/**
 * Largest version (characters of content, twice, and of index rows) written as one statement; a larger
 * one is written as three, yielding between them.
 */
const ONE_STATEMENT_MAX_CHARS = 256 * 1024;

/** Rows per multi-row INSERT of resources (9 columns: well under PostgreSQL's 65535 bind limit). */
const BATCH_ROWS = 500;

export class ResourceStore {
  constructor(private readonly codec: PhiCodec) {}

  /** Key id new versions are sealed with (null without sealing). */
  get activeKid(): string | null {
    return this.codec.activeKid;
  }

  private async toVersion(row: Row): Promise<StoredVersion> {
    const v: StoredVersion = {
      resourceType: row.resource_type,
      id: row.id,
      versionId: row.version_id,
      lastUpdated: row.last_updated instanceof Date ? row.last_updated : new Date(row.last_updated),
      deleted: row.deleted,
      method: row.method ?? 'PUT',
      ...(row.seq !== undefined ? { seq: row.seq } : {}),
    };
    if (!row.deleted && row.content !== null) {
      const content = typeof row.content === 'string' ? (JSON.parse(row.content) as Resource) : row.content;
      // The row's content was parsed for this call alone: opened in place.
      const opened = await this.codec.openOwned(content, row.sealed, { resourceType: v.resourceType, id: v.id, versionId: v.versionId });
      // jsonb does not keep member order; put the envelope first as clients expect to read it.
      const { resourceType, id, meta, ...rest } = opened as Resource & Record<string, unknown>;
      v.resource = { resourceType, id, meta, ...rest } as Resource;
    }
    return v;
  }

  /** A live current row a search statement returned (storage/current-rows.ts), opened as readMany opens its rows. */
  openCurrent(row: CurrentRow): Promise<StoredVersion> {
    return this.toVersion({ ...row, deleted: false });
  }

  /** The current version (possibly a deletion marker), or undefined if the resource never existed. */
  async readCurrent(q: Queryable, resourceType: string, id: string): Promise<StoredVersion | undefined> {
    const [row] = await preparedRows<Row>(q, 'vesta_read_current', 'select resource_type, id, version_id, last_updated, deleted, content, sealed from resource where resource_type = $1 and id = $2', [resourceType, id]);
    return row ? this.toVersion(row) : undefined;
  }

  async readVersion(q: Queryable, resourceType: string, id: string, versionId: number): Promise<StoredVersion | undefined> {
    const row = (await q('resource_history')
      .where({ resource_type: resourceType, id, version_id: versionId })
      .first()) as Row | undefined;
    return row ? this.toVersion(row) : undefined;
  }

  /** Locks the current row for the rest of the transaction and returns its head. */
  async lockCurrent(tx: Tx, resourceType: string, id: string): Promise<VersionHead | undefined> {
    const row = (await tx('resource')
      .select('version_id', 'last_updated', 'deleted')
      .where({ resource_type: resourceType, id })
      .forUpdate()
      .first()) as Row | undefined;
    if (!row) return undefined;
    return {
      versionId: row.version_id,
      lastUpdated: row.last_updated instanceof Date ? row.last_updated : new Date(row.last_updated),
      deleted: row.deleted,
    };
  }

  /**
   * Locks the current rows of several resources in one statement (transaction Bundles) and returns
   * their heads by "type/id"; resources that never existed are absent from the map.
   */
  async lockCurrentMany(tx: Tx, refs: { resourceType: string; id: string }[]): Promise<Map<string, VersionHead>> {
    const heads = new Map<string, VersionHead>();
    if (!refs.length) return heads;
    const res = (await tx.raw(
      'select r.resource_type, r.id, r.version_id, r.last_updated, r.deleted from resource r ' +
        'join json_to_recordset(?::json) as x(t text, i text) on r.resource_type = x.t and r.id = x.i ' +
        'order by r.resource_type, r.id for update of r',
      [JSON.stringify(refs.map((r) => ({ t: r.resourceType, i: r.id })))],
    )) as { rows: Row[] };
    for (const row of res.rows) {
      heads.set(`${row.resource_type}/${row.id}`, {
        versionId: row.version_id,
        lastUpdated: row.last_updated instanceof Date ? row.last_updated : new Date(row.last_updated),
        deleted: row.deleted,
      });
    }
    return heads;
  }

  /** Reads several current resources by id (deleted ones excluded), in the order given. */
  async readMany(q: Queryable, resourceType: string, ids: string[]): Promise<StoredVersion[]> {
    if (!ids.length) return [];
    const rows = (await q('resource').where({ resource_type: resourceType, deleted: false }).whereIn('id', ids)) as Row[];
    const byId = new Map(rows.map((r) => [r.id, r]));
    const out: StoredVersion[] = [];
    for (const id of ids) {
      const r = byId.get(id);
      if (r) out.push(await this.toVersion(r));
    }
    return out;
  }

  /**
   * Writes one new version: history row, current row and index rows. The history primary key
   * (type, id, version) makes a duplicate version impossible; a first version inserts the current
   * row, so two concurrent creates of the same id collide on its primary key (23505).
   */
  async writeVersion(tx: AuditedTx, v: NewVersion): Promise<void> {
    const recorder = recorderOf(tx);
    const { content: json, sealed, sealedKid } = (rowFits(v) ? v.row! : await this.sealRow(v));
    const deleted = !v.resource;
    // The history row, the current row (inserted for a first version, else updated only if it still is
    // the previous version) and the index rows. A second create of the same id fails on the current
    // row's primary key (23505). Index rows of the new version replace the old ones (none for a
    // deletion); a first version has no old rows to delete.
    const lastUpdated = v.lastUpdated.toISOString();
    const history = 'insert into resource_history (resource_type, id, version_id, last_updated, deleted, method, content, sealed, sealed_kid) values (?, ?, ?, ?::timestamptz, ?, ?, ?::jsonb, ?, ?)';
    const historyBindings = [v.resourceType, v.id, v.versionId, lastUpdated, deleted, v.method, json, sealed, sealedKid];
    const current =
      v.previous === undefined
        ? 'insert into resource (resource_type, id, version_id, last_updated, deleted, content, sealed, sealed_kid) values (?, ?, ?, ?::timestamptz, ?, ?::jsonb, ?, ?) returning 1'
        : 'update resource set version_id = ?, last_updated = ?::timestamptz, deleted = ?, content = ?::jsonb, sealed = ?, sealed_kid = ? where resource_type = ? and id = ? and version_id = ? returning 1';
    const currentBindings =
      v.previous === undefined
        ? [v.resourceType, v.id, v.versionId, lastUpdated, deleted, json, sealed, sealedKid]
        : [v.versionId, lastUpdated, deleted, json, sealed, sealedKid, v.resourceType, v.id, v.previous];
    const index = await indexCtes([{ resourceType: v.resourceType, id: v.id, ...(v.resource && v.index ? { rows: v.index } : {}), replace: v.previous !== undefined }], this.phiIndexMode);
    const size = (json?.length ?? 0) * 2 + index.bindings.reduce((n, b) => n + b.length, 0);
    let written: number;
    if (size <= ONE_STATEMENT_MAX_CHARS) {
      // One statement, one round trip: the three writes as data-modifying CTEs.
      const ctes = [`h as (${history})`, `c as (${current})`, ...index.ctes];
      const res = (await tx.raw(`with ${ctes.join(', ')} select count(*)::int as n from c`, [...historyBindings, ...currentBindings, ...index.bindings] as never[])) as { rows: { n: number }[] };
      written = res.rows[0].n;
    } else {
      // A large version as three statements with a turn of the event loop between them: the driver
      // serialises a statement's values in one synchronous step, and the embedded database runs a
      // statement in this thread (fhir/pacer.ts; test/integration/fuzz.test.ts's stall limit).
      await tx.raw(history, historyBindings as never[]);
      await pace();
      written = ((await tx.raw(current, currentBindings as never[])) as { rows: unknown[] }).rows.length;
      await pace();
      if (index.ctes.length) await tx.raw(`with ${index.ctes.join(', ')} select 1`, index.bindings);
    }
    if (written !== 1) throw Object.assign(new Error('current row changed under a lock'), { code: '40001' });
    recorder.wrote(v);
  }

  /**
   * Seals and serialises a version's content (CPU only, no database): callers make it before their
   * transaction where the version number is known there (design.md: CPU work before BEGIN), and the
   * write methods make it otherwise. The JWE's protected header binds type, id and version number.
   */
  async sealRow(v: { resourceType: string; id: string; versionId: number; lastUpdated: Date; resource?: Resource }): Promise<SealedRow> {
    if (!v.resource) return { versionId: v.versionId, lastUpdated: v.lastUpdated.getTime(), content: null, sealed: null, sealedKid: null };
    await pace();
    const s = await this.codec.seal(v.resource, { resourceType: v.resourceType, id: v.id, versionId: v.versionId });
    // Sealing and serialising a large resource are each long steps: yield between them (fhir/pacer.ts).
    await pace();
    return { versionId: v.versionId, lastUpdated: v.lastUpdated.getTime(), content: JSON.stringify(s.content), sealed: s.sealed, sealedKid: s.kid };
  }

  /** How PHI reaches the search index: sealed PHI parameters through blind indexes (search/blind.ts). */
  get phiIndexMode(): PhiIndexMode {
    return phiIndexModeOf(this.codec);
  }

  /**
   * Writes many first versions at once (transaction Bundles): multi-row inserts of history rows,
   * current rows and index rows, so N creates cost a few statements rather than N round trips.
   * Every version must be new (versionId 1, no previous); a clash on an id fails the statement.
   */
  async writeNewBatch(tx: AuditedTx, versions: NewVersion[]): Promise<void> {
    for (const v of versions) if (v.previous !== undefined || !v.resource) throw new Error('writeNewBatch takes first versions of resources only');
    await this.writeVersions(tx, versions);
  }

  /**
   * Writes many versions at once (transaction Bundles), each as writeVersion would, in a few
   * statements per chunk: one multi-row insert of history rows, one of new current rows, and one
   * UPDATE ... FROM of the existing current rows, guarded by their previous version (a compare-and-
   * swap: fewer rows updated than expected throws 40001, as writeVersion does). The caller holds
   * the row locks (lockCurrentMany) and gives each resource at most once.
   */
  async writeVersions(tx: AuditedTx, versions: NewVersion[]): Promise<void> {
    if (!versions.length) return;
    const recorder = recorderOf(tx);
    // Rows not sealed before the transaction are sealed one version at a time, yielding between them
    // (fhir/pacer.ts): sealing thousands of versions at once (Promise.all) ran as one long chain of
    // microtasks that kept the event loop from everything else.
    const rows: { resource_type: string; id: string; version_id: number; last_updated: Date; deleted: boolean; content: string | null; sealed: string | null; sealed_kid: string | null }[] = [];
    for (const v of versions) {
      const { content, sealed, sealedKid } = (rowFits(v) ? v.row! : await this.sealRow(v));
      rows.push({ resource_type: v.resourceType, id: v.id, version_id: v.versionId, last_updated: v.lastUpdated, deleted: !v.resource, content, sealed, sealed_kid: sealedKid });
    }
    for (let i = 0; i < rows.length; i += BATCH_ROWS) {
      const chunk = rows.slice(i, i + BATCH_ROWS);
      const vs = versions.slice(i, i + BATCH_ROWS);
      await tx('resource_history').insert(chunk.map((r, j) => ({ ...r, method: vs[j].method })));
      const fresh = chunk.filter((_r, j) => vs[j].previous === undefined);
      if (fresh.length) await tx('resource').insert(fresh);
      const existing = chunk.flatMap((r, j) => (vs[j].previous === undefined ? [] : [{ ...r, last_updated: r.last_updated.toISOString(), previous: vs[j].previous }]));
      if (existing.length) {
        const res = (await tx.raw(
          'update resource r set version_id = x.version_id, last_updated = x.last_updated, deleted = x.deleted, content = x.content::jsonb, sealed = x.sealed, sealed_kid = x.sealed_kid ' +
            'from json_to_recordset(?::json) as x(resource_type text, id text, previous integer, version_id integer, last_updated timestamptz, deleted boolean, content text, sealed text, sealed_kid text) ' +
            'where r.resource_type = x.resource_type and r.id = x.id and r.version_id = x.previous returning r.id',
          [JSON.stringify(existing)],
        )) as { rows: unknown[] };
        if (res.rows.length !== existing.length) throw Object.assign(new Error('current rows changed under a lock'), { code: '40001' });
      }
    }
    // Index rows of each new version replace the old ones (none for a deletion); first versions
    // have no old rows to delete.
    await writeIndexRows(
      tx,
      versions.map((v) => ({ resourceType: v.resourceType, id: v.id, ...(v.resource && v.index ? { rows: v.index } : {}), replace: v.previous !== undefined })),
      this.phiIndexMode,
    );
    for (const v of versions) recorder.wrote(v);
  }

  /**
   * Versions not examined under the active key (what a re-seal still has to do): sealed with an older
   * key, examined under an older key with nothing to seal (a policy change may now seal something), or
   * never examined (written while sealing was off). Deletion markers hold nothing.
   */
  async countStale(q: Queryable): Promise<number> {
    const kid = this.codec.activeKid;
    if (kid === null) return 0;
    const r = (await stale(q('resource_history'), kid).count('* as n').first()) as { n: number | string };
    return Number(r.n);
  }

  /**
   * Re-seals up to `limit` versions after `afterSeq` still on an older key with the active key, in one transaction.
   * Rows are claimed with SKIP LOCKED so several workers can share the work; the current row is
   * updated only if it is still that version (a newer write already used the active key). A current
   * version also gets its search index rows written again: re-sealing is how a changed PHI policy
   * reaches stored data, and the index must follow it (words of a newly sealed element must leave
   * the full-text and plaintext index tables, its values go to the blind index).
   */
  async resealSome(tx: Tx, limit: number, afterSeq = 0): Promise<{ claimed: number; lastSeq: number; versions: { type: string; id: string; version: number }[] }> {
    const kid = this.codec.activeKid;
    if (kid === null) return { claimed: 0, lastSeq: afterSeq, versions: [] };
    // A keyset walk over seq: each batch starts where the last one ended instead of skipping every
    // version already done (which made a pass quadratic in the number of versions).
    const rows = (await stale(tx('resource_history').select('resource_type', 'id', 'version_id', 'content', 'sealed', 'seq'), kid)
      .where('seq', '>', afterSeq)
      .orderBy('seq')
      .limit(limit)
      .forUpdate()
      .skipLocked()) as Row[];
    const reindex: IndexWrite[] = [];
    for (const row of rows) {
      const ref = { resourceType: row.resource_type, id: row.id, versionId: row.version_id };
      const content = typeof row.content === 'string' ? (JSON.parse(row.content) as Resource) : (row.content as Resource);
      const resource = await this.codec.open(content, row.sealed, ref);
      const s = await this.codec.seal(resource, ref);
      const update = { content: JSON.stringify(s.content), sealed: s.sealed, sealed_kid: s.kid };
      await tx('resource_history').where({ resource_type: row.resource_type, id: row.id, version_id: row.version_id }).update(update);
      const current = await tx('resource').where({ resource_type: row.resource_type, id: row.id, version_id: row.version_id, deleted: false }).update(update);
      if (current) reindex.push({ resourceType: row.resource_type, id: row.id, rows: extractIndexRows(resource), replace: true });
    }
    await writeIndexRows(tx, reindex, this.phiIndexMode);
    return { claimed: rows.length, lastSeq: rows.length ? Number(rows[rows.length - 1].seq) : afterSeq, versions: rows.map((r) => ({ type: r.resource_type, id: r.id, version: r.version_id })) };
  }

  /** Versions newest first (by global sequence), filtered as the history interaction asks. */
  async history(q: Queryable, h: HistoryQuery): Promise<StoredVersion[]> {
    const qb = q('resource_history as h').select('h.*');
    if (h.resourceType) qb.where('h.resource_type', h.resourceType);
    if (h.id) qb.where('h.id', h.id);
    if (h.since) qb.where('h.last_updated', '>=', h.since);
    if (h.beforeSeq !== undefined) qb.where('h.seq', '<', h.beforeSeq);
    if (h.at) {
      const { start, end } = h.at;
      // current at some point in [start, end): written before the end, and not replaced before the start
      qb.where('h.last_updated', '<', end).whereNotExists(function later() {
        this.select(q.raw('1'))
          .from('resource_history as n')
          .whereRaw('n.resource_type = h.resource_type and n.id = h.id and n.version_id > h.version_id')
          .where('n.last_updated', '<=', start);
      });
    }
    const rows = (await qb.orderBy('h.seq', 'desc').limit(h.limit)) as Row[];
    return Promise.all(rows.map((r) => this.toVersion(r)));
  }

  async countHistory(q: Queryable, resourceType: string, id: string): Promise<number> {
    const r = (await q('resource_history').where({ resource_type: resourceType, id }).count('* as n').first()) as { n: number | string };
    return Number(r.n);
  }
}
