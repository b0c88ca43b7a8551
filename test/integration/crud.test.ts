// The acceptance flow of the foundation issue (create, read, update with If-Match, patch, delete,
// 410, history) and the http.html rules around it, on every available backend.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';

function patient(extra: Record<string, unknown> = {}) {
  return { resourceType: 'Patient', active: true, name: [{ family: 'Testperson', given: ['Ada'] }], ...extra };
}

describe.each(backends())('CRUD and history on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  beforeAll(async () => {
    t = await startTestServer(backend);
    api = authed(t);
  });
  afterAll(async () => {
    await t.close();
  });

  test('GET /metadata is a CapabilityStatement covering every R4 resource type', async () => {
    const res = await api.get('/metadata').expect(200);
    expect(res.headers['content-type']).toMatch(/^application\/fhir\+json/);
    expect(res.body.resourceType).toBe('CapabilityStatement');
    expect(res.body.fhirVersion).toBe('4.0.1');
    const types = res.body.rest[0].resource.map((r: { type: string }) => r.type);
    expect(types.length).toBe(146);
    expect(types).toEqual(expect.arrayContaining(['Patient', 'Observation', 'Immunization', 'AuditEvent', 'Bundle']));
    const p = res.body.rest[0].resource.find((r: { type: string }) => r.type === 'Patient');
    expect(p.interaction.map((i: { code: string }) => i.code)).toEqual(
      expect.arrayContaining(['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'history-type', 'create', 'search-type']),
    );
    expect(p.searchParam.map((s: { name: string }) => s.name)).toEqual(expect.arrayContaining(['_id', '_lastUpdated', 'identifier', 'gender', 'general-practitioner']));
    expect(res.body.format).not.toContain('xml');
    expect(res.body.rest[0].interaction.map((i: { code: string }) => i.code).sort()).toEqual(['batch', 'history-system', 'search-system', 'transaction']);
    expect(p.operation).toEqual([{ name: 'validate', definition: 'http://hl7.org/fhir/OperationDefinition/Resource-validate' }]);
  });

  test('the full lifecycle: create, read, update with If-Match, patch, delete, 410, history', async () => {
    const created = await api.post('/Patient').set('Content-Type', FHIR).send(patient({ id: 'client-id-ignored' })).expect(201);
    const id = created.body.id as string;
    expect(id).not.toBe('client-id-ignored');
    expect(created.headers.etag).toBe('W/"1"');
    expect(created.headers.location).toBe(`${t.url}/Patient/${id}/_history/1`);
    expect(created.headers['last-modified']).toBeDefined();
    expect(created.body.meta.versionId).toBe('1');
    expect(created.headers['cache-control']).toBe('no-store');
    expect(created.headers['x-content-type-options']).toBe('nosniff');

    const read = await api.get(`/Patient/${id}`).expect(200);
    expect(read.body).toEqual(created.body);

    const upd = await api
      .put(`/Patient/${id}`)
      .set('Content-Type', FHIR)
      .set('If-Match', 'W/"1"')
      .send({ ...patient({ active: false }), id })
      .expect(200);
    expect(upd.headers.etag).toBe('W/"2"');
    expect(upd.body.active).toBe(false);

    const stale = await api.put(`/Patient/${id}`).set('Content-Type', FHIR).set('If-Match', 'W/"1"').send({ ...patient(), id }).expect(412);
    expect(stale.body.resourceType).toBe('OperationOutcome');

    const patched = await api
      .patch(`/Patient/${id}`)
      .set('Content-Type', 'application/json-patch+json')
      .set('If-Match', 'W/"2"')
      .send([{ op: 'replace', path: '/name/0/given/0', value: 'Grace' }, { op: 'add', path: '/gender', value: 'female' }])
      .expect(200);
    expect(patched.body.name[0].given[0]).toBe('Grace');
    expect(patched.body.gender).toBe('female');
    expect(patched.body.meta.versionId).toBe('3');

    const del = await api.delete(`/Patient/${id}`).expect(204);
    expect(del.headers.etag).toBe('W/"4"');
    const gone = await api.get(`/Patient/${id}`).expect(410);
    expect(gone.body.issue[0].code).toBe('deleted');
    await api.delete(`/Patient/${id}`).expect(204); // idempotent: no new version
    await api.get(`/Patient/${id}/_history/4`).expect(410);

    const hist = await api.get(`/Patient/${id}/_history`).expect(200);
    expect(hist.body.type).toBe('history');
    expect(hist.body.total).toBe(4);
    expect(hist.body.entry.map((e: { response: { etag: string } }) => e.response.etag)).toEqual(['W/"4"', 'W/"3"', 'W/"2"', 'W/"1"']);
    expect(hist.body.entry.map((e: { request: { method: string } }) => e.request.method)).toEqual(['DELETE', 'PATCH', 'PUT', 'POST']);
    expect(hist.body.entry[0].resource).toBeUndefined();
    expect(hist.body.entry[3].resource.active).toBe(true);

    const v2 = await api.get(`/Patient/${id}/_history/2`).expect(200);
    expect(v2.body.active).toBe(false);
    expect(v2.headers.etag).toBe('W/"2"');
    await api.get(`/Patient/${id}/_history/9`).expect(404);
  });

  test('update-as-create with a client id answers 201, then 200', async () => {
    const id = `uac-${Date.now()}`;
    const first = await api.put(`/Patient/${id}`).set('Content-Type', FHIR).send({ ...patient(), id }).expect(201);
    expect(first.headers.location).toBe(`${t.url}/Patient/${id}/_history/1`);
    await api.put(`/Patient/${id}`).set('Content-Type', FHIR).send({ ...patient(), id }).expect(200);
    await api.put(`/Patient/new-${id}`).set('Content-Type', FHIR).set('If-Match', 'W/"1"').send({ ...patient(), id: `new-${id}` }).expect(412);
    await api.get(`/Patient/new-${id}`).expect(404);
  });

  test('a deleted resource can be re-created by PUT, continuing the version sequence', async () => {
    const { body } = await api.post('/Patient').set('Content-Type', FHIR).send(patient()).expect(201);
    await api.delete(`/Patient/${body.id}`).expect(204);
    const again = await api.put(`/Patient/${body.id}`).set('Content-Type', FHIR).send({ ...patient(), id: body.id }).expect(201);
    expect(again.body.meta.versionId).toBe('3');
  });

  test('Prefer: return=minimal, representation and OperationOutcome', async () => {
    const min = await api.post('/Patient').set('Content-Type', FHIR).set('Prefer', 'return=minimal').send(patient()).expect(201);
    expect(min.text).toBe('');
    expect(min.headers.location).toMatch(/\/Patient\/[^/]+\/_history\/1$/);
    const oo = await api.post('/Patient').set('Content-Type', FHIR).set('Prefer', 'return=OperationOutcome').send(patient()).expect(201);
    expect(oo.body.resourceType).toBe('OperationOutcome');
    const rep = await api.post('/Patient').set('Content-Type', FHIR).set('Prefer', 'return=representation').send(patient()).expect(201);
    expect(rep.body.resourceType).toBe('Patient');
  });

  test('conditional read: If-None-Match and If-Modified-Since give 304', async () => {
    const { body } = await api.post('/Patient').set('Content-Type', FHIR).send(patient()).expect(201);
    await api.get(`/Patient/${body.id}`).set('If-None-Match', 'W/"1"').expect(304);
    await api.get(`/Patient/${body.id}`).set('If-None-Match', 'W/"7"').expect(200);
    const future = new Date(Date.now() + 60000).toUTCString();
    const past = new Date(Date.now() - 3600000).toUTCString();
    await api.get(`/Patient/${body.id}`).set('If-Modified-Since', future).expect(304);
    await api.get(`/Patient/${body.id}`).set('If-Modified-Since', past).expect(200);
  });

  test('formats: application/json, _format, _pretty, and XML refused', async () => {
    const { body } = await api.post('/Patient').set('Content-Type', 'application/json').send(patient()).expect(201);
    const j = await api.get(`/Patient/${body.id}`).set('Accept', 'application/json').expect(200);
    expect(j.headers['content-type']).toMatch(/^application\/json/);
    const pretty = await api.get(`/Patient/${body.id}?_pretty=true`).expect(200);
    expect(pretty.text).toContain('\n  "resourceType"');
    const f = await api.get(`/Patient/${body.id}?_format=json`).set('Accept', 'application/fhir+xml').expect(200);
    expect(f.headers['content-type']).toMatch(/^application\/fhir\+json/);
    const xmlBody = await api.post('/Patient').set('Content-Type', 'application/fhir+xml').send('<Patient xmlns="http://hl7.org/fhir"/>').expect(415);
    expect(xmlBody.body.issue[0].diagnostics).toMatch(/XML is not supported/);
    await api.get(`/Patient/${body.id}?_format=xml`).expect(406);
    await api.get(`/Patient/${body.id}`).set('Accept', 'application/fhir+xml').expect(406);
    await api.post('/Patient').set('Content-Type', 'text/plain').send('hello').expect(415);
  });

  test('errors are OperationOutcomes with the right status, and nothing is half-written', async () => {
    const before = await api.get('/_history?_count=1').expect(200);
    const bad = await api.post('/Patient').set('Content-Type', FHIR).send('{"resourceType": "Patient", ').expect(400);
    expect(bad.body.resourceType).toBe('OperationOutcome');
    expect(bad.text).not.toMatch(/at |stack|select|insert/i);
    await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Observation', status: 'final' }).expect(400);
    await api.post('/Patient').set('Content-Type', FHIR).send([patient()]).expect(400);
    await api.post('/Patient').set('Content-Type', FHIR).send({ name: [] }).expect(400);
    await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', id: 'bad id!' }).expect(400);
    await api.post('/Patient').set('Content-Type', FHIR).send('{"resourceType":"Patient","__proto__":{"admin":true}}').expect(400);
    await api.post('/Patient').set('Content-Type', FHIR).send('{"resourceType":"Patient","extension":[{"constructor":{"prototype":1}}]}').expect(400);
    const deep = '{"resourceType":"Patient","extension":' + '['.repeat(10000) + ']'.repeat(10000) + '}';
    const deepRes = await api.post('/Patient').set('Content-Type', FHIR).send(deep).expect(400);
    expect(deepRes.body.issue[0].diagnostics).toMatch(/deeper/);
    await api.put('/Patient/abc').set('Content-Type', FHIR).send({ resourceType: 'Patient', id: 'xyz' }).expect(400);
    await api.put('/Patient/abc').set('Content-Type', FHIR).send({ resourceType: 'Patient' }).expect(400);
    await api.put('/Patient/abc').set('Content-Type', FHIR).send({ resourceType: 'Observation', id: 'abc' }).expect(400);
    await api.get('/Foo/1').expect(404);
    await api.get('/Patient/does-not-exist').expect(404);
    const m = await api.post('/Patient/123').set('Content-Type', FHIR).send(patient()).expect(405);
    expect(m.headers.allow).toContain('PUT');
    await api.delete('/metadata').expect(405);
    await api.get('/Patient/1/$everything').expect(404);
    await api.put('/Patient/abc').set('Content-Type', FHIR).set('If-Match', 'garbage').send({ resourceType: 'Patient', id: 'abc' }).expect(400);
    const after = await api.get('/_history?_count=1').expect(200);
    expect(after.body.entry[0]?.fullUrl).toEqual(before.body.entry[0]?.fullUrl);
    await api.get('/Patient/abc').expect(404);
  });

  test('a body over MAX_BODY_SIZE is refused with 413', async () => {
    const small = await startTestServer(backend, { MAX_BODY_SIZE: '2kb' });
    try {
      const big = patient({ name: [{ family: 'x'.repeat(5000) }] });
      const res = await authed(small).post('/Patient').set('Content-Type', FHIR).send(big).expect(413);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(res.body.issue[0].code).toBe('too-costly');
    } finally {
      await small.close();
    }
  });

  test('JSON Patch errors: malformed 400, failed test 422, forbidden paths 400, id change 422', async () => {
    const { body } = await api.post('/Patient').set('Content-Type', FHIR).send(patient()).expect(201);
    const p = (ops: unknown) => api.patch(`/Patient/${body.id}`).set('Content-Type', 'application/json-patch+json').send(JSON.stringify(ops));
    await p({ op: 'add' }).expect(400);
    await p([{ op: 'frobnicate', path: '/active' }]).expect(400);
    await p([{ op: 'test', path: '/active', value: false }]).expect(422);
    await p([{ op: 'remove', path: '/nothing/here' }]).expect(422);
    await p([{ op: 'add', path: '/__proto__/polluted', value: 1 }]).expect(400);
    await p([{ op: 'replace', path: '/id', value: 'other' }]).expect(422);
    await p([{ op: 'replace', path: '/resourceType', value: 'Observation' }]).expect(400);
    await api.patch(`/Patient/${body.id}`).set('Content-Type', FHIR).send({ resourceType: 'Parameters' }).expect(415);
    const still = await api.get(`/Patient/${body.id}`).expect(200);
    expect(still.body.meta.versionId).toBe('1');
    await api.patch('/Patient/missing-one').set('Content-Type', 'application/json-patch+json').send(JSON.stringify([{ op: 'add', path: '/active', value: true }])).expect(404);
  });

  test('history at type and system level with _since, _at, _count and next links', async () => {
    const type = 'Basic';
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await api.post(`/${type}`).set('Content-Type', FHIR).send({ resourceType: type, code: { text: `n${i}` } }).expect(201);
      ids.push(r.body.id);
    }
    const mid = (await api.get(`/${type}/${ids[2]}`)).body.meta.lastUpdated as string;
    const all: string[] = [];
    let url: string | undefined = `/${type}/_history?_count=2`;
    let pages = 0;
    while (url) {
      const res: request.Response = await api.get(url).expect(200);
      pages++;
      for (const e of res.body.entry) all.push(e.resource.id);
      const next: { url: string } | undefined = res.body.link.find((l: { relation: string }) => l.relation === 'next');
      url = next ? next.url.slice(t.url.length) : undefined;
      // a write between pages does not shift later pages (keyset paging)
      if (pages === 1) await api.post('/Basic').set('Content-Type', FHIR).send({ resourceType: 'Basic', code: { text: 'late' } }).expect(201);
    }
    expect(pages).toBeGreaterThanOrEqual(3);
    expect(all.slice(0, 5)).toEqual([...ids].reverse());
    expect(new Set(all).size).toBe(all.length);

    const since = await api.get(`/${type}/_history?_since=${encodeURIComponent(mid)}`).expect(200);
    const sinceIds = since.body.entry.map((e: { resource: { id: string } }) => e.resource.id);
    expect(sinceIds).toEqual(expect.arrayContaining(ids.slice(2)));
    expect(sinceIds).not.toContain(ids[1]);

    const sys = await api.get('/_history?_count=3').expect(200);
    expect(sys.body.entry.length).toBe(3);

    // _at: the version current at a point in time
    const { body: p } = await api.post('/Patient').set('Content-Type', FHIR).send(patient()).expect(201);
    await new Promise((r) => setTimeout(r, 15));
    const between = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 15));
    await api.put(`/Patient/${p.id}`).set('Content-Type', FHIR).send({ ...patient({ active: false }), id: p.id }).expect(200);
    const at = await api.get(`/Patient/${p.id}/_history?_at=${encodeURIComponent(between)}`).expect(200);
    expect(at.body.entry.map((e: { resource: { meta: { versionId: string } } }) => e.resource.meta.versionId)).toEqual(['1']);

    await api.get('/Basic/_history?_count=abc').expect(400);
    await api.get('/Basic/_history?_since=yesterday').expect(400);
    await api.get('/Basic/_history?name=x').expect(400);
    const tampered = (await api.get('/Basic/_history?_count=1')).body.link[1].url.slice(t.url.length).replace(/_page=./, '_page=Z');
    await api.get(tampered).expect(400);
    await api.get('/Patient/never-was/_history').expect(404);
  });

  test('search by _id and identifier, with paging and reported unknown parameters', async () => {
    const sys = `urn:test:${Date.now()}`;
    const made: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await api.post('/Patient').set('Content-Type', FHIR).send(patient({ identifier: [{ system: sys, value: `v${i}` }, { value: 'shared' }] })).expect(201);
      made.push(r.body.id);
    }
    const one = await api.get(`/Patient?identifier=${encodeURIComponent(`${sys}|v1`)}`).expect(200);
    expect(one.body.type).toBe('searchset');
    expect(one.body.total).toBe(1);
    expect(one.body.entry[0].resource.id).toBe(made[1]);
    const ors = await api.get(`/Patient?identifier=${encodeURIComponent(`${sys}|v0,${sys}|v2`)}`).expect(200);
    expect(ors.body.entry.map((e: { resource: { id: string } }) => e.resource.id).sort()).toEqual([made[0], made[2]].sort());
    const bySystem = await api.get(`/Patient?identifier=${encodeURIComponent(`${sys}|`)}&_count=2`).expect(200);
    expect(bySystem.body.total).toBe(3);
    expect(bySystem.body.entry.length).toBe(2);
    const next = bySystem.body.link.find((l: { relation: string }) => l.relation === 'next').url.slice(t.url.length);
    const page2 = await api.get(next).expect(200);
    expect(page2.body.entry.length).toBe(1);
    const byId = await api.get(`/Patient?_id=${made[0]}&identifier=${encodeURIComponent(`${sys}|`)}`).expect(200);
    expect(byId.body.total).toBe(1);
    const post = await api.post('/Patient/_search').type('form').send(`identifier=${encodeURIComponent(`${sys}|v2`)}`).expect(200);
    expect(post.body.entry[0].resource.id).toBe(made[2]);
    const unknown = await api.get(`/Patient?_id=${made[0]}&nonsense=1`).expect(200);
    const outcome = unknown.body.entry.find((e: { search: { mode: string } }) => e.search.mode === 'outcome');
    expect(outcome.resource.issue[0].diagnostics).toMatch(/nonsense/);
    await api.get(`/Patient?nonsense=1`).set('Prefer', 'handling=strict').expect(400);
    await api.get(next.replace(/_page=[^&]+/, '_page=abc.def')).expect(400);
  });

  test('conditional create, update, delete and patch follow the 0/1/many rules', async () => {
    const sys = `urn:cond:${Date.now()}`;
    const crit = `identifier=${encodeURIComponent(`${sys}|a`)}`;
    const first = await api.post('/Patient').set('Content-Type', FHIR).set('If-None-Exist', crit).send(patient({ identifier: [{ system: sys, value: 'a' }] })).expect(201);
    const again = await api.post('/Patient').set('Content-Type', FHIR).set('If-None-Exist', crit).send(patient({ identifier: [{ system: sys, value: 'a' }] })).expect(200);
    expect(again.body.id).toBe(first.body.id);
    expect(again.headers.location).toContain(first.body.id);
    await api.post('/Patient').set('Content-Type', FHIR).set('If-None-Exist', 'bogus=1').send(patient()).expect(400);

    // conditional update: one match updates it; no match creates; several matches 412
    const u1 = await api.put(`/Patient?${crit}`).set('Content-Type', FHIR).send(patient({ identifier: [{ system: sys, value: 'a' }], active: false })).expect(200);
    expect(u1.body.id).toBe(first.body.id);
    expect(u1.body.meta.versionId).toBe('2');
    await api.put(`/Patient?${crit}`).set('Content-Type', FHIR).send({ ...patient(), id: 'some-other-id' }).expect(400);
    const u0 = await api.put(`/Patient?identifier=${encodeURIComponent(`${sys}|b`)}`).set('Content-Type', FHIR).send(patient({ identifier: [{ system: sys, value: 'b' }] })).expect(201);
    await api.post('/Patient').set('Content-Type', FHIR).send(patient({ identifier: [{ system: sys, value: 'b' }] })).expect(201);
    const many = await api.put(`/Patient?identifier=${encodeURIComponent(`${sys}|b`)}`).set('Content-Type', FHIR).send(patient()).expect(412);
    expect(many.body.issue[0].code).toBe('multiple-matches');
    await api.post('/Patient').set('Content-Type', FHIR).set('If-None-Exist', `identifier=${encodeURIComponent(`${sys}|b`)}`).send(patient()).expect(412);
    await api.put('/Patient').set('Content-Type', FHIR).send(patient()).expect(405);

    // conditional patch
    const cp = await api.patch(`/Patient?${crit}`).set('Content-Type', 'application/json-patch+json').send(JSON.stringify([{ op: 'replace', path: '/active', value: true }])).expect(200);
    expect(cp.body.meta.versionId).toBe('3');

    // conditional delete: many 412, one deletes, none is a no-op
    await api.delete(`/Patient?identifier=${encodeURIComponent(`${sys}|b`)}`).expect(412);
    await api.delete(`/Patient?${crit}`).expect(204);
    await api.get(`/Patient/${first.body.id}`).expect(410);
    await api.delete(`/Patient?${crit}`).expect(204);
    await api.get(`/Patient/${u0.body.id}`).expect(200);
  });

  test('CORS: any origin without credentials by default, and preflight', async () => {
    const res = await api.get('/metadata').set('Origin', 'https://app.example.org').expect(200);
    expect(res.headers['access-control-allow-origin']).toBe('*');
    expect(res.headers['access-control-allow-credentials']).toBeUndefined();
    expect(res.headers['access-control-expose-headers']).toContain('ETag');
    const pre = await api.options('/Patient').set('Origin', 'https://app.example.org').set('Access-Control-Request-Method', 'POST').expect(204);
    expect(pre.headers['access-control-allow-methods']).toContain('PATCH');
    expect(pre.headers['access-control-allow-headers']).toContain('If-Match');
  });

  test('health and readiness', async () => {
    await api.get('/healthz').expect(200);
    const ready = await api.get('/readyz').expect(200);
    expect(ready.body.status).toBe('ready');
    const rid = await api.get('/metadata').set('X-Request-Id', 'abc-123').expect(200);
    expect(rid.headers['x-request-id']).toBe('abc-123');
  });
});
