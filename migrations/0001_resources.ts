// Versioned resource storage: current rows, every version, and search index rows.
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    create table resource (
      resource_type text not null,
      id text not null,
      version_id integer not null,
      last_updated timestamptz not null,
      deleted boolean not null default false,
      content jsonb,
      sealed text,
      primary key (resource_type, id)
    )`);
  await knex.raw('create index resource_type_updated on resource (resource_type, last_updated)');
  // seq orders all versions across the server: history paging and _since are keyset scans on it.
  await knex.raw(`
    create table resource_history (
      seq bigserial not null unique,
      resource_type text not null,
      id text not null,
      version_id integer not null,
      last_updated timestamptz not null,
      deleted boolean not null default false,
      method text not null,
      content jsonb,
      sealed text,
      primary key (resource_type, id, version_id)
    )`);
  await knex.raw('create index history_type_seq on resource_history (resource_type, seq)');
  await knex.raw('create index history_updated on resource_history (last_updated)');
  // Token search index rows (written in the same transaction as the resource version).
  await knex.raw(`
    create table idx_token (
      resource_type text not null,
      resource_id text not null,
      param text not null,
      system text,
      code text
    )`);
  await knex.raw('create index idx_token_lookup on idx_token (resource_type, param, code, system)');
  await knex.raw('create index idx_token_owner on idx_token (resource_type, resource_id)');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop table if exists idx_token');
  await knex.raw('drop table if exists resource_history');
  await knex.raw('drop table if exists resource');
}
