// Race safety is the database's job (foundation issue): parallel conditional creates make one
// resource; parallel If-Match updates give one success and 412s, with no lost update or gap.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { concurrencyBackends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const N = 32;
// RACE_ROUNDS=20 runs each race 20 times (done before resolving the issue); the suite runs 3.
const ROUNDS = Number(process.env.RACE_ROUNDS ?? 3);

describe.each(concurrencyBackends())('races on %s PostgreSQL', (backend) => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer(backend);
  });
  afterAll(async () => {
    await t.close();
  });

  test(`${N} parallel conditional creates with the same criteria make exactly one resource (x${ROUNDS})`, async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const sys = `urn:race:${backend}:${Date.now()}:${round}`;
      const crit = `identifier=${encodeURIComponent(`${sys}|same`)}`;
      const body = { resourceType: 'Patient', identifier: [{ system: sys, value: 'same' }] };
      const results = await Promise.all(
        Array.from({ length: N }, () => authed(t).post('/Patient').set('Content-Type', FHIR).set('If-None-Exist', crit).send(body)),
      );
      const statuses = results.map((r) => r.status);
      expect(statuses.filter((s) => s === 201).length).toBe(1);
      expect(statuses.filter((s) => s === 200).length).toBe(N - 1);
      expect(new Set(results.map((r) => r.body.id)).size).toBe(1);
      const found = await authed(t).get(`/Patient?${crit}`).expect(200);
      expect(found.body.total).toBe(1);
    }
  });

  test(`${N} parallel PUTs with the same If-Match: one 200, ${N - 1} 412, no gap in versions (x${ROUNDS})`, async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const { body: created } = await authed(t).post('/Basic').set('Content-Type', FHIR).send({ resourceType: 'Basic', code: { text: 'r' } }).expect(201);
      const id = created.id as string;
      const results = await Promise.all(
        Array.from({ length: N }, (_, i) =>
          authed(t)
            .put(`/Basic/${id}`)
            .set('Content-Type', FHIR)
            .set('If-Match', 'W/"1"')
            .send({ resourceType: 'Basic', id, code: { text: `writer-${i}` } }),
        ),
      );
      const ok = results.filter((r) => r.status === 200);
      expect(ok.length).toBe(1);
      expect(results.filter((r) => r.status === 412).length).toBe(N - 1);
      const current = await authed(t).get(`/Basic/${id}`).expect(200);
      // the winner's write is the one stored: no lost update
      expect(current.body.code.text).toBe(ok[0].body.code.text);
      expect(current.body.meta.versionId).toBe('2');
      const hist = await authed(t).get(`/Basic/${id}/_history`).expect(200);
      expect(hist.body.entry.map((e: { resource: { meta: { versionId: string } } }) => e.resource.meta.versionId)).toEqual(['2', '1']);
    }
  });

  test(`${N} parallel unconditional PUTs to one id serialize into ${N} consecutive versions`, async () => {
    const id = `seq-${Date.now()}`;
    const results = await Promise.all(
      Array.from({ length: N }, (_, i) => authed(t).put(`/Basic/${id}`).set('Content-Type', FHIR).send({ resourceType: 'Basic', id, code: { text: `w${i}` } })),
    );
    expect(results.filter((r) => r.status === 201).length).toBe(1);
    expect(results.filter((r) => r.status === 200).length).toBe(N - 1);
    const versions = results.map((r) => Number(r.body.meta.versionId)).sort((a, b) => a - b);
    expect(versions).toEqual(Array.from({ length: N }, (_, i) => i + 1));
    const hist = await authed(t).get(`/Basic/${id}/_history?_count=100`).expect(200);
    expect(hist.body.total).toBe(N);
  });
});

describe.each(concurrencyBackends())('concurrent transactions on %s PostgreSQL', (backend) => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer(backend);
  });
  afterAll(async () => {
    await t.close();
  });

  test('transactions touching the same resources in opposite orders never leave partial writes', async () => {
    const a = `ta-${Date.now()}`;
    const b = `tb-${Date.now()}`;
    const put = (id: string, text: string) => ({ resource: { resourceType: 'Basic', id, code: { text } }, request: { method: 'PUT', url: `Basic/${id}` } });
    const results = await Promise.all(
      Array.from({ length: 16 }, (_, i) =>
        authed(t)
          .post('/')
          .set('Content-Type', FHIR)
          .send({ resourceType: 'Bundle', type: 'transaction', entry: i % 2 ? [put(a, `t${i}`), put(b, `t${i}`)] : [put(b, `t${i}`), put(a, `t${i}`)] }),
      ),
    );
    const ok = results.filter((r) => r.status === 200).length;
    for (const r of results) expect([200, 409]).toContain(r.status);
    expect(ok).toBeGreaterThan(0);
    const ra = await authed(t).get(`/Basic/${a}/_history?_count=100`).expect(200);
    const rb = await authed(t).get(`/Basic/${b}/_history?_count=100`).expect(200);
    // every successful transaction wrote both resources; no failed one wrote either
    expect(ra.body.total).toBe(ok);
    expect(rb.body.total).toBe(ok);
    const ca = await authed(t).get(`/Basic/${a}`).expect(200);
    const cb = await authed(t).get(`/Basic/${b}`).expect(200);
    // the last transaction to commit wrote both: the pair is consistent
    const lastA = ra.body.entry[0].resource.code.text;
    expect(ca.body.code.text).toBe(lastA);
    expect(typeof cb.body.code.text).toBe('string');
  });
});
