// CPU work before BEGIN (design.md "The interaction chokepoint"; issue 18): validation, index
// extraction and sealing of a write run before its database transaction opens, so that a row lock or
// a retried attempt never waits on them. Observed from the order of events: the validator's and the
// sealer's calls against the statements knex sends (its BEGIN included).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';

describe.each(backends())('work before the transaction, %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  const events: string[] = [];
  beforeAll(async () => {
    t = await startTestServer(backend);
    api = authed(t);
    // The ledger's sequencer links records in transactions of its own on a timer: stopped, so that
    // every BEGIN seen here is a request's (its records stay pending; nothing here reads the chain).
    await t.running.sequencer?.stop();
    const v = t.svc.validator;
    const validate = v.validate.bind(v);
    v.validate = (r) => {
      events.push('validate');
      return validate(r);
    };
    const store = t.svc.store;
    const sealRow = store.sealRow.bind(store);
    store.sealRow = (x) => {
      events.push('seal');
      return sealRow(x);
    };
    t.svc.db.knex.on('query', (q: { sql?: string }) => {
      if (/^\s*begin/i.test(q.sql ?? '')) events.push('BEGIN');
    });
  });
  afterAll(async () => {
    await t.close();
  });

  /** The events of one request, sent alone. */
  async function during(send: () => Promise<unknown>): Promise<string[]> {
    events.length = 0;
    await send();
    return [...events];
  }
  const patient = (family: string) => ({ resourceType: 'Patient', name: [{ family }], gender: 'female' });

  test('the server seals (a PHI key ring is configured), or these checks would see no seal', () => {
    expect(t.svc.store.activeKid).not.toBeNull();
  });

  test('create: validated and sealed, then BEGIN', async () => {
    const e = await during(() => api.post('/Patient').set('Content-Type', FHIR).send(patient('Before')).expect(201));
    expect(e).toEqual(['validate', 'seal', 'BEGIN']);
  });

  test('an invalid create opens no transaction', async () => {
    const e = await during(() => api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', gender: 'robot' }).expect(422));
    expect(e).toEqual(['validate']);
  });

  test('update with If-Match: validated and sealed for the next version before BEGIN', async () => {
    const c = await api.post('/Patient').set('Content-Type', FHIR).send(patient('Match')).expect(201);
    const id = c.body.id as string;
    const e = await during(() => api.put(`/Patient/${id}`).set('Content-Type', FHIR).set('If-Match', 'W/"1"').send({ ...patient('Match2'), id }).expect(200));
    expect(e).toEqual(['validate', 'seal', 'BEGIN']);
    const r = await api.get(`/Patient/${id}`).expect(200);
    expect(r.body.meta.versionId).toBe('2');
    expect(r.body.name[0].family).toBe('Match2');
  });

  test('update without If-Match: validated before BEGIN; sealed once the lock gives the version number', async () => {
    const c = await api.post('/Patient').set('Content-Type', FHIR).send(patient('NoMatch')).expect(201);
    const id = c.body.id as string;
    await api.put(`/Patient/${id}`).set('Content-Type', FHIR).send({ ...patient('NoMatch2'), id }).expect(200);
    const e = await during(() => api.put(`/Patient/${id}`).set('Content-Type', FHIR).send({ ...patient('NoMatch3'), id }).expect(200));
    expect(e).toEqual(['validate', 'BEGIN', 'seal']);
    const r = await api.get(`/Patient/${id}`).expect(200);
    expect(r.body.meta.versionId).toBe('3');
    expect(r.body.name[0].family).toBe('NoMatch3');
  });

  test('a stale If-Match still answers 412 (checked under the lock), with nothing written', async () => {
    const c = await api.post('/Patient').set('Content-Type', FHIR).send(patient('Stale')).expect(201);
    const id = c.body.id as string;
    await api.put(`/Patient/${id}`).set('Content-Type', FHIR).send({ ...patient('Stale2'), id }).expect(200);
    await api.put(`/Patient/${id}`).set('Content-Type', FHIR).set('If-Match', 'W/"1"').send({ ...patient('Stale3'), id }).expect(412);
    const r = await api.get(`/Patient/${id}`).expect(200);
    expect(r.body.meta.versionId).toBe('2');
  });

  test('transaction of plain creates: every entry validated and sealed before the one BEGIN', async () => {
    const entries = Array.from({ length: 5 }, (_, i) => ({ fullUrl: `urn:uuid:00000000-0000-4000-8000-00000000000${i}`, resource: patient(`Tx${i}`), request: { method: 'POST', url: 'Patient' } }));
    const obs = { fullUrl: 'urn:uuid:00000000-0000-4000-8000-0000000000aa', resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: entries[0].fullUrl } }, request: { method: 'POST', url: 'Observation' } };
    const e = await during(() => api.post('/').set('Content-Type', FHIR).send({ resourceType: 'Bundle', type: 'transaction', entry: [...entries, obs] }).expect(200));
    expect(e.filter((x) => x === 'validate')).toHaveLength(6);
    expect(e.filter((x) => x === 'seal')).toHaveLength(6);
    expect(e.filter((x) => x === 'BEGIN')).toHaveLength(1);
    expect(e[e.length - 1]).toBe('BEGIN');
  });

  test('transaction with a conditional reference: resolved, validated and written in the transaction', async () => {
    const marker = `urn:write-prepare:${Date.now()}`;
    await api.post('/Patient').set('Content-Type', FHIR).send({ ...patient('Cond'), identifier: [{ system: marker, value: 'p' }] }).expect(201);
    const obs = { resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient?identifier=${encodeURIComponent(`${marker}|p`)}` } }, request: { method: 'POST', url: 'Observation' } };
    const e = await during(() => api.post('/').set('Content-Type', FHIR).send({ resourceType: 'Bundle', type: 'transaction', entry: [obs] }).expect(200));
    expect(e[0]).toBe('BEGIN');
    expect(e).toContain('validate');
  });
});

describe.each(backends())('AUDIT=off, %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  beforeAll(async () => {
    t = await startTestServer(backend, { AUDIT: 'off' });
    api = authed(t);
  });
  afterAll(async () => {
    await t.close();
  });

  test('writes take effect when no record is kept', async () => {
    const c = await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', name: [{ family: 'Unaudited' }] }).expect(201);
    const id = c.body.id as string;
    await api.put(`/Patient/${id}`).set('Content-Type', FHIR).set('If-Match', 'W/"1"').send({ resourceType: 'Patient', id, name: [{ family: 'Unaudited2' }] }).expect(200);
    const r = await api.get(`/Patient/${id}`).expect(200);
    expect(r.body.meta.versionId).toBe('2');
    expect(r.body.name[0].family).toBe('Unaudited2');
    await api.delete(`/Patient/${id}`).expect(204);
    await api.get(`/Patient/${id}`).expect(410);
    const ledger = (await t.svc.db.knex.raw('select count(*)::int as n from audit_ledger')) as { rows: { n: number }[] };
    expect(ledger.rows[0].n).toBe(0);
  });
});
