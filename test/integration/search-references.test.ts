// Reference and uri search, the common parameters, chaining, _has and _include/_revinclude
// (https://hl7.org/fhir/R4/search.html#reference, #uri, #all, #chaining, #has, #include), on every
// available backend. Each test owns its data through a unique _tag carried by every query.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const q = encodeURIComponent;

interface Entry {
  search: { mode: string };
  resource: { resourceType: string; id: string; issue?: unknown[] };
}

describe.each(backends())('reference search, chains, _has and includes on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  beforeAll(async () => {
    t = await startTestServer(backend, { PHI_ENCRYPTION: 'off' });
    api = authed(t);
  });
  afterAll(async () => {
    await t.close();
  });

  /** Creates resources in order (later ones may name earlier ones as {{label}}); returns ids and finders. */
  async function fixture(items: [string, Record<string, unknown>][]) {
    const tag = randomUUID();
    const ids: Record<string, string> = {};
    for (const [label, r] of items) {
      const body = JSON.parse(JSON.stringify(r).replace(/\{\{(\w+)\}\}/g, (_m, l: string) => ids[l]));
      const meta = { ...(body.meta ?? {}), tag: [{ system: 'urn:vesta:test', code: tag }] };
      const res = await api.post(`/${body.resourceType}`).set('Content-Type', FHIR).send({ ...body, meta }).expect(201);
      ids[label] = res.body.id;
    }
    const label = Object.fromEntries(Object.entries(ids).map(([k, v]) => [v, k]));
    const get = async (type: string, query: string) => {
      const res = await api.get(`/${type}?${query}&_tag=${q(`urn:vesta:test|${tag}`)}&_count=100`).set('Prefer', 'handling=strict');
      if (res.status !== 200) throw new Error(`${type}?${query}: ${res.status} ${JSON.stringify(res.body.issue)}`);
      return (res.body.entry ?? []) as Entry[];
    };
    const find = async (type: string, query: string) =>
      (await get(type, query)).filter((e) => e.search.mode === 'match').map((e) => label[e.resource.id] ?? e.resource.id).sort();
    return { ids, get, find, label };
  }

  test('reference: id, Type/id, absolute URL on this server, :[type], :identifier, :missing, canonical', async () => {
    const { ids, find } = await fixture([
      ['pat', { resourceType: 'Patient' }],
      ['grp', { resourceType: 'Group', type: 'person', actual: true }],
      ['o1', { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/{{pat}}' } }],
      ['o2', { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Group/{{grp}}' } }],
      ['o3', { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { identifier: { system: 'urn:mrn', value: '77' } } }],
      ['o4', { resourceType: 'Observation', status: 'final', code: { text: 'x' } }],
      ['o5', { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'http://other.example.org/fhir/Patient/abc' } }],
      ['qr', { resourceType: 'QuestionnaireResponse', status: 'completed', questionnaire: 'http://example.org/Questionnaire/phq9|1.0' }],
    ]);
    expect(await find('Observation', `subject=Patient/${ids.pat}`)).toEqual(['o1']);
    expect(await find('Observation', `subject=${ids.pat}`)).toEqual(['o1']);
    expect(await find('Observation', `subject:Patient=${ids.pat}`)).toEqual(['o1']);
    expect(await find('Observation', `subject:Group=${ids.pat}`)).toEqual([]);
    expect(await find('Observation', `patient=${ids.pat}`)).toEqual(['o1']); // .where(resolve() is Patient)
    expect(await find('Observation', `patient=${ids.grp}`)).toEqual([]);
    expect(await find('Observation', `subject=${q(`${t.url}/Patient/${ids.pat}`)}`)).toEqual(['o1']);
    expect(await find('Observation', `subject=${q('http://other.example.org/fhir/Patient/abc')}`)).toEqual(['o5']);
    expect(await find('Observation', 'subject=abc')).toEqual([]); // an external resource is not a local id
    expect(await find('Observation', `subject:identifier=${q('urn:mrn|77')}`)).toEqual(['o3']);
    expect(await find('Observation', 'subject:missing=true')).toEqual(['o4']);
    expect(await find('Observation', 'subject:missing=false')).toEqual(['o1', 'o2', 'o3', 'o5']);
    expect(await find('Observation', `subject=Patient/${ids.pat},Group/${ids.grp}`)).toEqual(['o1', 'o2']);
    expect(await find('QuestionnaireResponse', `questionnaire=${q('http://example.org/Questionnaire/phq9')}`)).toEqual(['qr']);
    expect(await find('QuestionnaireResponse', `questionnaire=${q('http://example.org/Questionnaire/phq9|1.0')}`)).toEqual(['qr']);
    expect(await find('QuestionnaireResponse', `questionnaire=${q('http://example.org/Questionnaire/phq9|2.0')}`)).toEqual([]);
  });

  test('uri: exact, :below, :above; _profile, _source, _security, _id, _lastUpdated', async () => {
    const before = new Date(Date.now() - 1000).toISOString();
    const { ids, find } = await fixture([
      ['vs', { resourceType: 'ValueSet', status: 'active', url: 'http://acme.org/fhir/ValueSet/123' }],
      ['other', { resourceType: 'ValueSet', status: 'active', url: 'http://acme.org/other/ValueSet/9', meta: { profile: ['http://example.org/StructureDefinition/p1'], source: 'urn:source:lab', security: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality', code: 'R' }] } }],
    ]);
    expect(await find('ValueSet', `url=${q('http://acme.org/fhir/ValueSet/123')}`)).toEqual(['vs']);
    expect(await find('ValueSet', `url=${q('http://acme.org/fhir/ValueSet/12')}`)).toEqual([]);
    expect(await find('ValueSet', `url:below=${q('http://acme.org/fhir/')}`)).toEqual(['vs']);
    expect(await find('ValueSet', `url:below=${q('http://acme.org/')}`)).toEqual(['other', 'vs']);
    expect(await find('ValueSet', `url:above=${q('http://acme.org/fhir/ValueSet/123/_history/5')}`)).toEqual(['vs']);
    expect(await find('ValueSet', `_profile=${q('http://example.org/StructureDefinition/p1')}`)).toEqual(['other']);
    expect(await find('ValueSet', `_source=${q('urn:source:lab')}`)).toEqual(['other']);
    expect(await find('ValueSet', `_security=${q('http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R')}`)).toEqual(['other']);
    expect(await find('ValueSet', `_id=${ids.vs}`)).toEqual(['vs']);
    expect(await find('ValueSet', `_id=${ids.vs},${ids.other}`)).toEqual(['other', 'vs']);
    expect(await find('ValueSet', `_lastUpdated=${q(`ge${before}`)}`)).toEqual(['other', 'vs']);
    expect(await find('ValueSet', `_lastUpdated=${q(`lt${before}`)}`)).toEqual([]);
    expect(await find('ValueSet', `_lastUpdated=gt2999`)).toEqual([]);
  });

  test('chaining to depth two, with and without a type; _has, nested', async () => {
    const { ids, find } = await fixture([
      ['org', { resourceType: 'Organization', name: 'Acme Hospital' }],
      ['peter', { resourceType: 'Patient', name: [{ family: 'Chalmers', given: ['Peter'] }], identifier: [{ system: 'urn:mrn', value: 'P1' }], managingOrganization: { reference: 'Organization/{{org}}' } }],
      ['jane', { resourceType: 'Patient', name: [{ family: 'Doe', given: ['Jane'] }] }],
      ['o1', { resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '1234-5' }] }, subject: { reference: 'Patient/{{peter}}' } }],
      ['o2', { resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '9999-9' }] }, subject: { reference: 'Patient/{{jane}}' } }],
      ['prov', { resourceType: 'Provenance', target: [{ reference: 'Observation/{{o1}}' }], recorded: '2020-01-01T00:00:00Z', agent: [{ who: { display: 'x' } }] }],
    ]);
    expect(await find('Observation', 'subject:Patient.name=peter')).toEqual(['o1']);
    expect(await find('Observation', 'subject.name=jane')).toEqual(['o2']);
    expect(await find('Observation', `patient.identifier=${q('urn:mrn|P1')}`)).toEqual(['o1']);
    expect(await find('Observation', 'patient.organization.name=acme')).toEqual(['o1']);
    expect(await find('Observation', 'patient.organization.name=nothing')).toEqual([]);
    expect(await find('Observation', `subject:Patient._id=${ids.jane}`)).toEqual(['o2']);
    expect(await find('Patient', `_has:Observation:patient:code=${q('http://loinc.org|1234-5')}`)).toEqual(['peter']);
    expect(await find('Patient', '_has:Observation:subject:code=9999-9')).toEqual(['jane']);
    expect(await find('Patient', '_has:Observation:subject:code=0000-0')).toEqual([]);
    expect(await find('Patient', `_has:Observation:subject:_has:Provenance:target:_id=${ids.prov}`)).toEqual(['peter']);
    expect(await find('Organization', '_has:Patient:organization:_has:Observation:patient:code=1234-5')).toEqual(['org']);
    const bad = await api.get('/Observation?subject:Patient.nonsense=1').set('Prefer', 'handling=strict');
    expect(bad.status).toBe(400);
  });

  test('_include, _include:iterate, _revinclude, * and the fan-out report', async () => {
    const { ids, get, label } = await fixture([
      ['org', { resourceType: 'Organization', name: 'Acme' }],
      ['pat', { resourceType: 'Patient', managingOrganization: { reference: 'Organization/{{org}}' } }],
      ['o1', { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/{{pat}}' } }],
      ['o2', { resourceType: 'Observation', status: 'final', code: { text: 'y' }, subject: { reference: 'Patient/{{pat}}' } }],
      ['prov', { resourceType: 'Provenance', target: [{ reference: 'Observation/{{o1}}' }], recorded: '2020-01-01T00:00:00Z', agent: [{ who: { display: 'x' } }] }],
    ]);
    const modes = (entries: Entry[]) => entries.map((e) => `${e.search.mode}:${label[e.resource.id] ?? e.resource.resourceType}`).sort();
    expect(modes(await get('Observation', `_id=${ids.o1}&_include=Observation:patient`))).toEqual(['include:pat', 'match:o1']);
    expect(modes(await get('Observation', '_include=Observation:subject:Patient'))).toEqual(['include:pat', 'match:o1', 'match:o2']);
    expect(modes(await get('Observation', `_id=${ids.o1}&_include=Observation:patient&_include:iterate=Patient:organization`))).toEqual(['include:org', 'include:pat', 'match:o1']);
    expect(modes(await get('Patient', '_revinclude=Observation:subject'))).toEqual(['include:o1', 'include:o2', 'match:pat']);
    expect(modes(await get('Patient', '_revinclude=Observation:subject&_revinclude:iterate=Provenance:target'))).toEqual(['include:o1', 'include:o2', 'include:prov', 'match:pat']);
    expect(modes(await get('Observation', `_id=${ids.o2}&_include=*`))).toEqual(['include:pat', 'match:o2']);
    const bad = await api.get('/Observation?_include=Observation:code').set('Prefer', 'handling=strict');
    expect(bad.status).toBe(400);
    const lenient = await api.get(`/Observation?_id=${ids.o1}&_include=Observation:code`).expect(200);
    const outcome = lenient.body.entry.find((e: Entry) => e.search.mode === 'outcome');
    expect(JSON.stringify(outcome.resource.issue)).toMatch(/_include/);
  });
});
