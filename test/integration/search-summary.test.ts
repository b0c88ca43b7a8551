// _summary=true and _summary=text (https://hl7.org/fhir/R4/search.html#summary) on search (matches and
// included resources), read and vread (http.html#read), on every available backend, with PHI sealed
// (the default) so that shaping works on the opened resources.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { backends, startTestServer, type TestServer } from '../support/backends.js';

const FHIR = 'application/fhir+json';
type R = Record<string, unknown> & { id: string; meta: { tag?: { code: string }[]; versionId?: string } };
const keys = (r: object) => Object.keys(r).sort();
const subsetted = (r: R) => (r.meta.tag ?? []).some((t) => t.code === 'SUBSETTED');

describe.each(backends())('_summary on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  let patient: string;
  let obs: string;
  beforeAll(async () => {
    t = await startTestServer(backend);
    api = request(t.url);
    const post = async (r: Record<string, unknown>) => (await api.post(`/${r.resourceType}`).set('Content-Type', FHIR).send(r).expect(201)).body.id as string;
    patient = await post({
      resourceType: 'Patient',
      text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">Summary Person</div>' },
      name: [{ family: 'Summarised' }],
      gender: 'female',
      maritalStatus: { text: 'married' },
      contact: [{ name: { family: 'Contact' } }],
    });
    obs = await post({
      resourceType: 'Observation',
      status: 'final',
      category: [{ text: 'vital-signs' }],
      code: { coding: [{ system: 'http://loinc.org', code: '85354-9' }] },
      subject: { reference: `Patient/${patient}` },
      interpretation: [{ text: 'high' }],
      component: [{ code: { text: 'systolic' }, valueQuantity: { value: 107, unit: 'mmHg' }, interpretation: [{ text: 'high' }] }],
    });
  });
  afterAll(async () => {
    await t.close();
  });

  test('search: true keeps the summary elements of matches and includes; text the narrative and mandatory ones', async () => {
    const res = await api.get(`/Observation?_id=${obs}&_include=Observation:subject&_summary=true`).set('Prefer', 'handling=strict').expect(200);
    const [match, inc] = res.body.entry as { search: { mode: string }; resource: R }[];
    expect(match.search.mode).toBe('match');
    expect(keys(match.resource)).toEqual(['code', 'component', 'id', 'meta', 'resourceType', 'status', 'subject']);
    expect(match.resource.component).toEqual([{ code: { text: 'systolic' }, valueQuantity: { value: 107, unit: 'mmHg' } }]);
    expect(subsetted(match.resource)).toBe(true);
    expect(inc.search.mode).toBe('include');
    expect(keys(inc.resource)).toEqual(['gender', 'id', 'meta', 'name', 'resourceType']);
    expect(inc.resource.name).toEqual([{ family: 'Summarised' }]); // opened from its sealed form, then shaped
    const text = await api.get(`/Observation?_id=${obs}&_summary=text`).expect(200);
    expect(keys(text.body.entry[0].resource)).toEqual(['code', 'id', 'meta', 'resourceType', 'status']);
    const ptext = await api.get(`/Patient?_id=${patient}&_summary=text`).expect(200);
    expect(keys(ptext.body.entry[0].resource)).toEqual(['id', 'meta', 'resourceType', 'text']);
    // a next link carries _summary on
    const paged = await api.get(`/Observation?_summary=true&_count=1`).expect(200);
    expect(paged.body.link.find((l: { relation: string }) => l.relation === 'self').url).toContain('_summary=true');
    await api.get(`/Observation?_id=${obs}&_summary=true&_elements=status`).expect(400);
  });

  test('read and vread: _summary=true|text|data; count is refused; no _summary is the whole resource', async () => {
    const whole = (await api.get(`/Patient/${patient}`).expect(200)).body as R;
    expect(keys(whole)).toEqual(['contact', 'gender', 'id', 'maritalStatus', 'meta', 'name', 'resourceType', 'text']);
    expect(subsetted(whole)).toBe(false);
    const sum = (await api.get(`/Patient/${patient}?_summary=true`).expect(200)).body as R;
    expect(keys(sum)).toEqual(['gender', 'id', 'meta', 'name', 'resourceType']);
    expect(subsetted(sum)).toBe(true);
    const v = (await api.get(`/Patient/${patient}/_history/1?_summary=text`).expect(200)).body as R;
    expect(keys(v)).toEqual(['id', 'meta', 'resourceType', 'text']);
    expect(v.meta.versionId).toBe('1');
    const data = (await api.get(`/Patient/${patient}?_summary=data`).expect(200)).body as R;
    expect(data.text).toBeUndefined();
    expect(data.contact).toBeDefined();
    await api.get(`/Patient/${patient}?_summary=count`).expect(400);
    await api.get(`/Patient/${patient}?_summary=maybe`).expect(400);
    await api.get(`/Patient/${patient}?_summary=true&_summary=text`).expect(400);
  });

  test('the CapabilityStatement says _summary=true and text are served', async () => {
    const doc = (await api.get('/metadata').expect(200)).body.rest[0].documentation as string;
    expect(doc).toMatch(/_summary \(true, text, data, count, false/);
    expect(doc).not.toMatch(/Not served:[^.]*_summary/);
  });
});
