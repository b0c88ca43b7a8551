// Search over the audit ledger (issue 16 item 7: /AuditEvent read and search). One row per ledger
// entry in audit_search, derived from the entry's stored AuditEvent by src/audit/search-columns.ts and
// written in the same statement as the entry: recorded, action, outcome, and arrays of token and
// reference keys. They only choose entries: what a read or a search returns is always the canonical
// text itself, and a row applies only to the exact bytes it was derived from (its seq and digest must
// both match the entry's), so an edited entry is never described by stale columns.
//
// A table of its own rather than columns on audit_ledger: linking an entry updates its position, an
// indexed column, so with the columns on the ledger every link rewrote the entry's whole row and all
// its index entries, these included, and verify read wider rows (test/integration/audit-ledger.test.ts
// on PostgreSQL, 2026-12-05: 85 s without search, 135 s with the columns on audit_ledger, 77 s with
// this table). The ledger keeps only what the chain covers, as migration 0011 says.
//
// One multicolumn GIN index serves every array column (GIN answers conditions on any subset of its
// columns), so an append updates one inverted index instead of eight. A B-tree on (recorded, seq),
// nulls first, serves the date conditions and both sort orders (newest first is its backward scan).
// Entries appended before this migration get their rows here, from their canonical text, through the
// same function as the write path (without a base URL: their references are as BALP made them).
//
// The AuditEvent id moves here too (event_id, unique): 0011 indexed it as an expression over the
// canonical text, which made PostgreSQL parse every entry's JSON on its insert and again when the
// sequencer linked it (the link rewrites the row); about a fifth of an append's database time
// (2026-12-05, groups of 6 records: 114 us per record with it, 89 without).
import type { Knex } from 'knex';
import { searchColumns } from '../src/audit/search-columns.js';

/** Entries read and indexed per round trip. */
const BATCH = 500;

const ARRAYS = ['type_tokens', 'subtype_tokens', 'agent_refs', 'agent_idents', 'entity_refs', 'entity_idents', 'patient_refs', 'source_refs', 'source_idents'];

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    create table audit_search (
      seq bigint primary key,
      digest bytea not null,
      event_id text collate "C",
      recorded timestamptz,
      action text collate "C",
      outcome text collate "C",
      ${ARRAYS.map((c) => `${c} text[] collate "C" not null default '{}'`).join(',\n      ')}
    )`);
  let after = 0;
  for (;;) {
    const res = (await knex.raw('select seq, digest, canonical from audit_ledger where seq > ? order by seq limit ?', [after, BATCH])) as { rows: { seq: string | number; digest: Buffer; canonical: string }[] };
    if (!res.rows.length) break;
    const rows = res.rows.flatMap((r) => {
      // The id index of 0011 keeps canonical JSON; anything but an object is a tampered entry (verify names it).
      const event = JSON.parse(r.canonical) as unknown;
      if (event === null || typeof event !== 'object' || Array.isArray(event)) return [];
      const c = searchColumns(event as Record<string, unknown>);
      return [[Number(r.seq), r.digest, c.eventId, c.recorded, c.action, c.outcome, c.type, c.subtype, c.agent, c.agentIdentifier, c.entity, c.entityIdentifier, c.patient, c.source, c.sourceIdentifier]];
    });
    if (rows.length) {
      await knex.raw(
        `insert into audit_search (seq, digest, event_id, recorded, action, outcome, ${ARRAYS.join(', ')})
         values ${rows.map(() => `(?, ?, ?, ?::timestamptz, ?, ?, ${ARRAYS.map(() => '?::text[]').join(', ')})`).join(', ')}`,
        rows.flat() as Knex.RawBinding[],
      );
    }
    after = Number(res.rows[res.rows.length - 1].seq);
  }
  await knex.raw(`create index audit_search_keys on audit_search using gin (${ARRAYS.join(', ')})`);
  await knex.raw('create index audit_search_recorded on audit_search (recorded nulls first, seq)');
  await knex.raw('create unique index audit_search_event_id on audit_search (event_id)');
  await knex.raw('drop index if exists audit_ledger_event_id');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop table if exists audit_search');
  await knex.raw("create unique index if not exists audit_ledger_event_id on audit_ledger (((canonical::jsonb) ->> 'id'))");
}
