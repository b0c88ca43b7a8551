// Blind indexes of sealed PHI (design.md "PHI at rest"): keyed HMACs (16 bytes) of the normalised
// values of search parameters over sealed elements, in place of the plaintext index rows. One row per
// MAC; the lookup index serves `param = ? and mac in (...)` and returns the owner without a heap visit.
// idx_blind_state records, per current resource of a type with protected parameters, the blind key its
// rows were computed with: resources without a row on the active key (written before this migration,
// or before a blind-key change) are re-indexed by the background job (src/jobs/blind-reindex.ts).
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    create table idx_blind (
      resource_type text not null,
      resource_id text not null,
      param text not null,
      mac bytea not null
    )`);
  await knex.raw('create index idx_blind_lookup on idx_blind (resource_type, param, mac, resource_id)');
  await knex.raw('create index idx_blind_owner on idx_blind (resource_type, resource_id)');
  await knex.raw(`
    create table idx_blind_state (
      resource_type text not null,
      resource_id text not null,
      kid text not null,
      primary key (resource_type, resource_id)
    )`);
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop table if exists idx_blind_state');
  await knex.raw('drop table if exists idx_blind');
}
