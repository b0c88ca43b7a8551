// $validate (resource-operation-validate.html) and the 422 path of writes: a validator's errors
// reject the write and list every issue; nothing is stored.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import type { Issue } from '../../src/fhir/errors.js';
import { startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';

describe('$validate and write-time validation', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer('embedded');
  });
  afterAll(async () => {
    await t.close();
  });

  test('type-level $validate answers 200 with an OperationOutcome and stores nothing', async () => {
    const ok = await authed(t).post('/Patient/$validate').set('Content-Type', FHIR).send({ resourceType: 'Patient', active: true }).expect(200);
    expect(ok.body.resourceType).toBe('OperationOutcome');
    // A valid Patient: no errors (dom-6, "should have narrative", is a warning).
    expect(ok.body.issue.some((i: { severity: string }) => i.severity === 'error' || i.severity === 'fatal')).toBe(false);
    const wrong = await authed(t).post('/Patient/$validate').set('Content-Type', FHIR).send({ resourceType: 'Observation', status: 'final' }).expect(200);
    expect(wrong.body.issue.some((i: { severity: string }) => i.severity === 'error')).toBe(true);
    const hist = await authed(t).get('/Patient/_history').expect(200);
    // No versions: FHIR JSON has no empty arrays, so the Bundle has no entry at all.
    expect(hist.body.total ?? 0).toBe(0);
    expect(hist.body.entry).toBeUndefined();
  });

  test('Parameters with mode=update checks the id; mode=delete checks existence', async () => {
    const body = (mode: string, resource?: unknown) => ({
      resourceType: 'Parameters',
      parameter: [{ name: 'mode', valueCode: mode }, ...(resource ? [{ name: 'resource', resource }] : [])],
    });
    const upd = await authed(t).post('/Patient/abc/$validate').set('Content-Type', FHIR).send(body('update', { resourceType: 'Patient', id: 'xyz' })).expect(200);
    expect(upd.body.issue.some((i: { severity: string }) => i.severity === 'error')).toBe(true);
    const del = await authed(t).post('/Patient/nope/$validate').set('Content-Type', FHIR).send(body('delete')).expect(200);
    expect(del.body.issue[0].code).toBe('not-found');
    await authed(t).post('/Patient/$validate').set('Content-Type', FHIR).send(body('sideways', { resourceType: 'Patient' })).expect(400);
    await authed(t).get('/Patient/$validate').expect(405);
  });

  test('validator errors reject a write with 422 listing every issue; warnings come back on request', async () => {
    const original = t.svc.validator;
    const issues: Issue[] = [
      { severity: 'error', code: 'structure', diagnostics: 'unknown element', expression: ['Patient.foo'] },
      { severity: 'error', code: 'invariant', diagnostics: 'pat-1 failed', expression: ['Patient.contact[0]'] },
    ];
    t.svc.validator = { validate: () => issues };
    try {
      const res = await authed(t).post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient' }).expect(422);
      expect(res.body.issue.map((i: { code: string }) => i.code)).toEqual(['invalid', 'structure', 'invariant']);
      expect(res.body.issue[2].expression).toEqual(['Patient.contact[0]']);
      t.svc.validator = { validate: () => [{ severity: 'warning', code: 'value', diagnostics: 'odd but allowed', expression: ['Patient.gender'] }] };
      const warn = await authed(t).post('/Patient').set('Content-Type', FHIR).set('Prefer', 'return=OperationOutcome').send({ resourceType: 'Patient' }).expect(201);
      expect(warn.body.issue.some((i: { severity: string }) => i.severity === 'warning')).toBe(true);
    } finally {
      t.svc.validator = original;
    }
    const hist = await authed(t).get('/Patient/_history').expect(200);
    expect(hist.body.entry).toHaveLength(1);
  });
});
