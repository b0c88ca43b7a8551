// The audit ledger (issue 16): AuditEvents in an append-only table. A write appends its entry in its
// own transaction, unlinked (position null); the sequencer (src/audit/sequencer.ts) links committed
// entries in the order it sees them, each with its position, the previous entry's hash and its own
// hash, so writers never serialize on the chain head. An entry stores its AuditEvent as RFC 8785
// canonical JSON text: the exact bytes its digest covers, so verification hashes what is stored
// without parsing it, and no column outside the chain says something else (the id is indexed from
// the text itself).
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    create table audit_ledger (
      seq bigint generated always as identity primary key,
      canonical text not null,
      digest bytea not null,
      appended_at timestamptz not null default now(),
      position bigint unique,
      prev_hash bytea,
      hash bytea,
      linked_at timestamptz
    )`);
  await knex.raw('create index audit_ledger_unlinked on audit_ledger (seq) where position is null');
  await knex.raw("create unique index audit_ledger_event_id on audit_ledger (((canonical::jsonb) ->> 'id'))");
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop table if exists audit_ledger');
}
