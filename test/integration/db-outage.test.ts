// Issue 14 item 0: a database outage or a lost connection answers 503 `transient` with Retry-After
// (not a 500 `exception`), /readyz says not ready, and the server recovers when the database is back.
// Real PostgreSQL reached through a TCP proxy the test cuts and restores.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { authed } from '../support/backends.js';
import { admin, eventually, PgProxy, startPgServer, type PgTestServer } from '../support/pg-server.js';

const FHIR = 'application/fhir+json';
const FORM = 'application/x-www-form-urlencoded';
const pgOnly = process.env.TEST_DATABASE_URL ? describe : describe.skip;

pgOnly('database outage on pg PostgreSQL', () => {
  let proxy: PgProxy;
  let t: PgTestServer;
  beforeAll(async () => {
    proxy = await PgProxy.start(new URL(process.env.TEST_DATABASE_URL!));
    t = await startPgServer({ SEARCH_MAX_REPEATS: '1000', SEARCH_MAX_PARAMETERS: '1000', SEARCH_MAX_QUERY_SIZE: '64kb' }, proxy);
  });
  afterAll(async () => {
    await proxy.up().catch(() => undefined);
    await t?.close();
    await proxy.down();
  });

  function expectUnavailable(res: request.Response): void {
    expect(res.status).toBe(503);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(res.body.issue[0].code).toBe('transient');
    expect(res.headers['retry-after']).toMatch(/^\d+$/);
    // Nothing of the driver's message (host, port, SQL) reaches the client.
    expect(JSON.stringify(res.body)).not.toMatch(/ECONNREFUSED|127\.0\.0\.1|select /i);
  }

  test('database down: reads, searches and writes are 503 + Retry-After, /readyz is 503; back up: served again', async () => {
    const api = authed(t);
    const { body } = await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', gender: 'female' }).expect(201);
    await request(t.url).get('/readyz').expect(200);

    await proxy.down();
    expectUnavailable(await api.get(`/Patient/${body.id}`));
    expectUnavailable(await api.get('/Patient?gender=female'));
    expectUnavailable(await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient' }));
    const ready = await request(t.url).get('/readyz');
    expect(ready.status).toBe(503);

    await proxy.up();
    expect(await eventually(async () => (await request(t.url).get('/readyz')).status === 200, 10000, 200)).toBe(true);
    await api.get(`/Patient/${body.id}`).expect(200);
    await api.get('/Patient?gender=female').expect(200);
  }, 60000);

  test('a connection terminated by the server mid-query (57P01) is a 503 + Retry-After, and the next request is served', async () => {
    const api = authed(t);
    const slow = new URLSearchParams(Array.from({ length: 250 }, (_x, i) => ['name', `x${i}`] as [string, string])).toString();
    const pending = api.post('/Patient/_search').set('Content-Type', FORM).send(slow).then((r) => r);
    // The search's backend, not the audit sequencer's (it links the ledger every 100 ms).
    const pid = async () => (await admin<{ pid: number }>("select pid from pg_stat_activity where datname = $1 and state = 'active' and pid <> pg_backend_pid() and query not like '%audit_%'", [t.database]))[0]?.pid;
    expect(await eventually(async () => (await pid()) !== undefined, 10000)).toBe(true);
    await admin('select pg_terminate_backend($1)', [await pid()]);
    expectUnavailable(await pending);
    await api.get('/Patient?gender=female').expect(200);
  }, 60000);
});
