// _summary=true and _summary=text (https://hl7.org/fhir/R4/search.html#summary) on search (matches and
// included resources), read and vread (http.html#read), and _summary / _elements (#elements) on read,
// vread and history entries (http.html#history), on every available backend, with PHI sealed (the
// default) so that shaping works on the opened resources.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';
type R = Record<string, unknown> & { id: string; meta: { tag?: { code: string }[]; versionId?: string } };
type HistoryBundle = { type: string; total?: number; link: { relation: string; url: string }[]; entry?: { resource?: R; response: { status: string } }[] };
const keys = (r: object) => Object.keys(r).sort();
const subsetted = (r: R) => (r.meta.tag ?? []).some((t) => t.code === 'SUBSETTED');

describe.each(backends())('_summary on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  let patient: string;
  let obs: string;
  beforeAll(async () => {
    t = await startTestServer(backend);
    api = authed(t);
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

  test('read and vread: _elements keeps the named elements with the envelope, SUBSETTED; not with _summary', async () => {
    const el = (await api.get(`/Patient/${patient}?_elements=gender,name`).expect(200)).body as R;
    expect(keys(el)).toEqual(['gender', 'id', 'meta', 'name', 'resourceType']);
    expect(el.name).toEqual([{ family: 'Summarised' }]); // opened from its sealed form, then shaped
    expect(subsetted(el)).toBe(true);
    const v = (await api.get(`/Patient/${patient}/_history/1?_elements=maritalStatus`).expect(200)).body as R;
    expect(keys(v)).toEqual(['id', 'maritalStatus', 'meta', 'resourceType']);
    expect(v.meta.versionId).toBe('1');
    expect(subsetted(v)).toBe(true);
    // a choice element by its name: value[x] keeps valueQuantity (component is not asked for)
    const o = (await api.get(`/Observation/${obs}?_elements=status,component`).expect(200)).body as R;
    expect(keys(o)).toEqual(['component', 'id', 'meta', 'resourceType', 'status']);
    // _summary=false does not shape, so it may go with _elements (as on search)
    expect(keys((await api.get(`/Patient/${patient}?_summary=false&_elements=gender`).expect(200)).body)).toEqual(['gender', 'id', 'meta', 'resourceType']);
    for (const url of [`/Patient/${patient}?_summary=true&_elements=gender`, `/Patient/${patient}/_history/1?_summary=text&_elements=gender`, `/Patient/${patient}?_elements=${encodeURIComponent('name.family')}`, `/Patient/${patient}?_elements=gender&_elements=name`]) {
      const res = await api.get(url).expect(400);
      expect(res.body.resourceType).toBe('OperationOutcome');
    }
  });

  test('read answers empty and unknown _elements as search does', async () => {
    // No element named is malformed (400 everywhere); a name the type does not have selects nothing.
    for (const value of ['', ',,']) {
      await api.get(`/Patient?_id=${patient}&_elements=${value}`).expect(400);
      await api.get(`/Patient/${patient}?_elements=${value}`).expect(400);
      await api.get(`/Patient/${patient}/_history?_elements=${value}`).expect(400);
    }
    for (const value of ['', 'nosuchelement', ',,']) {
      const viaSearch = await api.get(`/Patient?_id=${patient}&_elements=${value}`);
      const viaRead = await api.get(`/Patient/${patient}?_elements=${value}`);
      expect(viaRead.status).toBe(viaSearch.status);
      expect(viaRead.status).toBeLessThan(500);
      if (viaRead.status === 200) expect(keys(viaRead.body)).toEqual(keys(viaSearch.body.entry[0].resource));
    }
  });

  test('history: _summary and _elements shape each entry; deletions stay; links carry them on', async () => {
    const post = await api
      .post('/Patient')
      .set('Content-Type', FHIR)
      .send({ resourceType: 'Patient', text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">H</div>' }, name: [{ family: 'Historic' }], gender: 'male', maritalStatus: { text: 'single' } })
      .expect(201);
    const id = post.body.id as string;
    await api.put(`/Patient/${id}`).set('Content-Type', FHIR).send({ ...post.body, gender: 'other' }).expect(200);
    await api.delete(`/Patient/${id}`).expect(204);

    const sum = (await api.get(`/Patient/${id}/_history?_summary=true`).expect(200)).body as HistoryBundle;
    expect(sum.type).toBe('history');
    expect(sum.total).toBe(3);
    expect(sum.entry!.map((e) => e.response.status)).toEqual(['204', '200', '201']);
    expect(sum.entry![0].resource).toBeUndefined(); // the deletion has no resource to shape
    for (const e of sum.entry!.slice(1)) {
      expect(keys(e.resource!)).toEqual(['gender', 'id', 'meta', 'name', 'resourceType']); // no text, no maritalStatus
      expect(subsetted(e.resource!)).toBe(true);
    }
    expect(sum.entry![1].resource!.gender).toBe('other');
    expect(sum.entry![2].resource!.meta.versionId).toBe('1');

    const text = (await api.get(`/Patient/${id}/_history?_summary=text`).expect(200)).body as HistoryBundle;
    expect(keys(text.entry![1].resource!)).toEqual(['id', 'meta', 'resourceType', 'text']);
    const data = (await api.get(`/Patient/${id}/_history?_summary=data`).expect(200)).body as HistoryBundle;
    expect(keys(data.entry![1].resource!)).toEqual(['gender', 'id', 'maritalStatus', 'meta', 'name', 'resourceType']);
    const whole = (await api.get(`/Patient/${id}/_history?_summary=false`).expect(200)).body as HistoryBundle;
    expect(subsetted(whole.entry![1].resource!)).toBe(false);
    expect(whole.entry![1].resource!.text).toBeDefined();

    const el = (await api.get(`/Patient/${id}/_history?_elements=maritalStatus`).expect(200)).body as HistoryBundle;
    expect(el.entry![0].resource).toBeUndefined();
    expect(keys(el.entry![1].resource!)).toEqual(['id', 'maritalStatus', 'meta', 'resourceType']);
    expect(subsetted(el.entry![2].resource!)).toBe(true);

    // type and system history, paged: the next link keeps the parameter and the next page is shaped too
    const next = (b: HistoryBundle) => b.link.find((l) => l.relation === 'next')?.url;
    const typePage = (await api.get('/Patient/_history?_elements=gender&_count=1').expect(200)).body as HistoryBundle;
    expect(next(typePage)).toContain('_elements=gender');
    expect(typePage.link.find((l) => l.relation === 'self')!.url).toContain('_elements=gender');
    const second = (await api.get(next(typePage)!.slice(t.url.length)).expect(200)).body as HistoryBundle;
    for (const e of second.entry!) if (e.resource) expect(keys(e.resource)).toEqual(['gender', 'id', 'meta', 'resourceType']);
    const sysPage = (await api.get('/_history?_summary=true&_count=1').expect(200)).body as HistoryBundle;
    expect(next(sysPage)).toContain('_summary=true');
    const sysSecond = (await api.get(next(sysPage)!.slice(t.url.length)).expect(200)).body as HistoryBundle;
    for (const e of sysSecond.entry!) if (e.resource) expect(subsetted(e.resource)).toBe(true);
    const instPage = (await api.get(`/Patient/${id}/_history?_summary=text&_count=1`).expect(200)).body as HistoryBundle;
    expect(next(instPage)).toContain('_summary=text');
    const instSecond = (await api.get(next(instPage)!.slice(t.url.length)).expect(200)).body as HistoryBundle;
    expect(keys(instSecond.entry![0].resource!)).toEqual(['id', 'meta', 'resourceType', 'text']);
  });

  test('history: _summary=count on an instance; malformed or combined parameters are a 400 OperationOutcome', async () => {
    const count = (await api.get(`/Patient/${patient}/_history?_summary=count`).expect(200)).body as HistoryBundle;
    expect(count.type).toBe('history');
    expect(count.total).toBe(1);
    expect(count.entry).toBeUndefined();
    await api.get('/Patient/never-was/_history?_summary=count').expect(404);
    for (const url of [
      '/Patient/_history?_summary=count',
      '/_history?_summary=count',
      `/Patient/${patient}/_history?_summary=count&_since=2000-01-01T00:00:00Z`,
      `/Patient/${patient}/_history?_summary=true&_elements=gender`,
      `/Patient/${patient}/_history?_summary=count&_elements=gender`,
      '/Patient/_history?_summary=bogus',
      `/Patient/_history?_elements=${encodeURIComponent('name.family')}`,
      '/_history?_summary=true&_summary=text',
    ]) {
      const res = await api.get(url);
      expect([url, res.status]).toEqual([url, 400]);
      expect(res.body.resourceType).toBe('OperationOutcome');
    }
  });

  test('the CapabilityStatement says _summary=true and text are served', async () => {
    const doc = (await api.get('/metadata').expect(200)).body.rest[0].documentation as string;
    expect(doc).toMatch(/_summary \(true, text, data, count, false/);
    expect(doc).not.toMatch(/Not served:[^.]*_summary/);
  });
});
