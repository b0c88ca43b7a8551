// The built-in SMART authorization server (src/auth/server): registered clients, users, the
// OAuth artifacts oidc-provider persists (codes, refresh tokens, grants, sessions, interactions,
// replay-detection entries, SMART launch contexts), and failed login attempts for throttling.
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    create table auth_client (
      client_id text primary key,
      metadata jsonb not null,
      created_at timestamptz not null default now(),
      updated_at timestamptz not null default now()
    )`);
  await knex.raw(`
    create table auth_user (
      username text primary key,
      password_hash text not null,
      fhir_user text,
      scopes text not null,
      disabled boolean not null default false,
      created_at timestamptz not null default now()
    )`);
  // One row per artifact; payload as oidc-provider gives it. expires_at lets rows be pruned.
  await knex.raw(`
    create table oauth_artifact (
      kind text not null,
      id text not null,
      payload jsonb not null,
      grant_id text,
      uid text,
      consumed_at timestamptz,
      expires_at timestamptz,
      primary key (kind, id)
    )`);
  await knex.raw('create index oauth_artifact_grant on oauth_artifact (grant_id) where grant_id is not null');
  await knex.raw('create index oauth_artifact_uid on oauth_artifact (uid) where uid is not null');
  await knex.raw('create index oauth_artifact_expires on oauth_artifact (expires_at) where expires_at is not null');
  await knex.raw(`
    create table auth_login_failure (
      key text not null,
      at timestamptz not null default now()
    )`);
  await knex.raw('create index auth_login_failure_key on auth_login_failure (key, at)');
}

export async function down(knex: Knex): Promise<void> {
  for (const t of ['auth_login_failure', 'oauth_artifact', 'auth_user', 'auth_client']) await knex.raw(`drop table if exists ${t}`);
}
