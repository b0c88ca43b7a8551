// PHI at rest (design.md): stored rows hold no protected element in the clear; a sealed value moved
// to another row fails safely and never returns the other patient's data.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';

describe.each(backends())('PHI sealing on %s PostgreSQL', (backend) => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer(backend);
  });
  afterAll(async () => {
    await t.close();
  });

  const patient = (family: string, birthDate: string) => ({
    resourceType: 'Patient',
    name: [{ family, given: ['Zebulon'] }],
    birthDate,
    telecom: [{ system: 'phone', value: '555-0142-77' }],
    address: [{ line: ['17 Quarantine Lane'], city: 'Springfield' }],
    text: { status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml">${family}</div>` },
    gender: 'other',
  });

  test('rows in resource and resource_history hold none of the protected values', async () => {
    const { body } = await authed(t).post('/Patient').set('Content-Type', FHIR).send(patient('Vantongeren', '1933-03-17')).expect(201);
    await authed(t).put(`/Patient/${body.id}`).set('Content-Type', FHIR).send({ ...patient('Vantongeren', '1933-03-18'), id: body.id }).expect(200);
    const rows = (await t.svc.db.knex.raw("select content::text as c, sealed from resource_history where resource_type = 'Patient' and id = ?", [body.id])) as { rows: { c: string; sealed: string }[] };
    expect(rows.rows).toHaveLength(2);
    for (const r of rows.rows) {
      expect(r.c).not.toMatch(/Vantongeren|Zebulon|1933-03-1|555-0142|Quarantine/);
      expect(r.c).toContain('"gender": "other"');
      expect(r.sealed.split('.')).toHaveLength(5);
    }
    const read = await authed(t).get(`/Patient/${body.id}`).expect(200);
    expect(read.body.name[0].family).toBe('Vantongeren');
    expect(read.body.birthDate).toBe('1933-03-18');
    const v1 = await authed(t).get(`/Patient/${body.id}/_history/1`).expect(200);
    expect(v1.body.birthDate).toBe('1933-03-17');
  });

  test('swapping the JWE of two rows in SQL makes both reads fail safely', async () => {
    const a = (await authed(t).post('/Patient').set('Content-Type', FHIR).send(patient('Aardvark', '1940-01-01')).expect(201)).body.id as string;
    const b = (await authed(t).post('/Patient').set('Content-Type', FHIR).send(patient('Bumblebee', '1950-02-02')).expect(201)).body.id as string;
    await t.svc.db.knex.transaction(async (tx) => {
      const sa = (await tx('resource').where({ resource_type: 'Patient', id: a }).first()).sealed as string;
      const sb = (await tx('resource').where({ resource_type: 'Patient', id: b }).first()).sealed as string;
      await tx('resource').where({ resource_type: 'Patient', id: a }).update({ sealed: sb });
      await tx('resource').where({ resource_type: 'Patient', id: b }).update({ sealed: sa });
    });
    for (const [id, other] of [[a, 'Bumblebee'], [b, 'Aardvark']]) {
      const res = await authed(t).get(`/Patient/${id}`);
      expect(res.status).toBe(409);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(res.body.issue[0].diagnostics).toMatch(/integrity check/);
      expect(res.text).not.toContain(other);
    }
    // the untouched history versions still open
    await authed(t).get(`/Patient/${a}/_history/1`).expect(200);
  });
});
