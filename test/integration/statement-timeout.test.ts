// Issue 14 item 2: every request's queries are bounded by DATABASE_STATEMENT_TIMEOUT_MS, and a request
// past REQUEST_TIMEOUT_MS or whose client went away has its running query cancelled in PostgreSQL:
// no query of a request outlives it. Real PostgreSQL only (PGlite cannot interrupt a statement).
//
// The slow search is the issue's own: `name` ANDed many times through POST _search (its budget raised
// on these servers). Measured on an empty database on this 2-core machine: 100 repetitions 1.0 s,
// 200 repetitions 13.7 s, 300 past 30 s; the time is PostgreSQL's, planning the many-way join.
import { request as httpRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { authed } from '../support/backends.js';
import { activeQueries, eventually, startPgServer, type PgTestServer } from '../support/pg-server.js';

const FORM = 'application/x-www-form-urlencoded';
const pgOnly = process.env.TEST_DATABASE_URL ? describe : describe.skip;
const RAISED = { SEARCH_MAX_REPEATS: '1000', SEARCH_MAX_PARAMETERS: '1000', SEARCH_MAX_QUERY_SIZE: '64kb' };

function repeated(n: number): string {
  return new URLSearchParams(Array.from({ length: n }, (_x, i) => ['name', `x${i}`] as [string, string])).toString();
}

pgOnly('statement timeout and request deadline on pg PostgreSQL', () => {
  let timed: PgTestServer;
  let deadline: PgTestServer;
  beforeAll(async () => {
    timed = await startPgServer({ ...RAISED, DATABASE_STATEMENT_TIMEOUT_MS: '1000' });
    deadline = await startPgServer({ ...RAISED, REQUEST_TIMEOUT_MS: '1000' });
  });
  afterAll(async () => {
    await timed?.close();
    await deadline?.close();
  });

  test('a search past the statement timeout answers a 503 OperationOutcome within timeout + 1 s, and no query is left running', async () => {
    // Ordinary requests pass under the same 1 s bound.
    await authed(timed).post('/Patient/_search').set('Content-Type', FORM).send(repeated(20)).expect(200);
    const t0 = Date.now();
    const res = await authed(timed).post('/Patient/_search').set('Content-Type', FORM).send(repeated(250));
    const ms = Date.now() - t0;
    expect(res.status).toBe(503);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(res.body.issue[0].code).toBe('transient');
    expect(res.body.issue[0].diagnostics).toContain('DATABASE_STATEMENT_TIMEOUT_MS');
    expect(JSON.stringify(res.body)).not.toMatch(/select|idx_|x0/i);
    if (process.env.VESTA_TEST_REPORT) console.log(`statement timeout: 503 after ${ms} ms`);
    expect(ms).toBeLessThan(1000 + 1000);
    // The search's statement ended with its timeout. What may be seen at the very moment of asking is
    // the audit sequencer's short transaction (every 100 ms; its advisory-lock statement does not name
    // an audit table, CI caught one once): a query left running would still be there a second later
    // (this one runs for over 13 s uncancelled).
    expect(await eventually(async () => (await activeQueries(timed.database)) === 0, 1000)).toBe(true);
  }, 60000);

  test('a request past REQUEST_TIMEOUT_MS answers a 503 within the deadline + 1 s and its query is cancelled in PostgreSQL', async () => {
    const t0 = Date.now();
    const res = await authed(deadline).post('/Patient/_search').set('Content-Type', FORM).send(repeated(250));
    const ms = Date.now() - t0;
    expect(res.status).toBe(503);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(res.body.issue[0].diagnostics).toContain('REQUEST_TIMEOUT_MS');
    expect(JSON.stringify(res.body)).not.toMatch(/select|idx_|x0/i);
    if (process.env.VESTA_TEST_REPORT) console.log(`deadline: 503 after ${ms} ms`);
    expect(ms).toBeLessThan(1000 + 1000);
    // Without the cancel, this statement runs for over 13 s (the server's statement timeout is 30 s).
    expect(await eventually(async () => (await activeQueries(deadline.database)) === 0, 1000)).toBe(true);
    // The pool connection that ran it serves the next request.
    await authed(deadline).get('/Patient?gender=male').expect(200);
  }, 60000);

  test('a client that disconnects mid-search leaves no query running', async () => {
    // The default statement timeout (30 s) and a long request deadline: only the disconnect can stop it.
    const t = await startPgServer(RAISED);
    try {
      const u = new URL(`${t.url}/Patient/_search`);
      const body = repeated(250);
      const req = httpRequest({ hostname: u.hostname, port: u.port, path: u.pathname, method: 'POST', headers: { Authorization: `Bearer ${t.token}`, 'Content-Type': FORM, 'Content-Length': Buffer.byteLength(body) } });
      req.on('error', () => undefined);
      req.end(body);
      // The search is running in PostgreSQL...
      expect(await eventually(async () => (await activeQueries(t.database)) > 0, 10000)).toBe(true);
      // ... the client leaves ...
      req.destroy();
      const left = Date.now();
      // ... and PostgreSQL is no longer running it shortly after (it would for over 13 s otherwise).
      expect(await eventually(async () => (await activeQueries(t.database)) === 0, 3000)).toBe(true);
      if (process.env.VESTA_TEST_REPORT) console.log(`disconnect: no query running ${Date.now() - left} ms after the client left`);
      await authed(t).get('/Patient?gender=male').expect(200);
    } finally {
      await t.close();
    }
  }, 60000);
});
