#!/usr/bin/env node
// The `vesta` command: serve, migrate.
import { ConfigError, loadConfig } from '../config/config.js';
import { serve } from '../main.js';
import { openDatabase } from '../storage/db.js';
import { migrateLatest } from '../storage/migrate.js';

const USAGE = `usage: vesta <command>
  serve     start the FHIR server (configuration from the environment, see README)
  migrate   apply pending database migrations and exit`;

async function main(argv: string[]): Promise<number> {
  const [cmd] = argv;
  switch (cmd) {
    case 'serve':
      await serve();
      return -1;
    case 'migrate': {
      const config = loadConfig();
      const db = openDatabase({ ...(config.databaseUrl ? { databaseUrl: config.databaseUrl } : {}), dataDir: config.dataDir });
      try {
        const applied = await migrateLatest(db.knex);
        process.stdout.write(applied.length ? `applied: ${applied.join(', ')}\n` : 'database is up to date\n');
      } finally {
        await db.close();
      }
      return 0;
    }
    default:
      process.stderr.write(`${USAGE}\n`);
      return cmd === undefined || cmd === 'help' || cmd === '--help' ? 0 : 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (e: unknown) => {
    if (e instanceof ConfigError) process.stderr.write(`vesta: configuration error: ${e.message}\n`);
    else process.stderr.write(`vesta: ${(e as Error)?.message ?? String(e)}\n`);
    process.exit(e instanceof ConfigError ? 2 : 1);
  },
);
