// The audit ledger (issue 16): AuditEvents in an append-only table. A write appends its entry in its
// own transaction, unlinked (position null); the sequencer (src/audit/sequencer.ts) links committed
// entries in the order it sees them, each with its position, the previous entry's hash and its own
// hash, so writers never serialize on the chain head.
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    create table audit_ledger (
      seq bigint generated always as identity primary key,
      event_id text not null unique,
      recorded timestamptz not null,
      event jsonb not null,
      digest bytea not null,
      position bigint unique,
      prev_hash bytea,
      hash bytea,
      linked_at timestamptz
    )`);
  await knex.raw('create index audit_ledger_unlinked on audit_ledger (seq) where position is null');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop table if exists audit_ledger');
}
