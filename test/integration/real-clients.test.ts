// Real FHIR clients against Vesta (issue 14, conformance): fhir-kit-client, fhirclient (SMART JS
// client, node build), @medplum/core and fhir.js each run create, read, a search with no match, and
// the error cases (404, 410, 412 on a stale If-Match, 400 and 422 on invalid resources), and each
// reports the right status through its own error shape or helpers.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createRequire } from 'node:module';
import { Client as FhirKitClient } from 'fhir-kit-client';
import FHIR from 'fhirclient';
import { MedplumClient, OperationOutcomeError, getStatus, isGone, isNotFound, isOk, isOperationOutcome, normalizeErrorString } from '@medplum/core';
import type { OperationOutcome } from 'fhir/r4.js';
import { startTestServer, tokenFor, type TestServer } from '../support/backends.js';

const require = createRequire(import.meta.url);
// fhir.js's fetch adapter (the default one needs the retired `request` package); CommonJS only.
const fhirJs = require('fhir.js/src/adapters/native') as (cfg: Record<string, unknown>) => Record<string, (args: Record<string, unknown>) => Promise<{ status: number; data: Record<string, unknown> }>>;

/** A Patient whose gender is not in the required value set: a 422 from validation. */
const INVALID = { resourceType: 'Patient', gender: 'sometimes' };

/** Runs `fn`, expecting it to fail, and returns what it threw. */
async function failure(fn: () => Promise<unknown>): Promise<unknown> {
  try {
    await fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected the call to fail');
}

describe('real FHIR clients on embedded PostgreSQL', () => {
  let t: TestServer;
  let token: string;
  beforeAll(async () => {
    t = await startTestServer('embedded');
    token = await tokenFor(t.url);
  });
  afterAll(async () => {
    await t.close();
  });

  test('fhir-kit-client: statuses through error.response.status and the OperationOutcome in error.response.data', async () => {
    const client = new FhirKitClient({ baseUrl: t.url, bearerToken: token });
    const created = (await client.create({ resourceType: 'Patient', body: { resourceType: 'Patient', name: [{ family: 'FhirKit' }] } })) as unknown as { id: string };
    expect(((await client.read({ resourceType: 'Patient', id: created.id })) as unknown as { id: string }).id).toBe(created.id);
    const none = (await client.search({ resourceType: 'Patient', searchParams: { family: 'NoSuchFamilyFhirKit' } })) as unknown as Record<string, unknown>;
    expect([none.total, 'entry' in none]).toEqual([0, false]);

    type KitError = { response: { status: number; data: OperationOutcome } };
    const status = async (fn: () => Promise<unknown>) => {
      const e = (await failure(fn)) as KitError;
      return [e.response.status, e.response.data.id];
    };
    expect(await status(() => client.read({ resourceType: 'Patient', id: 'missing-fhirkit' }))).toEqual([404, 'not-found']);
    await client.update({ resourceType: 'Patient', id: created.id, body: { resourceType: 'Patient', id: created.id, active: true } });
    expect(await status(() => client.update({ resourceType: 'Patient', id: created.id, body: { resourceType: 'Patient', id: created.id }, options: { headers: { 'If-Match': 'W/"1"' } } }))).toEqual([
      412,
      'precondition-failed',
    ]);
    expect(await status(() => client.create({ resourceType: 'Patient', body: INVALID }))).toEqual([422, 'business-rule']);
    expect(await status(() => client.create({ resourceType: 'Patient', body: { resourceType: 'Observation' } }))).toEqual([400, 'invalid-resource']);
    await client.delete({ resourceType: 'Patient', id: created.id });
    expect(await status(() => client.read({ resourceType: 'Patient', id: created.id }))).toEqual([410, 'gone']);
  });

  test('fhirclient (SMART JS client, node build): statuses through HttpError.status', async () => {
    // The node entry wants the incoming request and response of a SMART launch; a client built from a
    // known token response needs neither.
    const client = FHIR({ url: '/', headers: {}, method: 'GET' } as never, {} as never).client({ serverUrl: t.url, tokenResponse: { access_token: token } });
    const created = (await client.create({ resourceType: 'Patient', name: [{ family: 'FhirClient' }] })) as { id: string };
    expect(((await client.request(`Patient/${created.id}`)) as { id: string }).id).toBe(created.id);
    const none = (await client.request('Patient?family=NoSuchFamilyFhirClient')) as Record<string, unknown>;
    expect([none.total, 'entry' in none]).toEqual([0, false]);

    // HttpError has already read the body: it appends the OperationOutcome to its message.
    type HttpError = { name: string; status: number; message: string };
    const status = async (fn: () => Promise<unknown>) => {
      const e = (await failure(fn)) as HttpError;
      expect(e.name).toBe('HttpError');
      const outcome = JSON.parse(e.message.slice(e.message.indexOf('{'))) as OperationOutcome;
      return [e.status, outcome.id];
    };
    expect(await status(() => client.request('Patient/missing-fhirclient'))).toEqual([404, 'not-found']);
    await client.update({ resourceType: 'Patient', id: created.id, active: true });
    expect(
      await status(() => client.update({ resourceType: 'Patient', id: created.id }, { headers: { 'If-Match': 'W/"1"' } })),
    ).toEqual([412, 'precondition-failed']);
    expect(await status(() => client.create(INVALID))).toEqual([422, 'business-rule']);
    expect(await status(() => client.request({ url: 'Patient', method: 'POST', body: JSON.stringify({ resourceType: 'Observation' }), headers: { 'Content-Type': 'application/fhir+json' } }))).toEqual([
      400,
      'invalid-resource',
    ]);
    await client.delete(`Patient/${created.id}`);
    expect(await status(() => client.request(`Patient/${created.id}`))).toEqual([410, 'gone']);
  });

  test('@medplum/core: getStatus, isNotFound, isGone and normalizeErrorString read the statuses from OperationOutcome.id', async () => {
    // fhirUrlPath '' puts the FHIR base at the server root, as Vesta serves it; no cache, so reads hit the server.
    const medplum = new MedplumClient({ baseUrl: `${t.url}/`, fhirUrlPath: '', fetch: (url: string, init: RequestInit) => fetch(url, init), cacheTime: 0 });
    medplum.setAccessToken(token);
    const created = await medplum.createResource({ resourceType: 'Patient', name: [{ family: 'Medplum' }] });
    expect((await medplum.readResource('Patient', created.id)).id).toBe(created.id);
    const none = await medplum.search('Patient', 'family=NoSuchFamilyMedplum');
    expect([none.total, 'entry' in none]).toEqual([0, false]);

    const outcome = async (fn: () => Promise<unknown>): Promise<OperationOutcome> => {
      const e = await failure(fn);
      expect(e).toBeInstanceOf(OperationOutcomeError);
      const o = (e as OperationOutcomeError).outcome;
      expect(isOperationOutcome(o)).toBe(true);
      expect(isOk(o)).toBe(false);
      return o;
    };
    const missing = await outcome(() => medplum.readResource('Patient', 'missing-medplum'));
    expect([getStatus(missing), isNotFound(missing)]).toEqual([404, true]);
    expect(normalizeErrorString(missing)).toContain('Patient/missing-medplum');

    await medplum.updateResource({ resourceType: 'Patient', id: created.id, active: true });
    const stale = await outcome(() => medplum.updateResource({ resourceType: 'Patient', id: created.id }, { headers: { 'If-Match': 'W/"1"' } }));
    expect(getStatus(stale)).toBe(412);

    // A resource of the wrong type for the URL: 400, which Medplum's getStatus reports as 400.
    const wrongType = await outcome(() => medplum.post(medplum.fhirUrl('Patient'), { resourceType: 'Observation' }));
    expect([getStatus(wrongType), wrongType.id]).toEqual([400, 'invalid-resource']);
    // 422: Medplum's id for it is 'business-rule', which Vesta uses, so getStatus reports 422.
    const unprocessable = await outcome(() => medplum.createResource(INVALID as never));
    expect([unprocessable.id, getStatus(unprocessable)]).toEqual(['business-rule', 422]);

    await medplum.deleteResource('Patient', created.id);
    const gone = await outcome(() => medplum.readResource('Patient', created.id));
    expect([getStatus(gone), isGone(gone)]).toEqual([410, true]);
  });

  test('fhir.js (fetch adapter): statuses through the rejected response.status', async () => {
    // An older client: it sends the DSTU2 media type application/json+fhir, which Vesta accepts.
    const client = fhirJs({ baseUrl: t.url, auth: { bearer: token }, headers: { Accept: 'application/json+fhir', 'Content-Type': 'application/json+fhir' } });
    const created = await client.create({ resource: { resourceType: 'Patient', name: [{ family: 'FhirJs' }] } });
    expect(created.status).toBe(201);
    const id = created.data.id as string;
    expect((await client.read({ type: 'Patient', id })).data.id).toBe(id);
    const none = await client.search({ type: 'Patient', query: { family: 'NoSuchFamilyFhirJs' } });
    expect([none.data.total, 'entry' in none.data]).toEqual([0, false]);

    type Rejected = { status: number; error: { json(): Promise<OperationOutcome> } };
    const status = async (fn: () => Promise<unknown>) => {
      const e = (await failure(fn)) as Rejected;
      return [e.status, (await e.error.json()).id];
    };
    expect(await status(() => client.read({ type: 'Patient', id: 'missing-fhirjs' }))).toEqual([404, 'not-found']);
    await client.update({ resource: { resourceType: 'Patient', id, active: true } });
    expect(await status(() => client.update({ resource: { resourceType: 'Patient', id }, headers: { 'If-Match': 'W/"1"' } }))).toEqual([412, 'precondition-failed']);
    expect(await status(() => client.create({ resource: INVALID }))).toEqual([422, 'business-rule']);
    expect(await status(() => client.create({ type: 'Patient', resource: { resourceType: 'Observation' } }))).toEqual([400, 'invalid-resource']);
    await client.delete({ type: 'Patient', id });
    expect(await status(() => client.read({ type: 'Patient', id }))).toEqual([410, 'gone']);
  });
});
