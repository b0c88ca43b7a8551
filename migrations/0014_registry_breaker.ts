// Immunization registry sync (issue 17): the circuit breaker belongs to the registry, not to one
// direction (a registry that is down is down for push and pull alike), so it moves out of
// registry_state into a row per registry; and a run holds a lease on (registry, direction), so two
// workers on different nodes never run the same direction of the same registry at once (a worker
// killed mid-run leaves a lease that expires).
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    create table registry_breaker (
      registry_id text primary key,
      state text not null default 'closed' check (state in ('closed', 'open', 'half-open')),
      consecutive_failures integer not null default 0,
      opened_at timestamptz,
      probe_started_at timestamptz,
      last_failure text,
      changed_at timestamptz not null default now()
    )`);
  await knex.raw('alter table registry_state drop column breaker_state, drop column consecutive_failures, drop column breaker_opened_at');
  await knex.raw('alter table registry_state add column run_holder text, add column run_lease_until timestamptz');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('alter table registry_state drop column run_holder, drop column run_lease_until');
  await knex.raw(`alter table registry_state add column breaker_state text not null default 'closed' check (breaker_state in ('closed', 'open', 'half-open')),
    add column consecutive_failures integer not null default 0, add column breaker_opened_at timestamptz`);
  await knex.raw('drop table if exists registry_breaker');
}
