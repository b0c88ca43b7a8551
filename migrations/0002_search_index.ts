// Search index tables (https://hl7.org/fhir/R4/search.html#ptypes): one table per parameter type,
// B-tree indexes keyed by (resource_type, param, value). No GIN: its pending list hurts bulk writes.
// Rows are rewritten in the same transaction as the resource version they describe (storage/resource-store.ts).
// `grp` ties the component rows of one composite value together (null for plain parameters).
// Long values are indexed on a prefix (left(...)) so a B-tree entry never exceeds its size limit;
// the key lengths here are mirrored by src/search/keys.ts and must not change without a new migration.
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  // Tokens: widened for composites and :text (display / CodeableConcept.text, normalised).
  await knex.raw('alter table idx_token add column grp smallint');
  await knex.raw('alter table idx_token add column text_norm text');

  await knex.raw(`
    create table idx_string (
      resource_type text not null,
      resource_id text not null,
      param text not null,
      grp smallint,
      value_norm text not null,
      value_exact text not null
    )`);
  // text_pattern_ops lets LIKE 'prefix%' use the index whatever the database collation.
  await knex.raw('create index idx_string_lookup on idx_string (resource_type, param, left(value_norm, 100) text_pattern_ops)');
  await knex.raw('create index idx_string_owner on idx_string (resource_type, resource_id)');

  await knex.raw(`
    create table idx_reference (
      resource_type text not null,
      resource_id text not null,
      param text not null,
      grp smallint,
      target_type text,
      target_id text,
      url text,
      version text
    )`);
  // Serves Type/id and id searches, and the reverse direction (_has, _revinclude) by target id.
  await knex.raw('create index idx_reference_lookup on idx_reference (resource_type, param, target_id, target_type)');
  await knex.raw('create index idx_reference_url on idx_reference (resource_type, param, url)');
  await knex.raw('create index idx_reference_owner on idx_reference (resource_type, resource_id)');

  // Dates as [low, high) in epoch milliseconds; open ends use +-8.64e15 (the JS Date limits).
  await knex.raw(`
    create table idx_date (
      resource_type text not null,
      resource_id text not null,
      param text not null,
      grp smallint,
      low bigint not null,
      high bigint not null
    )`);
  await knex.raw('create index idx_date_low on idx_date (resource_type, param, low)');
  await knex.raw('create index idx_date_high on idx_date (resource_type, param, high)');
  await knex.raw('create index idx_date_owner on idx_date (resource_type, resource_id)');

  // Numbers and quantities as closed [low, high] (a point when low = high; Range bounds otherwise;
  // an open bound is numeric +-Infinity).
  await knex.raw(`
    create table idx_number (
      resource_type text not null,
      resource_id text not null,
      param text not null,
      grp smallint,
      low numeric not null,
      high numeric not null
    )`);
  await knex.raw('create index idx_number_lookup on idx_number (resource_type, param, low)');
  await knex.raw('create index idx_number_owner on idx_number (resource_type, resource_id)');

  await knex.raw(`
    create table idx_quantity (
      resource_type text not null,
      resource_id text not null,
      param text not null,
      grp smallint,
      low numeric not null,
      high numeric not null,
      system text,
      code text,
      unit text
    )`);
  await knex.raw('create index idx_quantity_code on idx_quantity (resource_type, param, code, low)');
  await knex.raw('create index idx_quantity_value on idx_quantity (resource_type, param, low)');
  await knex.raw('create index idx_quantity_owner on idx_quantity (resource_type, resource_id)');

  await knex.raw(`
    create table idx_uri (
      resource_type text not null,
      resource_id text not null,
      param text not null,
      grp smallint,
      uri text not null
    )`);
  await knex.raw('create index idx_uri_lookup on idx_uri (resource_type, param, left(uri, 150) text_pattern_ops)');
  await knex.raw('create index idx_uri_owner on idx_uri (resource_type, resource_id)');
}

export async function down(knex: Knex): Promise<void> {
  for (const t of ['idx_uri', 'idx_quantity', 'idx_number', 'idx_date', 'idx_reference', 'idx_string']) await knex.raw(`drop table if exists ${t}`);
  await knex.raw('alter table idx_token drop column if exists text_norm');
  await knex.raw('alter table idx_token drop column if exists grp');
}
