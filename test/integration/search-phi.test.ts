// Search over sealed PHI (design.md "PHI at rest", https://hl7.org/fhir/R4/search.html): with sealing
// on (the default) the values of protected parameters never reach the plaintext index tables; they are
// searched through blind indexes (keyed HMACs in idx_blind), what a blind index cannot answer is
// refused with a 400 that does not echo the value, and matches are confirmed after opening.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const TABLES = ['idx_token', 'idx_string', 'idx_reference', 'idx_date', 'idx_number', 'idx_quantity', 'idx_uri', 'idx_text', 'idx_blind'];
type Entry = { resource: { id: string; resourceType: string }; search: { mode: string } };
const ids = (body: { entry?: Entry[] }) => (body.entry ?? []).filter((e) => e.search.mode === 'match').map((e) => e.resource.id).sort();

describe.each(backends())('search with PHI sealed on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  let a: string;
  let b: string;
  beforeAll(async () => {
    t = await startTestServer(backend);
    api = authed(t);
    const post = async (r: object) => (await api.post(`/${(r as { resourceType: string }).resourceType}`).set('Content-Type', FHIR).send(r).expect(201)).body.id as string;
    a = await post({
      resourceType: 'Patient',
      gender: 'female',
      name: [{ family: 'Quarantotto', given: ['Ysolde', 'María'] }],
      birthDate: '1931-02-03',
      telecom: [{ system: 'phone', value: '555-0199-31' }, { system: 'email', value: 'ysolde@example.org' }],
      address: [{ line: ['12 Vinegar Row'], city: 'Vinegarton', postalCode: '01234', state: 'Massachusetts' }],
      identifier: [{ system: 'urn:mrn', value: 'PHI-1', type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MR' }] } }],
    });
    b = await post({
      resourceType: 'Patient',
      gender: 'male',
      name: [{ family: 'Quarantino', given: ['Yves'] }],
      birthDate: '1931-05',
      telecom: [{ system: 'phone', value: '555-0199-32' }],
      address: [{ city: 'Vinegar Hill' }],
      identifier: [{ system: 'urn:other', value: 'PHI-1' }, { value: 'NOSYS-2' }],
    });
  });
  afterAll(async () => {
    await t.close();
  });

  test('no plaintext PHI in any index table; idx_blind holds the HMACs', async () => {
    for (const table of TABLES) {
      const rows = (await t.svc.db.knex.raw(`select * from ${table} where resource_type = 'Patient'`)) as { rows: Record<string, unknown>[] };
      const text = JSON.stringify(rows.rows, (_k, v: unknown) => (Buffer.isBuffer(v) ? v.toString('latin1') : v));
      expect([table, /quarant|ysolde|maria|555-0199|vinegar|01234|massachusetts|PHI-1|NOSYS|urn:mrn|1931/i.test(text)]).toEqual([table, false]);
    }
    const blind = (await t.svc.db.knex.raw("select param, count(*)::int as n from idx_blind where resource_type = 'Patient' and resource_id = ? group by param order by param", [a])) as { rows: { param: string; n: number }[] };
    expect(blind.rows.map((r) => r.param)).toEqual(
      expect.arrayContaining(['address', 'address-city', 'address-postalcode', 'address-state', 'birthdate', 'email', 'family', 'given', 'identifier', 'identifier:of-type', 'name', 'phone', 'phonetic', 'telecom']),
    );
    // gender is not PHI under the policy: still a plaintext token
    const gender = (await t.svc.db.knex.raw("select code from idx_token where resource_type = 'Patient' and resource_id = ? and param = 'gender'", [a])) as { rows: { code: string }[] };
    expect(gender.rows).toEqual([{ code: 'female' }]);
  });

  test.each([
    ['name=quarant', 'ab'],
    ['name=QUARANTOTTO', 'a'],
    ['name=maria', 'a'],
    ['given=Mari', 'a'],
    ['family=quarantin', 'b'],
    ['family:exact=Quarantotto', 'a'],
    ['family:exact=quarantotto', ''],
    ['name=quarantottoo', ''],
    ['phonetic=Quarantoto', 'ab'],
    ['phonetic=Ysolda', 'a'],
    ['identifier=urn:mrn|PHI-1', 'a'],
    ['identifier=PHI-1', 'ab'],
    ['identifier=|NOSYS-2', 'b'],
    ['identifier=|PHI-1', ''],
    ['identifier=urn:other|', 'b'],
    ['identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|PHI-1', 'a'],
    ['birthdate=1931', 'ab'],
    ['birthdate=1931-02', 'a'],
    ['birthdate=1931-02-03', 'a'],
    ['birthdate=1931-05-01', ''],
    ['birthdate=1931-05', 'b'],
    ['phone=555-0199-31,555-0199-32', 'ab'],
    ['telecom=ysolde@example.org', 'a'],
    ['email=ysolde@example.org', 'a'],
    ['address=12 vine', 'a'],
    ['address-city=vinegar', 'ab'],
    ['address-city=Vinegar Hill', 'b'],
    ['address-postalcode=0123', 'a'],
    ['address-state=massachusetts', 'a'],
    ['email:missing=true', 'b'],
    ['birthdate:missing=false', 'ab'],
    ['name=quarant&gender=male', 'b'],
    ['name=quarant&birthdate=1931-02-03', 'a'],
  ])('Patient?%s', async (q, want) => {
    const res = await api.get(`/Patient?${q}`).set('Prefer', 'handling=strict').expect(200);
    const expected = [...want].map((c) => (c === 'a' ? a : b)).sort();
    expect(ids(res.body)).toEqual(expected);
  });

  test.each([
    ['name:contains=arant', ':contains'],
    ['birthdate=ge1931', 'exact year, month or day'],
    ['birthdate=1931-02-03T10:00:00Z', 'exact year, month or day'],
    ['identifier:not=PHI-1', ':not'],
    ['identifier:text=medical', ':text'],
    [`family=${'q'.repeat(41)}`, 'up to 40 characters'],
    ['_sort=family', 'sorting'],
    ['_sort=-birthdate', 'sorting'],
  ])('Patient?%s is refused with a 400 that does not echo the value', async (q, why) => {
    for (const prefer of ['handling=strict', 'handling=lenient']) {
      const res = await api.get(`/Patient?${q}`).set('Prefer', prefer).expect(400);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(res.body.issue[0].code).toBe('not-supported');
      expect(res.body.issue[0].diagnostics).toContain(why);
      expect(res.text).not.toMatch(/arant|1931|PHI-1|medical|qqqq/);
    }
  });

  test('chains and _has reach sealed parameters through the blind index', async () => {
    const obs = (await api.post('/Observation').set('Content-Type', FHIR).send({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${a}` } }).expect(201)).body.id;
    const chained = await api.get('/Observation?subject:Patient.name=ysolde').set('Prefer', 'handling=strict').expect(200);
    expect(ids(chained.body)).toEqual([obs]);
    expect(ids((await api.get('/Observation?subject:Patient.birthdate=1931-05').expect(200)).body)).toEqual([]);
    const has = await api.get('/Patient?_has:Observation:subject:status=final&identifier=urn:mrn|PHI-1').set('Prefer', 'handling=strict').expect(200);
    expect(ids(has.body)).toEqual([a]);
    const rev = await api.get(`/Patient?_has:Observation:subject:_id=${obs}&name=quarant`).expect(200);
    expect(ids(rev.body)).toEqual([a]);
  });

  test('several types: blind for the sealed one, plaintext for the other', async () => {
    const pr = (await api.post('/Practitioner').set('Content-Type', FHIR).send({ resourceType: 'Practitioner', name: [{ family: 'Quarantelli' }] }).expect(201)).body.id;
    const found = await api.get('/Practitioner?family=quarantelli').set('Prefer', 'handling=strict').expect(200);
    expect(ids(found.body)).toEqual([pr]);
    const both = await api.get('/?_type=Patient,Practitioner&name=quarant').set('Prefer', 'handling=strict').expect(200);
    expect(ids(both.body)).toEqual([a, b, pr].sort());
  });

  test('conditional create and update by identifier match through the blind index', async () => {
    const again = await api.post('/Patient').set('Content-Type', FHIR).set('If-None-Exist', 'identifier=urn:mrn|PHI-1').send({ resourceType: 'Patient' }).expect(200);
    expect(again.body.id).toBe(a);
    await api.post('/Patient').set('Content-Type', FHIR).set('If-None-Exist', 'identifier=PHI-1').send({ resourceType: 'Patient' }).expect(412);
    const created = await api.put('/Patient?identifier=urn:new|C-1').set('Content-Type', FHIR).send({ resourceType: 'Patient', identifier: [{ system: 'urn:new', value: 'C-1' }], name: [{ family: 'Condit' }] }).expect(201);
    const updated = await api.put('/Patient?identifier=urn:new|C-1').set('Content-Type', FHIR).send({ resourceType: 'Patient', identifier: [{ system: 'urn:new', value: 'C-1' }], name: [{ family: 'Conditional' }] }).expect(200);
    expect(updated.body.id).toBe(created.body.id);
    // the old name's blind rows went with the old version
    expect(ids((await api.get('/Patient?family:exact=Condit').expect(200)).body)).toEqual([]);
    expect(ids((await api.get('/Patient?family:exact=Conditional').expect(200)).body)).toEqual([created.body.id]);
    await api.delete(`/Patient/${created.body.id}`).expect(204);
    const left = (await t.svc.db.knex.raw("select count(*)::int as n from idx_blind where resource_type = 'Patient' and resource_id = ?", [created.body.id])) as { rows: { n: number }[] };
    expect(left.rows[0].n).toBe(0);
  });

  test('a candidate whose HMAC matched by collision is dropped once opened', async () => {
    // Simulate a truncated-HMAC collision: give b the blind row of a value only a has.
    const blind = t.svc.store.phiIndexMode.blind!;
    const mac = blind.indexer.exact('Patient', 'family', 'Quarantotto');
    await t.svc.db.knex.raw("insert into idx_blind (resource_type, resource_id, param, mac) values ('Patient', ?, 'family', decode(?, 'hex'))", [b, mac]);
    const res = await api.get('/Patient?family:exact=Quarantotto').expect(200);
    expect(ids(res.body)).toEqual([a]);
    await t.svc.db.knex.raw("delete from idx_blind where resource_type = 'Patient' and resource_id = ? and param = 'family' and mac = decode(?, 'hex')", [b, mac]);
  });

  test('the CapabilityStatement says what is served on sealed parameters', async () => {
    const cs = await api.get('/metadata').expect(200);
    const patient = cs.body.rest[0].resource.find((r: { type: string }) => r.type === 'Patient');
    const doc = (n: string) => patient.searchParam.find((p: { name: string }) => p.name === n)?.documentation as string;
    expect(doc('name')).toMatch(/blind index.*starts-with.*:exact.*Refused \(400\): :contains/);
    expect(doc('birthdate')).toMatch(/exact year, month or day.*Refused \(400\): prefixes/);
    expect(doc('identifier')).toMatch(/:of-type.*Refused \(400\): :text, :not/);
    expect(doc('gender')).not.toMatch(/blind/);
  });
});

describe.each(backends())('search with PHI_ENCRYPTION=off on %s PostgreSQL', (backend) => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer(backend, { PHI_ENCRYPTION: 'off' });
  });
  afterAll(async () => {
    await t.close();
  });

  test('plaintext indexes, no blind rows, the same searches served (and :contains, ranges, _sort too)', async () => {
    const api = authed(t);
    const id = (await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', name: [{ family: 'Plainview' }], birthDate: '1950-06-01', identifier: [{ system: 'urn:p', value: 'P-1' }] }).expect(201)).body.id;
    const n = (await t.svc.db.knex.raw('select count(*)::int as n from idx_blind')) as { rows: { n: number }[] };
    expect(n.rows[0].n).toBe(0);
    const s = (await t.svc.db.knex.raw("select value_norm from idx_string where resource_type = 'Patient' and param = 'family'")) as { rows: { value_norm: string }[] };
    expect(s.rows).toEqual([{ value_norm: 'plainview' }]);
    for (const q of ['family=plain', 'name:contains=inview', 'birthdate=ge1950', 'identifier=urn:p|P-1', '_sort=family']) {
      const res = await api.get(`/Patient?${q}`).set('Prefer', 'handling=strict').expect(200);
      expect([q, ids(res.body)]).toEqual([q, [id]]);
    }
  });
});
