// HTTP conformance (https://hl7.org/fhir/R4/http.html, json.html): strict request bodies, no empty
// arrays in responses, OperationOutcome ids, media type synonyms and fhirVersion, If-Match: *, and
// OperationOutcomes for requests the HTTP parser refuses.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { connect } from 'node:net';
import request from 'supertest';
import { backends, startTestServer, type TestServer, authed, tokenFor } from '../support/backends.js';

const FHIR = 'application/fhir+json';

/** Paths of every empty array or object in a JSON value (FHIR JSON allows neither). */
function empties(v: unknown, path = '$', out: string[] = []): string[] {
  if (v === null || typeof v !== 'object') return out;
  const keys = Object.keys(v);
  if (keys.length === 0) out.push(path);
  for (const k of keys) empties((v as Record<string, unknown>)[k], `${path}.${k}`, out);
  return out;
}

/** Sends raw bytes and collects the whole answer until the server closes the connection. */
function raw(url: string, bytes: Buffer | string): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const s = connect(Number(u.port), u.hostname, () => s.write(bytes));
    s.on('data', (c) => chunks.push(c));
    s.on('error', reject);
    s.on('close', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}

function parseRaw(text: string): { status: number; headers: Record<string, string>; body: Record<string, unknown> } {
  const [head, body] = [text.slice(0, text.indexOf('\r\n\r\n')), text.slice(text.indexOf('\r\n\r\n') + 4)];
  const [statusLine, ...lines] = head.split('\r\n');
  const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
  return { status: Number(statusLine.split(' ')[1]), headers, body: JSON.parse(body) as Record<string, unknown> };
}

describe.each(backends())('HTTP conformance on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  beforeAll(async () => {
    t = await startTestServer(backend);
    api = authed(t);
  });
  afterAll(async () => {
    await t.close();
  });

  const newPatient = async (family = 'Conformance') =>
    (await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', name: [{ family }] }).expect(201)).body.id as string;

  describe('request bodies', () => {
    // superagent would serialize a Buffer as JSON ({type: 'Buffer', ...}); these bytes go out as they are.
    const bytes = (r: request.Test, body: Buffer) => r.serialize((x: unknown) => x as string).send(body);
    const sendRaw = (path: string, body: Buffer, type = FHIR) => bytes(api.post(path).set('Content-Type', type), body);

    test('invalid UTF-8 is a 400 naming the byte offset, and nothing is stored', async () => {
      const head = Buffer.from('{"resourceType":"Patient","name":[{"family":"ConfUtf');
      const res = await sendRaw('/Patient', Buffer.concat([head, Buffer.from([0xc3, 0x28]), Buffer.from('"}]}')])).expect(400);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(res.body.id).toBe('invalid-json');
      expect(res.body.issue[0].diagnostics).toContain(`byte offset ${head.length}`);
      const found = await api.get('/Patient?family=ConfUtf').expect(200);
      expect(found.body.total).toBe(0);
    });

    test('duplicate member names are a 400 naming the path, not "last one wins"', async () => {
      const res = await sendRaw('/Patient', Buffer.from('{"resourceType":"Patient","name":[{"family":"ConfDupA","family":"ConfDupB"}]}')).expect(400);
      expect(res.body.issue[0].diagnostics).toContain('Patient.name[0]');
      expect((await api.get('/Patient?family=ConfDupB').expect(200)).body.total).toBe(0);
    });

    test('NUL and lone surrogates are a 400 naming the JSON path on create, update, transaction, patch and forms, never a 500', async () => {
      const id = await newPatient();
      const nul = await sendRaw('/Patient', Buffer.from('{"resourceType":"Patient","name":[{"family":"a\\u0000b"}]}')).expect(400);
      expect(nul.body.issue[0].diagnostics).toContain('Patient.name[0].family');
      const sur = await bytes(api.put(`/Patient/${id}`).set('Content-Type', FHIR), Buffer.from(`{"resourceType":"Patient","id":"${id}","name":[{"given":["\\ud800"]}]}`)).expect(400);
      expect(sur.body.issue[0].diagnostics).toContain('Patient.name[0].given[0]');
      const tx = await sendRaw(
        '/',
        Buffer.from('{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"POST","url":"Patient"},"resource":{"resourceType":"Patient","gender":"\\udfff"}}]}'),
      ).expect(400);
      expect(tx.body.issue[0].diagnostics).toContain('Bundle.entry[0].resource.gender');
      const patched = await bytes(api.patch(`/Patient/${id}`).set('Content-Type', 'application/json-patch+json'), Buffer.from('[{"op":"add","path":"/gender","value":"x\\u0000"}]')).expect(400);
      expect(patched.body.issue[0].diagnostics).toContain('$[0].value');
      // The same patch wrapped in a Binary inside a batch never passes the body reader as JSON text.
      const data = Buffer.from(JSON.stringify([{ op: 'add', path: '/birthDate', value: '\u0000' }])).toString('base64');
      const batch = await api
        .post('/')
        .set('Content-Type', FHIR)
        .send({ resourceType: 'Bundle', type: 'batch', entry: [{ request: { method: 'PATCH', url: `Patient/${id}` }, resource: { resourceType: 'Binary', contentType: 'application/json-patch+json', data } }] })
        .expect(200);
      expect(batch.body.entry[0].response.status).toMatch(/^400/);
      await api.post('/Patient/_search').set('Content-Type', 'application/x-www-form-urlencoded').send('family=a%00b').expect(400);
      expect((await api.get(`/Patient/${id}`).expect(200)).body.meta.versionId).toBe('1');
    });

    test.each([
      ['"parameter": 1', { resourceType: 'Parameters', parameter: 1 }],
      ['[null]', { resourceType: 'Parameters', parameter: [null] }],
      ['[1]', { resourceType: 'Parameters', parameter: [1] }],
      ['a parameter without name', { resourceType: 'Parameters', parameter: [{ valueCode: 'create' }] }],
      ['a resource that is not an object', { resourceType: 'Parameters', parameter: [{ name: 'resource', resource: 'Patient' }] }],
      ['a resource that is an array', { resourceType: 'Parameters', parameter: [{ name: 'resource', resource: [] }] }],
      ['a resource that is null', { resourceType: 'Parameters', parameter: [{ name: 'resource', resource: null }] }],
      ['a mode that is an object', { resourceType: 'Parameters', parameter: [{ name: 'mode', valueCode: { x: 1 } }] }],
    ])('$validate with %s is a 400 OperationOutcome', async (_label, body) => {
      const res = await api.post('/Patient/$validate').set('Content-Type', FHIR).send(body).expect(400);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(res.body.id).toBe('invalid-request');
    });
  });

  describe('no empty arrays or objects in any response', () => {
    test('a searchset with no match omits entry; includes, history, batch and transaction alike', async () => {
      const id = await newPatient('ConfEmpty');
      const shapes = [
        await api.get('/Patient?family=NoSuchFamilyAnywhere').expect(200),
        await api.get(`/Patient?_id=${id}&_include=Patient:organization&_revinclude=Observation:subject`).expect(200),
        await api.get('/Patient?family=NoSuchFamilyAnywhere&_summary=count').expect(200),
        await api.get('/Basic/_history').expect(200),
        await api.get(`/Observation?subject=Patient/${id}&_include=Observation:subject`).expect(200),
        await api.post('/Patient/_search').set('Content-Type', 'application/x-www-form-urlencoded').send('family=NoSuchFamilyAnywhere').expect(200),
        await api.post('/').set('Content-Type', FHIR).send({ resourceType: 'Bundle', type: 'batch' }).expect(200),
        await api.post('/').set('Content-Type', FHIR).send({ resourceType: 'Bundle', type: 'transaction' }).expect(200),
        await api.post('/').set('Content-Type', FHIR).send({ resourceType: 'Bundle', type: 'batch', entry: [{ request: { method: 'GET', url: 'Patient?family=NoSuchFamilyAnywhere' } }] }).expect(200),
        await api.get('/metadata').expect(200),
        await api.get('/Patient/no-such-id').expect(404),
      ];
      for (const res of shapes) expect(empties(JSON.parse(res.text))).toEqual([]);
      expect(shapes[0].body.total).toBe(0);
      expect(shapes[0].body.entry).toBeUndefined();
      expect(shapes[0].text).not.toContain('"entry"');
      expect(shapes[6].body.type).toBe('batch-response');
      // The nested search result inside a batch response is pruned too.
      expect(shapes[8].body.entry[0].resource.entry).toBeUndefined();
      expect(shapes[1].body.entry).toHaveLength(1);
      // _pretty output follows the same rule.
      const pretty = await api.get('/Patient?family=NoSuchFamilyAnywhere&_pretty=true').expect(200);
      expect(pretty.text).not.toMatch(/\[\s*\]/);
      expect(pretty.text).toContain('\n  ');
    });
  });

  describe('OperationOutcome ids', () => {
    test('each error carries its stable id; the ids clients read back match the status', async () => {
      const id = await newPatient();
      const cases: [request.Test, number, string][] = [
        [api.get('/Patient/does-not-exist'), 404, 'not-found'],
        [api.get('/NotAType/1'), 404, 'not-found'],
        [request(t.url).get('/Patient'), 401, 'unauthorized'],
        [api.post('/Patient').set('Content-Type', FHIR).send('{'), 400, 'invalid-json'],
        [api.put(`/Patient/${id}`).set('Content-Type', FHIR).set('If-Match', 'W/"7"').send({ resourceType: 'Patient', id }), 412, 'precondition-failed'],
        [api.put('/Patient'), 405, 'method-not-allowed'],
        [api.get('/Patient').set('Accept', 'application/fhir+xml'), 406, 'not-acceptable'],
        [api.post('/Patient').set('Content-Type', 'text/plain').send('x'), 415, 'unsupported-media-type'],
        [api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', gender: 'sometimes' }), 422, 'business-rule'],
      ];
      for (const [req, status, outcomeId] of cases) {
        const res = await req;
        expect([res.status, res.body.resourceType, res.body.id]).toEqual([status, 'OperationOutcome', outcomeId]);
      }
      await api.delete(`/Patient/${id}`).expect(204);
      const gone = await api.get(`/Patient/${id}`).expect(410);
      expect(gone.body.id).toBe('gone');
      const narrow = await tokenFor(t.url, { scope: 'system/Observation.rs' });
      const forbidden = await request(t.url).post('/Patient').set('Authorization', `Bearer ${narrow}`).set('Content-Type', FHIR).send({ resourceType: 'Patient' });
      expect([forbidden.status, forbidden.body.id]).toEqual([403, 'forbidden']);
      // A failed batch entry's outcome carries the id of its status.
      const batch = await api.post('/').set('Content-Type', FHIR).send({ resourceType: 'Bundle', type: 'batch', entry: [{ request: { method: 'GET', url: 'Patient/missing-one' } }] }).expect(200);
      expect(batch.body.entry[0].response.status).toMatch(/^404/);
      expect(batch.body.entry[0].response.outcome.id).toBe('not-found');
    });
  });

  describe('media types', () => {
    test('application/json+fhir (DSTU2 name) is accepted on Content-Type, Accept and _format; answers stay application/fhir+json', async () => {
      const created = await api
        .post('/Patient')
        .set('Content-Type', 'application/json+fhir; charset=utf-8')
        .set('Accept', 'application/json+fhir')
        .send(JSON.stringify({ resourceType: 'Patient', name: [{ family: 'ConfDstu2' }] }))
        .expect(201);
      expect(created.headers['content-type']).toBe('application/fhir+json; charset=utf-8');
      const read = await api.get(`/Patient/${created.body.id}`).query({ _format: 'application/json+fhir' }).expect(200);
      expect(read.headers['content-type']).toBe('application/fhir+json; charset=utf-8');
      await api.get(`/Patient/${created.body.id}?_format=json`).expect(200);
      const put = await api
        .put(`/Patient/${created.body.id}`)
        .set('Content-Type', 'application/json+fhir')
        .send(JSON.stringify({ resourceType: 'Patient', id: created.body.id, active: true }))
        .expect(200);
      expect(put.body.active).toBe(true);
    });

    test('a fhirVersion other than 4.0 is 406 on Accept and 415 on Content-Type', async () => {
      const a = await api.get('/Patient?family=x').set('Accept', 'application/fhir+json; fhirVersion=3.0').expect(406);
      expect(a.body.resourceType).toBe('OperationOutcome');
      expect(a.body.issue[0].diagnostics).toContain('fhirVersion 3.0');
      await api.get('/metadata').set('Accept', 'application/fhir+json; fhirVersion=4.0').expect(200);
      await api.get('/metadata').set('Accept', 'application/fhir+json; fhirVersion=4.0.1').expect(200);
      const c = await api.post('/Patient').set('Content-Type', 'application/fhir+json; fhirVersion=5.0').send(JSON.stringify({ resourceType: 'Patient' })).expect(415);
      expect(c.body.id).toBe('unsupported-media-type');
      await api.post('/Patient').set('Content-Type', 'application/fhir+json; fhirVersion=4.0').send(JSON.stringify({ resourceType: 'Patient' })).expect(201);
    });
  });

  describe('If-Match', () => {
    test('* matches any current version on update, patch and delete, and fails (412) where there is none', async () => {
      const id = await newPatient();
      const upd = await api.put(`/Patient/${id}`).set('Content-Type', FHIR).set('If-Match', '*').send({ resourceType: 'Patient', id, active: true }).expect(200);
      expect(upd.headers.etag).toBe('W/"2"');
      await api.patch(`/Patient/${id}`).set('Content-Type', 'application/json-patch+json').set('If-Match', '*').send([{ op: 'add', path: '/gender', value: 'other' }]).expect(200);
      await api.put(`/Patient/${id}`).set('Content-Type', FHIR).set('If-Match', 'W/"3"').send({ resourceType: 'Patient', id, active: false }).expect(200);
      await api.put(`/Patient/${id}`).set('Content-Type', FHIR).set('If-Match', 'W/"3"').send({ resourceType: 'Patient', id }).expect(412);
      const missing = await api.put('/Patient/conf-ifmatch-missing').set('Content-Type', FHIR).set('If-Match', '*').send({ resourceType: 'Patient', id: 'conf-ifmatch-missing' }).expect(412);
      expect(missing.body.id).toBe('precondition-failed');
      await api.get('/Patient/conf-ifmatch-missing').expect(404);
      await api.delete(`/Patient/${id}`).set('If-Match', '*').expect(204);
      // Deleted: no current representation any more.
      await api.delete(`/Patient/${id}`).set('If-Match', '*').expect(412);
      await api.put(`/Patient/${id}`).set('Content-Type', FHIR).set('If-Match', '*').send({ resourceType: 'Patient', id }).expect(412);
      await api.put(`/Patient/${id}`).set('Content-Type', FHIR).set('If-Match', 'W/*').send({ resourceType: 'Patient', id }).expect(400);
    });

    test('* in transaction and batch entries', async () => {
      const id = await newPatient();
      const ok = await api
        .post('/')
        .set('Content-Type', FHIR)
        .send({ resourceType: 'Bundle', type: 'transaction', entry: [{ request: { method: 'PUT', url: `Patient/${id}`, ifMatch: '*' }, resource: { resourceType: 'Patient', id, active: true } }] })
        .expect(200);
      expect(ok.body.entry[0].response.status).toMatch(/^200/);
      const fail = await api
        .post('/')
        .set('Content-Type', FHIR)
        .send({
          resourceType: 'Bundle',
          type: 'transaction',
          entry: [{ request: { method: 'PUT', url: 'Patient/conf-tx-missing', ifMatch: '*' }, resource: { resourceType: 'Patient', id: 'conf-tx-missing' } }],
        });
      expect([fail.status, fail.body.id]).toEqual([412, 'precondition-failed']);
      const batch = await api
        .post('/')
        .set('Content-Type', FHIR)
        .send({
          resourceType: 'Bundle',
          type: 'batch',
          entry: [
            { request: { method: 'DELETE', url: `Patient/${id}`, ifMatch: '*' } },
            { request: { method: 'PUT', url: 'Patient/conf-batch-missing', ifMatch: '*' }, resource: { resourceType: 'Patient', id: 'conf-batch-missing' } },
          ],
        })
        .expect(200);
      expect(batch.body.entry.map((e: { response: { status: string } }) => e.response.status.slice(0, 3))).toEqual(['204', '412']);
    });
  });

  describe('requests the HTTP parser refuses', () => {
    test('a 20 KB URL is a 414 OperationOutcome and the connection closes', async () => {
      const text = await raw(t.url, `GET /Patient?family=${'a'.repeat(20 * 1024)} HTTP/1.1\r\nHost: x\r\n\r\n`);
      const r = parseRaw(text);
      expect(r.status).toBe(414);
      expect(r.headers['content-type']).toBe('application/fhir+json; charset=utf-8');
      expect(r.headers.connection).toBe('close');
      expect(r.body).toMatchObject({ resourceType: 'OperationOutcome', id: 'uri-too-long', issue: [{ severity: 'error', code: 'too-long' }] });
      expect(String((r.body.issue as { diagnostics: string }[])[0].diagnostics)).toContain('URL');
    });

    test('a 20 KB header is a 431 OperationOutcome and the connection closes', async () => {
      const text = await raw(t.url, `GET /metadata HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(20 * 1024)}\r\n\r\n`);
      const r = parseRaw(text);
      expect(r.status).toBe(431);
      expect(r.headers.connection).toBe('close');
      expect(r.body).toMatchObject({ resourceType: 'OperationOutcome', id: 'headers-too-large', issue: [{ code: 'too-long' }] });
      // The server keeps serving.
      await request(t.url).get('/metadata').expect(200);
    });

    test('a malformed request line is a 400 OperationOutcome', async () => {
      const r = parseRaw(await raw(t.url, 'GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n'));
      expect(r.status).toBe(400);
      expect(r.body).toMatchObject({ resourceType: 'OperationOutcome', id: 'invalid-request' });
    });
  });
});
