// The key id of each sealed row, so a re-seal after key rotation finds the rows still on old keys.
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw('alter table resource add column sealed_kid text');
  await knex.raw('alter table resource_history add column sealed_kid text');
  await knex.raw('create index history_sealed_kid on resource_history (sealed_kid) where sealed_kid is not null');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop index if exists history_sealed_kid');
  await knex.raw('alter table resource_history drop column sealed_kid');
  await knex.raw('alter table resource drop column sealed_kid');
}
