// Runs the knex migrations in migrations/ (used on start and by `vesta migrate`).
import type { Knex } from 'knex';
import { MIGRATIONS, type Migration } from '../../migrations/index.js';

const source: Knex.MigrationSource<Migration> = {
  getMigrations: async () => MIGRATIONS,
  getMigrationName: (m) => m.name,
  getMigration: async (m) => ({ up: m.up, down: m.down }),
};

/** Applies pending migrations; returns the names applied. */
export async function migrateLatest(knex: Knex): Promise<string[]> {
  // knex's own lock table keeps several nodes starting at once from applying a migration twice.
  const [, applied] = (await knex.migrate.latest({ migrationSource: source, tableName: 'vesta_migrations' })) as [number, string[]];
  return applied;
}
