// Validation on the write paths (https://hl7.org/fhir/R4/validation.html, http.html): create, update,
// patch (the patched result), transaction and batch entries are checked by the R4 validator; errors
// reject with 422 listing every issue, warnings come back with Prefer: return=OperationOutcome, and a
// fault inside validation is a 500 OperationOutcome.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';
type OO = { resourceType: string; issue: { severity: string; code: string; diagnostics: string; expression?: string[] }[] };

const narrative = { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">A test patient</div>' };

describe.each(backends())('validation on writes, %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  const marker = `urn:validation-write:${Date.now()}`;
  const count = async (type: string, value: string) => (await api.get(`/${type}?identifier=${encodeURIComponent(`${marker}|${value}`)}`).expect(200)).body.total as number;
  beforeAll(async () => {
    t = await startTestServer(backend);
    api = authed(t);
  });
  afterAll(async () => {
    await t.close();
  });

  test('create: 422 with every issue, its code and its FHIRPath location; nothing stored', async () => {
    const bad = { resourceType: 'Patient', identifier: [{ system: marker, value: 'c1' }], gender: 'robot', birthDate: '1970-02-30', name: [{ given: ['A', 7] }], nickname: 'x', contact: [{ gender: 'female' }] };
    const res = await api.post('/Patient').set('Content-Type', FHIR).send(bad).expect(422);
    const oo = res.body as OO;
    expect(oo.resourceType).toBe('OperationOutcome');
    expect(oo.issue[0]).toMatchObject({ severity: 'error', code: 'invalid', diagnostics: 'the Patient is not valid FHIR R4 (5 errors)' });
    const issues = oo.issue.slice(1).filter((i) => i.severity === 'error').map((i) => `${i.code} ${i.expression?.[0]}`).sort();
    expect(issues).toEqual(['code-invalid Patient.gender', 'invariant Patient.contact[0]', 'structure Patient.nickname', 'value Patient.birthDate', 'value Patient.name[0].given[1]']);
    expect(JSON.stringify(oo)).not.toContain('robot');
    expect(await count('Patient', 'c1')).toBe(0);
  });

  test('update: the same checks, 422 and the stored version unchanged', async () => {
    const id = `vw-${Date.now()}`;
    await api.put(`/Patient/${id}`).set('Content-Type', FHIR).send({ resourceType: 'Patient', id, text: narrative, gender: 'male' }).expect(201);
    const res = await api.put(`/Patient/${id}`).set('Content-Type', FHIR).send({ resourceType: 'Patient', id, text: narrative, gender: 'mail' }).expect(422);
    expect((res.body as OO).issue.map((i) => i.expression?.[0])).toContain('Patient.gender');
    const read = await api.get(`/Patient/${id}`).expect(200);
    expect(read.body.meta.versionId).toBe('1');
    expect(read.body.gender).toBe('male');
  });

  test('warnings never reject and come back with Prefer: return=OperationOutcome', async () => {
    const plain = { resourceType: 'Patient', identifier: [{ system: marker, value: 'w1' }] }; // no narrative: dom-6 is a warning
    const rep = await api.post('/Patient').set('Content-Type', FHIR).send(plain).expect(201);
    expect(rep.body.resourceType).toBe('Patient');
    const oo = await api.post('/Patient').set('Content-Type', FHIR).set('Prefer', 'return=OperationOutcome').send(plain).expect(201);
    expect(oo.body.resourceType).toBe('OperationOutcome');
    expect((oo.body as OO).issue).toEqual(expect.arrayContaining([expect.objectContaining({ severity: 'warning', code: 'invariant', expression: ['Patient'] })]));
    const upd = await api.put(`/Patient/${rep.body.id as string}`).set('Content-Type', FHIR).set('Prefer', 'return=OperationOutcome').send({ ...plain, id: rep.body.id }).expect(200);
    expect((upd.body as OO).issue.some((i) => i.severity === 'warning' && i.diagnostics.startsWith('dom-6'))).toBe(true);
    const clean = await api.post('/Patient').set('Content-Type', FHIR).set('Prefer', 'return=OperationOutcome').send({ ...plain, text: narrative }).expect(201);
    expect((clean.body as OO).issue.every((i) => i.severity === 'information')).toBe(true);
  });

  test('patch validates the patched result', async () => {
    const created = await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', text: narrative, gender: 'male' }).expect(201);
    const id = created.body.id as string;
    const jp = (ops: unknown[]) => api.patch(`/Patient/${id}`).set('Content-Type', 'application/json-patch+json').send(JSON.stringify(ops));
    const bad = await jp([{ op: 'replace', path: '/gender', value: 'robot' }, { op: 'add', path: '/birthDate', value: 'yesterday' }]).expect(422);
    expect((bad.body as OO).issue.slice(1).map((i) => i.expression?.[0]).sort()).toEqual(['Patient.birthDate', 'Patient.gender']);
    const empty = await jp([{ op: 'add', path: '/name', value: [] }]).expect(422);
    expect((empty.body as OO).issue[1]).toMatchObject({ code: 'structure', expression: ['Patient.name'] });
    expect((await api.get(`/Patient/${id}`).expect(200)).body.meta.versionId).toBe('1');
    await jp([{ op: 'replace', path: '/gender', value: 'female' }]).expect(200);
  });

  test('a transaction with one invalid entry is rejected whole; a batch rejects that entry only', async () => {
    const entries = [
      { fullUrl: 'urn:uuid:5b0c7d7e-1d1e-4b5a-9c43-4c1f3e8e0a01', resource: { resourceType: 'Patient', text: narrative, identifier: [{ system: marker, value: 't1' }] }, request: { method: 'POST', url: 'Patient' } },
      { fullUrl: 'urn:uuid:5b0c7d7e-1d1e-4b5a-9c43-4c1f3e8e0a02', resource: { resourceType: 'Observation', text: narrative, identifier: [{ system: marker, value: 't2' }], status: 'done', code: { text: 'x' }, subject: { reference: 'urn:uuid:5b0c7d7e-1d1e-4b5a-9c43-4c1f3e8e0a01' } }, request: { method: 'POST', url: 'Observation' } },
    ];
    const tx = await api.post('/').set('Content-Type', FHIR).send({ resourceType: 'Bundle', type: 'transaction', entry: entries });
    expect(tx.status).toBe(422);
    const oo = tx.body as OO;
    expect(oo.issue[0].diagnostics).toMatch(/^entry 1 /);
    expect(oo.issue.some((i) => i.code === 'code-invalid' && i.expression?.[0] === 'Observation.status')).toBe(true);
    expect(await count('Patient', 't1')).toBe(0);
    expect(await count('Observation', 't2')).toBe(0);

    const batch = await api.post('/').set('Content-Type', FHIR).send({ resourceType: 'Bundle', type: 'batch', entry: entries }).expect(200);
    expect(batch.body.entry.map((e: { response: { status: string } }) => e.response.status)).toEqual(['201 Created', '422 Unprocessable Entity']);
    expect(batch.body.entry[1].response.outcome.issue.some((i: { code: string }) => i.code === 'code-invalid')).toBe(true);
    expect(await count('Patient', 't1')).toBe(1);
  });

  test('$validate reports the same issues with 200 and stores nothing', async () => {
    const res = await api.post('/Observation/$validate').set('Content-Type', FHIR).send({ resourceType: 'Observation', identifier: [{ system: marker, value: 'v1' }], status: 'final', code: { text: 'x' }, valueQuantity: { value: 1, code: 'mg' } }).expect(200);
    expect((res.body as OO).issue.filter((i) => i.severity === 'error').map((i) => `${i.code} ${i.expression?.[0]}`)).toEqual(['invariant Observation.value.ofType(Quantity)']);
    const params = { resourceType: 'Parameters', parameter: [{ name: 'mode', valueCode: 'create' }, { name: 'resource', resource: { resourceType: 'Observation', status: 'final' } }] };
    const p = await api.post('/Observation/$validate').set('Content-Type', FHIR).send(params).expect(200);
    expect((p.body as OO).issue.map((i) => `${i.code} ${i.expression?.[0]}`)).toContain('required Observation.code');
    expect(await count('Observation', 'v1')).toBe(0);
  });

  test('a fault inside validation is a 500 OperationOutcome that says nothing of it', async () => {
    const original = t.svc.validator;
    t.svc.validator = {
      validate: () => {
        throw new Error('validator exploded at Patient.name');
      },
    };
    try {
      const res = await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', identifier: [{ system: marker, value: 'f1' }] }).expect(500);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(JSON.stringify(res.body)).not.toContain('exploded');
    } finally {
      t.svc.validator = original;
    }
    expect(await count('Patient', 'f1')).toBe(0);
    await api.get('/metadata').expect(200);
  });
});
