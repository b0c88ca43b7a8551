// Ceiling for read-by-id: a bare Express route doing the same SELECT through pg, nothing else.
import express from 'express';
import pg from 'pg';

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: Number(process.env.DATABASE_POOL_MAX ?? 10) });
const app = express();
app.get('/:type/:id', async (req, res) => {
  const r = await pool.query('select content from resource where resource_type = $1 and id = $2', [req.params.type, req.params.id]);
  if (!r.rows.length) {
    res.status(404).end();
    return;
  }
  res.setHeader('Content-Type', 'application/fhir+json');
  res.end(JSON.stringify(r.rows[0].content));
});
const server = app.listen(Number(process.env.PORT), '127.0.0.1', () => process.send?.('ready'));
process.on('SIGTERM', () => server.close(() => pool.end().then(() => process.exit(0))));
