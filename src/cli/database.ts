// The configured database, migrated, for a short command (users, clients, token revoke, audit verify).
import type { Config } from '../config/config.js';
import { openDatabase, type Database } from '../storage/db.js';
import { migrateLatest } from '../storage/migrate.js';

export async function withDatabase<T>(config: Readonly<Config>, fn: (q: Database['knex']) => Promise<T>): Promise<T> {
  const db = openDatabase({ ...(config.databaseUrl ? { databaseUrl: config.databaseUrl } : {}), dataDir: config.dataDir });
  try {
    await migrateLatest(db.knex);
    return await fn(db.knex);
  } finally {
    await db.close();
  }
}
