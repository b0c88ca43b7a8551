// Audit coverage beyond the authorization matrix (which checks every interaction x token form, in
// auth-matrix.test.ts): Bundles with several entries, success and rollback; batch entries that fail
// on their own; requests refused before any interaction; AuditEvents written through a Bundle and the
// ledger's refusal to change. Each request carries its own X-Request-Id and its records are found by it.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { emptyRows } from '../../src/search/index-rows.js';
import { authed, concurrencyBackends, startTestServer, tokenFor, type TestServer } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const backend = concurrencyBackends()[0];

interface Rec {
  subtype: string;
  action: string;
  outcome: string;
  outcomeDesc: string;
  resources: string[];
  patients: string[];
  client: string | undefined;
}

describe(`audit coverage (${backend})`, () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer(backend);
  });
  afterAll(async () => {
    await t?.close();
  });

  async function records(requestId: string): Promise<Rec[]> {
    const rows = ((await t.svc.db.knex.raw('select canonical from audit_ledger where canonical like ? order by seq', [`%"value":"${requestId}"%`])) as { rows: { canonical: string }[] }).rows;
    type Ev = { subtype: { code: string }[]; action: string; outcome: string; outcomeDesc: string; agent: { who?: { identifier?: { value?: string } } }[]; entity: { what?: { reference?: string; identifier?: { value?: string } }; role?: { code: string } }[] };
    return rows
      .map((r) => JSON.parse(r.canonical) as Ev)
      .filter((e) => e.entity.some((x) => x.role?.code === '26' && x.what?.identifier?.value === requestId))
      .map((e) => ({
        subtype: e.subtype[0].code,
        action: e.action,
        outcome: e.outcome,
        outcomeDesc: e.outcomeDesc,
        resources: e.entity.filter((x) => x.role?.code === '4').map((x) => x.what!.reference!),
        patients: e.entity.filter((x) => x.role?.code === '1').map((x) => x.what!.reference!),
        client: e.agent[0].who?.identifier?.value,
      }));
  }

  const rid = () => `cov-${randomUUID()}`;

  test('a transaction of three entries: one record per entry and one for the Bundle, in its transaction', async () => {
    const id = rid();
    const basic = `cov-${randomUUID().slice(0, 8)}`;
    const bundle = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { fullUrl: 'urn:uuid:11111111-1111-4111-8111-111111111111', resource: { resourceType: 'Patient', active: true }, request: { method: 'POST', url: 'Patient' } },
        { resource: { resourceType: 'Observation', status: 'final', code: { text: 'cov' }, subject: { reference: 'urn:uuid:11111111-1111-4111-8111-111111111111' } }, request: { method: 'POST', url: 'Observation' } },
        { resource: { resourceType: 'Basic', id: basic, code: { text: 'cov' } }, request: { method: 'PUT', url: `Basic/${basic}` } },
      ],
    };
    const r = await authed(t).post('/').set('X-Request-Id', id).set('Content-Type', FHIR).send(bundle).expect(200);
    const patientId = String(r.body.entry[0].response.location).split('/')[1];
    const recs = await records(id);
    expect(recs.map((x) => `${x.subtype} ${x.action} ${x.outcome}`).sort()).toEqual(['create C 0', 'create C 0', 'transaction E 0', 'update U 0']);
    const obs = recs.find((x) => x.resources.some((ref) => ref.startsWith('Observation/')))!;
    expect(obs.patients).toEqual([`Patient/${patientId}`]);
    expect(recs.find((x) => x.resources.includes(`Patient/${patientId}/_history/1`))!.patients).toEqual([`Patient/${patientId}`]);
    expect(recs.find((x) => x.subtype === 'update')!.resources).toEqual([`Basic/${basic}/_history/1`]);
    expect(new Set(recs.map((x) => x.client))).toEqual(new Set(['test-client']));
  });

  test('a transaction that rolls back: every entry and the Bundle recorded as failures, nothing stored', async () => {
    const id = rid();
    const marker = randomUUID();
    const bundle = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { resource: { resourceType: 'Basic', code: { text: marker } }, request: { method: 'POST', url: 'Basic' } },
        { resource: { resourceType: 'Basic', code: { text: marker } }, request: { method: 'POST', url: 'Basic' } },
        { resource: { resourceType: 'Observation', status: 'not-a-status', code: { text: marker } }, request: { method: 'POST', url: 'Observation' } },
      ],
    };
    const r = await authed(t).post('/').set('X-Request-Id', id).set('Content-Type', FHIR).send(bundle);
    expect(r.status).toBe(422);
    expect((await authed(t).get(`/Basic?code:text=${marker}&_summary=count`).expect(200)).body.total).toBe(0);
    const recs = await records(id);
    expect(recs).toHaveLength(4);
    expect(recs.every((x) => x.outcome === '4' && x.outcomeDesc.startsWith('422'))).toBe(true);
    expect(recs.filter((x) => x.outcomeDesc.includes('rolled back'))).toHaveLength(3);
    expect(recs.filter((x) => x.subtype === 'transaction')).toHaveLength(1);
  });

  test('a batch: each entry succeeds or fails on its own, each with its record', async () => {
    const id = rid();
    const p = (await authed(t).post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', active: true }).expect(201)).body.id as string;
    const bundle = {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [
        { request: { method: 'GET', url: `Patient/${p}` } },
        { request: { method: 'GET', url: 'Patient/does-not-exist' } },
        { resource: { resourceType: 'Observation', status: 'final', code: { text: 'b' }, subject: { reference: `Patient/${p}` } }, request: { method: 'POST', url: 'Observation' } },
        { request: { method: 'GET', url: 'NotAType/1' } },
      ],
    };
    const r = await authed(t).post('/').set('X-Request-Id', id).set('Content-Type', FHIR).send(bundle).expect(200);
    expect(r.body.entry.map((e: { response: { status: string } }) => e.response.status.slice(0, 3))).toEqual(['200', '404', '201', '404']);
    const recs = await records(id);
    expect(recs.map((x) => `${x.subtype} ${x.action} ${x.outcome}`).sort()).toEqual(['batch E 0', 'create C 0', 'read R 0', 'read R 4', 'read R 4']);
    expect(recs.find((x) => x.subtype === 'read' && x.outcome === '0')!.patients).toEqual([`Patient/${p}`]);
    expect(recs.find((x) => x.subtype === 'create')!.patients).toEqual([`Patient/${p}`]);
  });

  test('requests refused before any interaction are recorded too, anonymously', async () => {
    const cases: [string, () => Promise<{ status: number }>][] = [
      ['unknown route', async () => authed(t).get('/Patient/1/_history/1/extra').set('X-Request-Id', ids[0])],
      ['method not allowed', async () => authed(t).post('/metadata').set('X-Request-Id', ids[1])],
      ['not acceptable', async () => authed(t).get('/Patient').set('Accept', 'application/fhir+xml').set('X-Request-Id', ids[2])],
    ];
    const ids = [rid(), rid(), rid()];
    for (const [i, [name, run]] of cases.entries()) {
      const res = await run();
      expect([name, res.status >= 400]).toEqual([name, true]);
      const recs = await records(ids[i]);
      expect([name, recs.map((x) => `${x.subtype} ${x.outcome} ${x.client}`)]).toEqual([name, [`request:refused 4 anonymous`]]);
      expect(recs[0].outcomeDesc.startsWith(String(res.status))).toBe(true);
    }
  });

  test('creating an AuditEvent: a patient/ scope records only events naming its own patient; no "c" letter, no create (in a Bundle too)', async () => {
    const ev = (patient: string) => ({
      resourceType: 'AuditEvent',
      type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110110' },
      recorded: '2026-12-05T09:00:00Z',
      agent: [{ requestor: true, who: { display: 'patient app' } }],
      source: { observer: { display: 'patient app' } },
      entity: [{ what: { reference: `Patient/${patient}` } }],
    });
    const own = await authed(t, await tokenFor(t.url, { scope: 'patient/AuditEvent.c', patient: 'pa' }));
    expect((await own.post('/AuditEvent').set('Content-Type', FHIR).send(ev('pa'))).status).toBe(201);
    const other = await own.post('/AuditEvent').set('Content-Type', FHIR).send(ev('pb'));
    expect(other.status).toBe(403);
    expect(JSON.stringify(other.body)).not.toContain('pb');
    const viaBundle = await own.post('/').set('Content-Type', FHIR).send({ resourceType: 'Bundle', type: 'batch', entry: [{ resource: ev('pb'), request: { method: 'POST', url: 'AuditEvent' } }] });
    expect(viaBundle.body.entry[0].response.status.slice(0, 3)).toBe('403');
    const readOnly = await authed(t, await tokenFor(t.url, { scope: 'system/AuditEvent.rs' }));
    expect((await readOnly.post('/AuditEvent').set('Content-Type', FHIR).send(ev('pa'))).status).toBe(403);
  });

  test('storage refuses a write in a transaction that carries no audit recorder (whatever the types say)', async () => {
    const id = randomUUID();
    const version = { resourceType: 'Basic', id, versionId: 1, lastUpdated: new Date(), method: 'POST' as const, resource: { resourceType: 'Basic', id, code: { text: 'x' } } as never, index: emptyRows() };
    await expect(t.svc.db.knex.transaction((tx) => t.svc.store.writeVersion(tx as never, version))).rejects.toThrow(/outside an audited transaction/);
    await expect(t.svc.db.knex.transaction((tx) => t.svc.store.writeVersions(tx as never, [version]))).rejects.toThrow(/outside an audited transaction/);
    expect((await authed(t).get(`/Basic/${id}`)).status).toBe(404);
  });

  test('an AuditEvent created in a transaction goes to the ledger; changing one is 405 in a Bundle too', async () => {
    const id = rid();
    const mine = { resourceType: 'AuditEvent', type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110100' }, recorded: '2026-12-05T09:00:00Z', agent: [{ requestor: true, who: { display: 'kiosk-7' } }], source: { observer: { display: 'kiosk-7' } } };
    const r = await authed(t).post('/').set('X-Request-Id', id).set('Content-Type', FHIR).send({ resourceType: 'Bundle', type: 'transaction', entry: [{ resource: mine, request: { method: 'POST', url: 'AuditEvent' } }] }).expect(200);
    const created = String(r.body.entry[0].response.location).split('/')[1];
    const back = await authed(t).get(`/AuditEvent/${created}`).expect(200);
    expect(back.body.agent[0].who.display).toBe('kiosk-7');
    expect((await records(id)).map((x) => `${x.subtype} ${x.action} ${x.outcome}`).sort()).toEqual(['create C 0', 'transaction E 0']);
    const put = await authed(t).post('/').set('Content-Type', FHIR).send({ resourceType: 'Bundle', type: 'batch', entry: [{ resource: { ...mine, id: created }, request: { method: 'PUT', url: `AuditEvent/${created}` } }, { request: { method: 'DELETE', url: `AuditEvent/${created}` } }] }).expect(200);
    expect(put.body.entry.map((e: { response: { status: string } }) => e.response.status.slice(0, 3))).toEqual(['405', '405']);
    expect((await authed(t).put(`/AuditEvent/${created}`).set('Content-Type', FHIR).send({ ...mine, id: created })).status).toBe(405);
    expect((await authed(t).delete(`/AuditEvent/${created}`)).status).toBe(405);
    expect((await authed(t).get(`/AuditEvent/${created}`).expect(200)).body.agent[0].who.display).toBe('kiosk-7');
  });
});
