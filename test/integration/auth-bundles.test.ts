// Authorization of Bundle entries (https://hl7.org/fhir/R4/http.html#transaction) and a real client:
// a transaction with one forbidden entry writes nothing and names the entry; the same as a batch
// writes the others; conditional entries and references resolve only within what the token may
// search; fhir-kit-client works with a bearer token and sees a 401 through its own error path.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { Client } from 'fhir-kit-client';
import { randomUUID } from 'node:crypto';
import { backends, startTestServer, tokenFor, authed, type TestServer } from '../support/backends.js';

const FHIR = 'application/fhir+json';

describe.each(backends())('authorization of Bundles and a real client on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let P: string;
  let Q: string;
  beforeAll(async () => {
    t = await startTestServer(backend);
    const admin = authed(t);
    P = (await admin.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', active: true }).expect(201)).body.id;
    Q = (await admin.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', active: true }).expect(201)).body.id;
  });
  afterAll(async () => {
    await t.close();
  });

  const obs = (patient: string, tag: string) => ({ resourceType: 'Observation', status: 'final', code: { text: 'bundle' }, subject: { reference: `Patient/${patient}` }, identifier: [{ system: 'urn:bundle', value: tag }] });
  const count = async (tag: string) => (await authed(t).get(`/Observation?identifier=urn:bundle|${tag}&_summary=count`).expect(200)).body.total as number;
  const bundle = (type: 'transaction' | 'batch', entries: unknown[]) => ({ resourceType: 'Bundle', type, entry: entries });

  test('a transaction with one entry of a type the token lacks writes nothing and names the entry', async () => {
    const token = await tokenFor(t.url, { scope: 'system/Observation.c' });
    const tag = randomUUID();
    const res = await authed(t, token)
      .post('/')
      .set('Content-Type', FHIR)
      .send(bundle('transaction', [
        { request: { method: 'POST', url: 'Observation' }, resource: obs(P, tag) },
        { request: { method: 'POST', url: 'Condition' }, resource: { resourceType: 'Condition', subject: { reference: `Patient/${P}` } } },
      ]))
      .expect(403);
    expect(res.body.issue[0].diagnostics).toMatch(/^entry 1: .*"c" \(create\) on Condition/);
    expect(await count(tag)).toBe(0);
  });

  test('a transaction with one entry outside the patient compartment writes nothing (403 naming the entry)', async () => {
    const token = await tokenFor(t.url, { scope: 'patient/Observation.cruds', patient: P });
    const tag = randomUUID();
    const res = await authed(t, token)
      .post('/')
      .set('Content-Type', FHIR)
      .send(bundle('transaction', [
        { request: { method: 'POST', url: 'Observation' }, resource: obs(P, tag) },
        { request: { method: 'POST', url: 'Observation' }, resource: obs(Q, tag) },
      ]))
      .expect(403);
    expect(res.body.issue[0].diagnostics).toMatch(/^entry 1: /);
    expect(await count(tag)).toBe(0);
    // PUT with an id, into the other compartment: the keyed path refuses it too.
    const res2 = await authed(t, token)
      .post('/')
      .set('Content-Type', FHIR)
      .send(bundle('transaction', [
        { request: { method: 'POST', url: 'Observation' }, resource: obs(P, tag) },
        { request: { method: 'PUT', url: `Observation/x-${tag}` }, resource: { ...obs(Q, tag), id: `x-${tag}` } },
      ]))
      .expect(403);
    expect(res2.body.issue[0].diagnostics).toMatch(/^entry 1: /);
    expect(await count(tag)).toBe(0);
    // Within the compartment, the same Bundle shape succeeds.
    await authed(t, token)
      .post('/')
      .set('Content-Type', FHIR)
      .send(bundle('transaction', [
        { request: { method: 'POST', url: 'Observation' }, resource: obs(P, tag) },
        { request: { method: 'PUT', url: `Observation/x-${tag}` }, resource: { ...obs(P, tag), id: `x-${tag}` } },
      ]))
      .expect(200);
    expect(await count(tag)).toBe(2);
  });

  test('the same forbidden entry in a batch gets its own 403 and the others are written', async () => {
    const token = await tokenFor(t.url, { scope: 'patient/Observation.cruds', patient: P });
    const tag = randomUUID();
    const res = await authed(t, token)
      .post('/')
      .set('Content-Type', FHIR)
      .send(bundle('batch', [
        { request: { method: 'POST', url: 'Observation' }, resource: obs(P, tag) },
        { request: { method: 'POST', url: 'Observation' }, resource: obs(Q, tag) },
        { request: { method: 'POST', url: 'Condition' }, resource: { resourceType: 'Condition', subject: { reference: `Patient/${P}` } } },
        { request: { method: 'POST', url: 'Observation' }, resource: obs(P, tag) },
      ]))
      .expect(200);
    expect(res.body.entry.map((e: { response: { status: string } }) => e.response.status.slice(0, 3))).toEqual(['201', '403', '403', '201']);
    expect(await count(tag)).toBe(2);
  });

  test('conditional references and conditional creates resolve only within what the token may search', async () => {
    const tag = randomUUID();
    // An Observation of patient Q exists with this identifier; a token of patient P must not find it.
    await authed(t).post('/Observation').set('Content-Type', FHIR).send(obs(Q, tag)).expect(201);
    const token = await tokenFor(t.url, { scope: 'patient/Observation.cruds', patient: P });
    // Conditional create: the match outside the compartment is not seen; the create proceeds in P's compartment.
    const cc = await authed(t, token).post('/Observation').set('Content-Type', FHIR).set('If-None-Exist', `identifier=urn:bundle|${tag}`).send(obs(P, tag)).expect(201);
    expect(cc.body.subject.reference).toBe(`Patient/${P}`);
    // A conditional reference to that Observation from P's token matches nothing (404), not Q's resource.
    const ref = await authed(t, token)
      .post('/')
      .set('Content-Type', FHIR)
      .send(bundle('transaction', [{ request: { method: 'POST', url: 'Observation' }, resource: { ...obs(P, randomUUID()), hasMember: [{ reference: `Observation?identifier=urn:bundle|${tag}&subject=Patient/${Q}` }] } }]));
    expect(ref.status).toBe(404);
    // Without "s" on the referenced type, a conditional reference is a 403 before anything runs.
    const noSearch = await tokenFor(t.url, { scope: 'system/Observation.c' });
    const ref2 = await authed(t, noSearch)
      .post('/')
      .set('Content-Type', FHIR)
      .send(bundle('transaction', [{ request: { method: 'POST', url: 'Observation' }, resource: { ...obs(P, randomUUID()), subject: { reference: `Patient?identifier=urn:x|1` } } }]));
    expect(ref2.status).toBe(403);
    expect(ref2.body.issue[0].diagnostics).toMatch(/^entry 0: .*"s" \(search\) on Patient/);
  });

  test('a resource outside reach shows neither its existence nor its version: patch, delete, If-Match, deleted ones', async () => {
    const tokenP = await tokenFor(t.url, { scope: 'patient/Observation.cruds', patient: P });
    const asP = authed(t, tokenP);
    const hidden = (await authed(t).post('/Observation').set('Content-Type', FHIR).send(obs(Q, randomUUID())).expect(201)).body.id as string;
    const never = `never-${randomUUID()}`;
    // DELETE with a wrong If-Match: the answer of an id that does not exist (412 without a version), not "current version W/1".
    const d1 = await asP.delete(`/Observation/${hidden}`).set('If-Match', 'W/"7"');
    const d2 = await asP.delete(`/Observation/${never}`).set('If-Match', 'W/"7"');
    expect([d1.status, d1.body.issue[0].diagnostics.replace(hidden, 'X')]).toEqual([d2.status, d2.body.issue[0].diagnostics.replace(never, 'X')]);
    expect(JSON.stringify(d1.body)).not.toContain('W/\\"1\\"');
    // DELETE without If-Match: 204 "nothing to delete", no ETag, and the resource stays.
    const d3 = await asP.delete(`/Observation/${hidden}`).expect(204);
    expect(d3.headers.etag).toBeUndefined();
    await authed(t).get(`/Observation/${hidden}`).expect(200);
    // PATCH: 404 as for an unknown id.
    await asP.patch(`/Observation/${hidden}`).set('Content-Type', 'application/json-patch+json').send([{ op: 'replace', path: '/status', value: 'amended' }]).expect(404);
    // Once deleted (by an unrestricted token), it stays unknown to P's token: no 410, no ETag.
    await authed(t).delete(`/Observation/${hidden}`).expect(204);
    await asP.get(`/Observation/${hidden}`).expect(404);
    await asP.patch(`/Observation/${hidden}`).set('Content-Type', 'application/json-patch+json').send([{ op: 'replace', path: '/status', value: 'amended' }]).expect(404);
    const d4 = await asP.delete(`/Observation/${hidden}`).expect(204);
    expect(d4.headers.etag).toBeUndefined();
    // The same answers in a transaction's keyed DELETE.
    const tx = await asP.post('/').set('Content-Type', FHIR).send(bundle('transaction', [{ request: { method: 'DELETE', url: `Observation/${hidden}` } }])).expect(200);
    expect(tx.body.entry[0].response.etag).toBeUndefined();
    const tx2 = await asP.post('/').set('Content-Type', FHIR).send(bundle('transaction', [{ request: { method: 'DELETE', url: `Observation/${hidden}`, ifMatch: 'W/"9"' } }]));
    expect(tx2.status).toBe(412);
    expect(JSON.stringify(tx2.body)).not.toMatch(/W\/\\"2\\"/);
  });

  test('fhir-kit-client: create, read, search and a transaction with a bearer token; 401 through its error path without', async () => {
    const client = new Client({ baseUrl: t.url, bearerToken: await tokenFor(t.url, { scope: 'system/*.cruds' }) });
    const created = (await client.create({ resourceType: 'Patient', body: { resourceType: 'Patient', active: true, gender: 'other' } })) as unknown as { id: string };
    const read = (await client.read({ resourceType: 'Patient', id: created.id })) as unknown as { id: string; gender: string };
    expect(read.gender).toBe('other');
    const found = (await client.search({ resourceType: 'Patient', searchParams: { _id: created.id } })) as unknown as { total: number };
    expect(found.total).toBe(1);
    const tag = randomUUID();
    const tx = (await client.transaction({ body: bundle('transaction', [{ request: { method: 'POST', url: 'Observation' }, resource: obs(created.id, tag) }]) })) as unknown as { type: string };
    expect(tx.type).toBe('transaction-response');
    expect(await count(tag)).toBe(1);

    const anonymous = new Client({ baseUrl: t.url });
    const err = await anonymous.read({ resourceType: 'Patient', id: created.id }).catch((e: unknown) => e as { response?: { status?: number } });
    expect(err).toBeInstanceOf(Error);
    expect((err as { response: { status: number } }).response.status).toBe(401);
    const limited = new Client({ baseUrl: t.url, bearerToken: await tokenFor(t.url, { scope: 'system/Patient.r' }) });
    const err2 = await limited.search({ resourceType: 'Patient', searchParams: {} }).catch((e: unknown) => e as { response?: { status?: number } });
    expect((err2 as { response: { status: number } }).response.status).toBe(403);
  });
});
