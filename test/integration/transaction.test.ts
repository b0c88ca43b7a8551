// Transaction and batch Bundles (http.html#transaction, bundle.html#transaction).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import request from 'supertest';
import { findPackageRoot } from '../../src/fhir/package-root.js';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const fixtures = join(findPackageRoot(), 'test', 'fixtures', 'synthea');
const manifest = JSON.parse(readFileSync(join(fixtures, 'manifest.json'), 'utf8')) as { bundles: { file: string; entries: number; resourceCounts: Record<string, number> }[] };

type Entry = { fullUrl?: string; resource?: Record<string, unknown>; request: Record<string, unknown> };
const tx = (entry: Entry[], type = 'transaction') => ({ resourceType: 'Bundle', type, entry });

function references(v: unknown, out: string[] = []): string[] {
  if (Array.isArray(v)) v.forEach((x) => references(x, out));
  else if (v && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) {
      if (k === 'reference' && typeof x === 'string') out.push(x);
      else references(x, out);
    }
  }
  return out;
}

describe.each(backends())('transactions and batches on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  beforeAll(async () => {
    t = await startTestServer(backend);
    api = authed(t);
  });
  afterAll(async () => {
    await t.close();
  });

  test('Synthea bundles load: per-type counts match and every reference resolves', async () => {
    const expected: Record<string, number> = {};
    for (const b of manifest.bundles) {
      const body = readFileSync(join(fixtures, b.file), 'utf8');
      const res = await api.post('/').set('Content-Type', FHIR).send(body);
      if (res.status !== 200) throw new Error(JSON.stringify(res.body).slice(0, 500));
      expect(res.body.type).toBe('transaction-response');
      expect(res.body.entry).toHaveLength(b.entries);
      expect(res.body.entry.every((e: { response: { status: string } }) => e.response.status === '201 Created')).toBe(true);
      for (const [k, n] of Object.entries(b.resourceCounts)) expected[k] = (expected[k] ?? 0) + n;
    }
    for (const [type, n] of Object.entries(expected)) {
      const r = await api.get(`/${type}/_history?_count=1000`).expect(200);
      expect([type, r.body.entry.length]).toEqual([type, n]);
      for (const e of r.body.entry) {
        for (const ref of references(e.resource)) {
          expect(ref.startsWith('urn:uuid:')).toBe(false);
          if (ref.startsWith('#')) continue;
          const [rt, rid] = ref.split('/');
          const got = await api.get(`/${rt}/${rid}`);
          expect([ref, got.status]).toEqual([ref, 200]);
        }
      }
    }
  });

  test('the Inferno US Core bundles load (PUT entries with urn:uuid fullUrls), references resolved; the one with an invalid entry is refused whole', async () => {
    const dir = join(findPackageRoot(), 'test', 'fixtures', 'inferno');
    // uscore_bundle_patient_355.json carries one Observation that is not valid R4 (effectivePeriod.stop, an
    // element Period does not have): as a transaction it must be refused whole, as a batch only that entry fails.
    const bad = readFileSync(join(dir, 'uscore_bundle_patient_355.json'), 'utf8');
    const refused = await api.post('/').set('Content-Type', FHIR).send(bad).expect(422);
    expect(refused.body.issue[0].diagnostics).toMatch(/^entry 266 \(urn:uuid:3c766796-d8a0-480f-8215-f1e7e3afab21\)/);
    expect(refused.body.issue.some((i: { expression?: string[] }) => i.expression?.[0] === 'Observation.effective.ofType(Period).stop')).toBe(true);
    await api.get('/Patient/355').expect(404);
    const asBatch = JSON.parse(bad) as { type: string; entry: Entry[] };
    asBatch.type = 'batch';
    const batch = await api.post('/').set('Content-Type', FHIR).send(asBatch).expect(200);
    const statuses = (batch.body.entry as { response: { status: string } }[]).map((e) => e.response.status.split(' ')[0]);
    expect(statuses.filter((s) => s === '422')).toHaveLength(1);
    expect(statuses[266]).toBe('422');
    expect(statuses.filter((s) => s === '201' || s === '200')).toHaveLength(asBatch.entry.length - 1);
    await api.get('/Patient/355').expect(200);

    const files = ['uscore_bundle_asserted-date.json', 'uscore_bundle_patient_85.json', 'uscore_bundle_patient_907.json', 'uscore_bundle_patient_908.json', 'uscore_bundle_patient_client_test.json'];
    for (const f of files) {
      const text = readFileSync(join(dir, f), 'utf8');
      const res = await api.post('/').set('Content-Type', FHIR).send(text);
      if (res.status !== 200) throw new Error(`${f}: ${JSON.stringify(res.body).slice(0, 400)}`);
      const bundle = JSON.parse(text) as { entry: Entry[] };
      expect(res.body.entry).toHaveLength(bundle.entry.length);
      for (const e of res.body.entry as { resource: Record<string, unknown> }[]) {
        for (const ref of references(e.resource)) {
          expect(ref.startsWith('urn:uuid:')).toBe(false);
        }
      }
    }
    const p85 = await api.get('/Patient/85').expect(200);
    expect(p85.body.resourceType).toBe('Patient');
  });

  test('one invalid entry in the middle: the transaction leaves no trace, the batch stores the others', async () => {
    const marker = `urn:mid:${Date.now()}`;
    const entries: Entry[] = [
      { fullUrl: 'urn:uuid:aaaaaaaa-0000-4000-8000-000000000001', resource: { resourceType: 'Patient', identifier: [{ system: marker, value: '1' }] }, request: { method: 'POST', url: 'Patient' } },
      { fullUrl: 'urn:uuid:aaaaaaaa-0000-4000-8000-000000000002', resource: { resourceType: 'Observation', id: 'bad id!' }, request: { method: 'PUT', url: 'Observation/bad id!' } },
      { fullUrl: 'urn:uuid:aaaaaaaa-0000-4000-8000-000000000003', resource: { resourceType: 'Patient', identifier: [{ system: marker, value: '3' }] }, request: { method: 'POST', url: 'Patient' } },
    ];
    const fail = await api.post('/').set('Content-Type', FHIR).send(tx(entries)).expect(400);
    expect(fail.body.issue[0].diagnostics).toMatch(/^entry 1 \(urn:uuid:aaaaaaaa-0000-4000-8000-000000000002\)/);
    const none = await api.get(`/Patient?identifier=${encodeURIComponent(marker + '|')}`).expect(200);
    expect(none.body.total).toBe(0);

    const b = await api.post('/').set('Content-Type', FHIR).send(tx(entries, 'batch')).expect(200);
    expect(b.body.type).toBe('batch-response');
    expect(b.body.entry.map((e: { response: { status: string } }) => e.response.status)).toEqual(['201 Created', '400 Bad Request', '201 Created']);
    expect(b.body.entry[1].response.outcome.resourceType).toBe('OperationOutcome');
    const two = await api.get(`/Patient?identifier=${encodeURIComponent(marker + '|')}`).expect(200);
    expect(two.body.total).toBe(2);
  });

  test('read and vread entries take _summary and _elements as over HTTP', async () => {
    const p = (await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', gender: 'female', birthDate: '1980-01-01', name: [{ family: 'Shaped' }] }).expect(201)).body;
    const get = (url: string) => ({ request: { method: 'GET', url } });
    const b = await api
      .post('/')
      .set('Content-Type', FHIR)
      .send(tx([get(`Patient/${p.id}?_elements=gender`), get(`Patient/${p.id}/_history/1?_elements=birthDate`), get(`Patient/${p.id}?_summary=true`), get(`Patient/${p.id}?_elements=gender&_elements=name`), get(`Patient/${p.id}?_summary=count`)], 'batch'))
      .expect(200);
    const [el, vel, sum, twice, count] = b.body.entry as { resource?: Record<string, unknown> & { meta: { tag?: { code: string }[] } }; response: { status: string } }[];
    expect(Object.keys(el.resource!).sort()).toEqual(['gender', 'id', 'meta', 'resourceType']);
    expect(el.resource!.meta.tag?.map((t) => t.code)).toContain('SUBSETTED');
    expect(Object.keys(vel.resource!).sort()).toEqual(['birthDate', 'id', 'meta', 'resourceType']);
    expect(sum.resource!.name).toEqual([{ family: 'Shaped' }]); // name is a summary element of Patient
    expect(sum.resource!.meta.tag?.map((t) => t.code)).toContain('SUBSETTED');
    expect(twice.response.status).toMatch(/^400/);
    expect(count.response.status).toMatch(/^400/);
  });

  test('processing order is DELETE, POST, PUT/PATCH, GET; answers keep request order', async () => {
    const { body: victim } = await api.post('/Basic').set('Content-Type', FHIR).send({ resourceType: 'Basic', code: { text: 'victim' } }).expect(201);
    const putId = `ord-${Date.now()}`;
    const res = await api
      .post('/')
      .set('Content-Type', FHIR)
      .send(
        tx([
          { request: { method: 'GET', url: `Basic/${putId}` } },
          { fullUrl: `Basic/${putId}`, resource: { resourceType: 'Basic', id: putId, code: { text: 'put' } }, request: { method: 'PUT', url: `Basic/${putId}` } },
          { fullUrl: 'urn:uuid:bbbbbbbb-0000-4000-8000-000000000001', resource: { resourceType: 'Basic', code: { text: 'posted' } }, request: { method: 'POST', url: 'Basic' } },
          { request: { method: 'DELETE', url: `Basic/${victim.id}` } },
        ]),
      )
      .expect(200);
    const statuses = res.body.entry.map((e: { response: { status: string } }) => e.response.status);
    // the GET ran last (after the PUT), so it found the resource
    expect(statuses).toEqual(['200 OK', '201 Created', '201 Created', '204 No Content']);
    expect(res.body.entry[0].resource.code.text).toBe('put');
    expect(res.body.entry[2].response.location).toMatch(/^Basic\/[^/]+\/_history\/1$/);
    expect(res.body.entry[1].response.etag).toBe('W/"1"');
    await api.get(`/Basic/${victim.id}`).expect(410);
  });

  test('references are rewritten everywhere, including nested, extensions and narrative', async () => {
    const p = 'urn:uuid:cccccccc-0000-4000-8000-000000000001';
    const res = await api
      .post('/')
      .set('Content-Type', FHIR)
      .send(
        tx([
          { fullUrl: p, resource: { resourceType: 'Patient', active: true }, request: { method: 'POST', url: 'Patient' } },
          {
            fullUrl: 'urn:uuid:cccccccc-0000-4000-8000-000000000002',
            resource: {
              resourceType: 'Observation',
              status: 'final',
              code: { text: 'x' },
              text: { status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml"><a href="${p}">patient</a></div>` },
              subject: { reference: p },
              performer: [{ reference: p }],
              extension: [{ url: 'http://example.org/ext', valueReference: { reference: p } }],
            },
            request: { method: 'POST', url: 'Observation' },
          },
        ]),
      )
      .expect(200);
    const pid = res.body.entry[0].resource.id as string;
    const obs = res.body.entry[1].resource;
    expect(obs.subject.reference).toBe(`Patient/${pid}`);
    expect(obs.performer[0].reference).toBe(`Patient/${pid}`);
    expect(obs.extension[0].valueReference.reference).toBe(`Patient/${pid}`);
    expect(obs.text.div).toContain(`href="Patient/${pid}"`);
  });

  test('conditional references and ifNoneExist resolve through search; 0 or many matches fail', async () => {
    const sys = `urn:condref:${Date.now()}`;
    await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', identifier: [{ system: sys, value: 'one' }] }).expect(201);
    const ok = await api
      .post('/')
      .set('Content-Type', FHIR)
      .send(tx([{ resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient?identifier=${sys}|one` } }, request: { method: 'POST', url: 'Observation' } }]))
      .expect(200);
    expect(ok.body.entry[0].resource.subject.reference).toMatch(/^Patient\/[0-9a-f-]{36}$/);
    const zero = await api
      .post('/')
      .set('Content-Type', FHIR)
      .send(tx([{ resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient?identifier=${sys}|none` } }, request: { method: 'POST', url: 'Observation' } }]))
      .expect(404);
    expect(zero.body.issue[0].diagnostics).toMatch(/entry 0/);
    await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', identifier: [{ system: sys, value: 'one' }] }).expect(201);
    await api
      .post('/')
      .set('Content-Type', FHIR)
      .send(tx([{ resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient?identifier=${sys}|one` } }, request: { method: 'POST', url: 'Observation' } }]))
      .expect(412);

    // ifNoneExist: an existing match is reused and referenced, nothing new is created
    const sys2 = `urn:ine:${Date.now()}`;
    const { body: existing } = await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', identifier: [{ system: sys2, value: 'x' }] }).expect(201);
    const r = await api
      .post('/')
      .set('Content-Type', FHIR)
      .send(
        tx([
          { fullUrl: 'urn:uuid:dddddddd-0000-4000-8000-000000000001', resource: { resourceType: 'Patient', identifier: [{ system: sys2, value: 'x' }] }, request: { method: 'POST', url: 'Patient', ifNoneExist: `identifier=${sys2}|x` } },
          { resource: { resourceType: 'Observation', status: 'final', code: { text: 'y' }, subject: { reference: 'urn:uuid:dddddddd-0000-4000-8000-000000000001' } }, request: { method: 'POST', url: 'Observation' } },
        ]),
      )
      .expect(200);
    expect(r.body.entry[0].response.status).toBe('200 OK');
    expect(r.body.entry[1].resource.subject.reference).toBe(`Patient/${existing.id}`);
  });

  test('per-entry ifMatch is honoured; a stale one fails the whole transaction', async () => {
    const { body: b } = await api.post('/Basic').set('Content-Type', FHIR).send({ resourceType: 'Basic', code: { text: 'v1' } }).expect(201);
    const stale = await api
      .post('/')
      .set('Content-Type', FHIR)
      .send(
        tx([
          { resource: { resourceType: 'Basic', code: { text: 'side effect' } }, request: { method: 'POST', url: 'Basic' } },
          { resource: { resourceType: 'Basic', id: b.id, code: { text: 'v2' } }, request: { method: 'PUT', url: `Basic/${b.id}`, ifMatch: 'W/"9"' } },
        ]),
      )
      .expect(412);
    expect(stale.body.issue[0].diagnostics).toMatch(/^entry 1/);
    await api
      .post('/')
      .set('Content-Type', FHIR)
      .send(tx([{ resource: { resourceType: 'Basic', id: b.id, code: { text: 'v2' } }, request: { method: 'PUT', url: `Basic/${b.id}`, ifMatch: 'W/"1"' } }]))
      .expect(200);
    const cur = await api.get(`/Basic/${b.id}`).expect(200);
    expect(cur.body.meta.versionId).toBe('2');
  });

  test('two entries on the same resource, bad Bundle types and too many entries are refused', async () => {
    const id = `dup-${Date.now()}`;
    await api
      .post('/')
      .set('Content-Type', FHIR)
      .send(
        tx([
          { resource: { resourceType: 'Basic', id, code: { text: 'a' } }, request: { method: 'PUT', url: `Basic/${id}` } },
          { request: { method: 'DELETE', url: `Basic/${id}` } },
        ]),
      )
      .expect(400);
    await api.get(`/Basic/${id}`).expect(404);
    await api.post('/').set('Content-Type', FHIR).send({ resourceType: 'Bundle', type: 'collection', entry: [] }).expect(400);
    await api.post('/').set('Content-Type', FHIR).send({ resourceType: 'Patient' }).expect(400);
    await api.post('/').set('Content-Type', FHIR).send(tx([{ request: { method: 'FETCH', url: 'Patient' } }])).expect(400);
    const small = await startTestServer(backend, { MAX_BUNDLE_ENTRIES: '2' });
    try {
      const three = Array.from({ length: 3 }, () => ({ resource: { resourceType: 'Basic', code: { text: 'n' } }, request: { method: 'POST', url: 'Basic' } }));
      const r = await authed(small).post('/').set('Content-Type', FHIR).send(tx(three)).expect(413);
      expect(r.body.resourceType).toBe('OperationOutcome');
    } finally {
      await small.close();
    }
  });

  test('Prefer: return=minimal and return=OperationOutcome shape the entry responses', async () => {
    const entries = [{ resource: { resourceType: 'Basic', code: { text: 'pref' } }, request: { method: 'POST', url: 'Basic' } }];
    const min = await api.post('/').set('Content-Type', FHIR).set('Prefer', 'return=minimal').send(tx(entries)).expect(200);
    expect(min.body.entry[0].resource).toBeUndefined();
    expect(min.body.entry[0].response.location).toMatch(/^Basic\//);
    const oo = await api.post('/').set('Content-Type', FHIR).set('Prefer', 'return=OperationOutcome').send(tx(entries, 'batch')).expect(200);
    expect(oo.body.entry[0].resource).toBeUndefined();
    expect(oo.body.entry[0].response.outcome.resourceType).toBe('OperationOutcome');
    expect(oo.body.entry[0].response.status).toBe('201 Created');
  });

  test('PATCH entries carry a JSON Patch as Binary', async () => {
    const { body: b } = await api.post('/Basic').set('Content-Type', FHIR).send({ resourceType: 'Basic', code: { text: 'p' } }).expect(201);
    const data = Buffer.from(JSON.stringify([{ op: 'replace', path: '/code/text', value: 'patched' }])).toString('base64');
    const r = await api
      .post('/')
      .set('Content-Type', FHIR)
      .send(tx([{ resource: { resourceType: 'Binary', contentType: 'application/json-patch+json', data }, request: { method: 'PATCH', url: `Basic/${b.id}` } }]))
      .expect(200);
    expect(r.body.entry[0].resource.code.text).toBe('patched');
  });

  test('conditional delete and patch resolve before writing: overlapping targets fail, no match is a no-op or 404', async () => {
    const tag = `cd${Date.now()}`;
    const { body: b } = await api.post('/Basic').set('Content-Type', FHIR).send({ resourceType: 'Basic', identifier: [{ system: 'urn:t', value: tag }], code: { text: 'c' } }).expect(201);
    const data = Buffer.from(JSON.stringify([{ op: 'replace', path: '/code/text', value: 'patched' }])).toString('base64');
    const patchBy = (url: string) => ({ resource: { resourceType: 'Binary', contentType: 'application/json-patch+json', data }, request: { method: 'PATCH', url } });
    // A PUT by id and a conditional delete that resolves to the same resource: refused, nothing written.
    const overlap = await api
      .post('/')
      .set('Content-Type', FHIR)
      .send(tx([{ resource: { resourceType: 'Basic', id: b.id, code: { text: 'put' } }, request: { method: 'PUT', url: `Basic/${b.id}` } }, { request: { method: 'DELETE', url: `Basic?identifier=urn:t|${tag}` } }]))
      .expect(400);
    expect(JSON.stringify(overlap.body)).toMatch(/resolve to the same resource/);
    // A conditional patch and a conditional delete on one resource: refused too.
    await api.post('/').set('Content-Type', FHIR).send(tx([patchBy(`Basic?identifier=urn:t|${tag}`), { request: { method: 'DELETE', url: `Basic?identifier=urn:t|${tag}` } }])).expect(400);
    const still = await api.get(`/Basic/${b.id}`).expect(200);
    expect(still.body.meta.versionId).toBe('1');
    // A conditional patch alone applies to its match; a conditional delete matching nothing is a no-op.
    const ok = await api
      .post('/')
      .set('Content-Type', FHIR)
      .send(tx([patchBy(`Basic?identifier=urn:t|${tag}`), { request: { method: 'DELETE', url: `Basic?identifier=urn:t|none-${tag}` } }]))
      .expect(200);
    expect(ok.body.entry[0].resource.code.text).toBe('patched');
    expect(ok.body.entry[1].response.status).toMatch(/^204/);
    // A conditional patch matching nothing fails the transaction with 404.
    await api.post('/').set('Content-Type', FHIR).send(tx([patchBy(`Basic?identifier=urn:t|none-${tag}`)])).expect(404);
    // A conditional delete that matches deletes that resource.
    await api.post('/').set('Content-Type', FHIR).send(tx([{ request: { method: 'DELETE', url: `Basic?identifier=urn:t|${tag}` } }])).expect(200);
    await api.get(`/Basic/${b.id}`).expect(410);
  });
});
