// Immunization registry sync (issue 17): per registry and direction the watermark, last run, counts
// and circuit breaker; per record the last version handled and its failures; the review list of
// pulled Immunizations whose patient matched no local Patient or several; and the claimed schedule
// windows that keep two nodes from running the same window twice.
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    create table registry_state (
      registry_id text not null,
      direction text not null check (direction in ('push', 'pull')),
      watermark timestamptz,
      last_run_started timestamptz,
      last_run_finished timestamptz,
      last_outcome text,
      last_error text,
      counts jsonb not null default '{}'::jsonb,
      breaker_state text not null default 'closed' check (breaker_state in ('closed', 'open', 'half-open')),
      consecutive_failures integer not null default 0,
      breaker_opened_at timestamptz,
      primary key (registry_id, direction)
    )`);
  // handled_version: for push the local versionId sent; for pull the registry's meta.versionId stored
  // (handled_last_updated its meta.lastUpdated, for registries that do not version).
  await knex.raw(`
    create table registry_record (
      registry_id text not null,
      direction text not null check (direction in ('push', 'pull')),
      resource_type text not null,
      resource_id text not null,
      handled_version text,
      handled_last_updated timestamptz,
      attempts integer not null default 0,
      last_error jsonb,
      status text not null check (status in ('ok', 'rejected', 'dead-letter')),
      updated_at timestamptz not null default now(),
      primary key (registry_id, direction, resource_type, resource_id)
    )`);
  await knex.raw("create index registry_record_dead_letter on registry_record (registry_id, updated_at) where status = 'dead-letter'");
  await knex.raw(`
    create table registry_review (
      id serial primary key,
      registry_id text not null,
      registry_reference text not null,
      reason text not null check (reason in ('no-match', 'several-matches')),
      detail text,
      created_at timestamptz not null default now(),
      resolved_at timestamptz
    )`);
  // A pull that meets the same unmatched Immunization again must not list it twice.
  await knex.raw('create unique index registry_review_open on registry_review (registry_id, registry_reference) where resolved_at is null');
  await knex.raw(`
    create table registry_run (
      registry_id text not null,
      direction text not null check (direction in ('push', 'pull')),
      window_key text not null,
      claimed_at timestamptz not null default now(),
      primary key (registry_id, direction, window_key)
    )`);
  await knex.raw('create index registry_run_claimed on registry_run (claimed_at)');
}

export async function down(knex: Knex): Promise<void> {
  for (const t of ['registry_run', 'registry_review', 'registry_record', 'registry_state']) await knex.raw(`drop table if exists ${t}`);
}
