// Revoked token ids (RFC 7009 semantics; SMART App Launch token revocation): every node refuses a token
// whose jti is listed here. Rows are kept until the token would have expired anyway, then pruned.
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    create table revoked_token (
      jti text primary key,
      revoked_at timestamptz not null default now(),
      expires_at timestamptz not null
    )`);
  await knex.raw('create index revoked_token_at on revoked_token (revoked_at)');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop table if exists revoked_token');
}
