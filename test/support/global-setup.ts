// Drops databases left behind by earlier interrupted runs (tests create vesta_t_* databases).
import pg from 'pg';

export default async function globalSetup(): Promise<void> {
  const url = process.env.TEST_DATABASE_URL;
  if (!url) return;
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const res = await client.query<{ datname: string }>(
      "select datname from pg_database where datname like 'vesta_t_%' and datname not in (select datname from pg_stat_activity where datname is not null)",
    );
    for (const { datname } of res.rows) await client.query(`drop database if exists "${datname}"`);
  } finally {
    await client.end();
  }
}
