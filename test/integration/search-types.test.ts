// Search parameter types (https://hl7.org/fhir/R4/search.html#ptypes): string, token, date, number,
// quantity and composite, with their modifiers and prefixes, on every available backend. Expected
// results follow the specification's described behaviour; each test owns its data through a unique
// _tag, which every query also carries (so _tag is exercised throughout).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';

describe.each(backends())('search parameter types on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  beforeAll(async () => {
    // PHI sealing off: names, birth dates and telecom are indexed in the clear (see search-phi.test.ts for sealed).
    t = await startTestServer(backend, { PHI_ENCRYPTION: 'off' });
    api = authed(t);
  });
  afterAll(async () => {
    await t.close();
  });

  /** Creates resources tagged for one test; returns ids by label and a search helper scoped to the tag. */
  async function fixture(items: Record<string, Record<string, unknown>>) {
    const tag = randomUUID();
    const ids: Record<string, string> = {};
    for (const [label, r] of Object.entries(items)) {
      const meta = { ...((r.meta as object) ?? {}), tag: [{ system: 'urn:vesta:test', code: tag }] };
      const res = await api.post(`/${r.resourceType}`).set('Content-Type', FHIR).send({ ...r, meta }).expect(201);
      ids[label] = res.body.id;
    }
    const byId = Object.fromEntries(Object.entries(ids).map(([k, v]) => [v, k]));
    /** Labels of the matches of `type?query`, sorted. */
    const find = async (type: string, query: string): Promise<string[]> => {
      const res = await api.get(`/${type}?${query}&_tag=${encodeURIComponent(`urn:vesta:test|${tag}`)}&_count=100`).set('Prefer', 'handling=strict');
      if (res.status !== 200) throw new Error(`${type}?${query}: ${res.status} ${JSON.stringify(res.body.issue)}`);
      return (res.body.entry ?? []).filter((e: { search: { mode: string } }) => e.search.mode === 'match').map((e: { resource: { id: string } }) => byId[e.resource.id] ?? e.resource.id).sort();
    };
    return { ids, find };
  }

  test('string: starts-with ignoring case and accents; :exact; :contains; HumanName and Address parts', async () => {
    const { find } = await fixture({
      eve: { resourceType: 'Patient', name: [{ family: 'Chalmers', given: ['Eve'] }], address: [{ city: 'Springfield', line: ['1 Main St'] }] },
      evelyn: { resourceType: 'Patient', name: [{ family: 'Núñez', given: ['Evelyn'] }] },
      severine: { resourceType: 'Patient', name: [{ family: 'Smith', given: ['Severine'], text: 'Séverine Smith' }] },
    });
    expect(await find('Patient', 'given=eve')).toEqual(['eve', 'evelyn']);
    expect(await find('Patient', 'given=EVE')).toEqual(['eve', 'evelyn']);
    expect(await find('Patient', 'given:contains=eve')).toEqual(['eve', 'evelyn', 'severine']);
    expect(await find('Patient', 'given:exact=Eve')).toEqual(['eve']);
    expect(await find('Patient', 'given:exact=eve')).toEqual([]);
    expect(await find('Patient', 'family=nunez')).toEqual(['evelyn']);
    expect(await find('Patient', 'family:exact=Nunez')).toEqual([]);
    expect(await find('Patient', `family:exact=${encodeURIComponent('Núñez')}`)).toEqual(['evelyn']);
    expect(await find('Patient', 'name=severine')).toEqual(['severine']); // given and HumanName.text
    expect(await find('Patient', 'name=chal')).toEqual(['eve']);
    expect(await find('Patient', 'address=springf')).toEqual(['eve']);
    expect(await find('Patient', 'address-city=Springfield')).toEqual(['eve']);
    expect(await find('Patient', 'address=main')).toEqual([]); // starts-with, not contains
    expect(await find('Patient', 'address:contains=main')).toEqual(['eve']);
    expect(await find('Patient', 'given=eve,sev')).toEqual(['eve', 'evelyn', 'severine']); // comma = OR
    expect(await find('Patient', 'given=eve&family=chal')).toEqual(['eve']); // repeated = AND
    expect(await find('Patient', 'phonetic=Smyth')).toEqual(['severine']);
    expect(await find('Patient', 'given=100%25')).toEqual([]); // LIKE metacharacters are literal
  });

  test('token: code, system|code, |code, system|, :not, :text, :of-type, :missing, boolean', async () => {
    const loinc = 'http://loinc.org';
    const { find } = await fixture({
      a: { resourceType: 'Observation', status: 'final', code: { coding: [{ system: loinc, code: '1234-5', display: 'Glucose [Mass/volume]' }], text: 'Blood sugar' } },
      b: { resourceType: 'Observation', status: 'amended', code: { coding: [{ code: '1234-5' }] } },
      c: { resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://snomed.info/sct', code: '999' }] } },
      p1: {
        resourceType: 'Patient', active: true, gender: 'female',
        identifier: [{ system: 'urn:mrn', value: 'A1', type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MR' }], text: 'Medical record' } }],
        telecom: [{ system: 'phone', value: '555-0100' }],
      },
      p2: { resourceType: 'Patient', active: false, identifier: [{ value: 'A1' }] },
      p3: { resourceType: 'Patient' },
    });
    expect(await find('Observation', 'code=1234-5')).toEqual(['a', 'b']);
    expect(await find('Observation', `code=${encodeURIComponent(`${loinc}|1234-5`)}`)).toEqual(['a']);
    expect(await find('Observation', `code=${encodeURIComponent('|1234-5')}`)).toEqual(['b']);
    expect(await find('Observation', `code=${encodeURIComponent(`${loinc}|`)}`)).toEqual(['a']);
    expect(await find('Observation', 'code:not=1234-5')).toEqual(['c']);
    expect(await find('Observation', 'code:text=glucose')).toEqual(['a']); // Coding.display
    expect(await find('Observation', 'code:text=blood%20s')).toEqual(['a']); // CodeableConcept.text
    expect(await find('Observation', 'status=final')).toEqual(['a', 'c']);
    expect(await find('Observation', 'status:not=final')).toEqual(['b']);
    expect(await find('Patient', 'identifier=A1')).toEqual(['p1', 'p2']);
    expect(await find('Patient', `identifier=${encodeURIComponent('urn:mrn|A1')}`)).toEqual(['p1']);
    expect(await find('Patient', `identifier=${encodeURIComponent('|A1')}`)).toEqual(['p2']);
    expect(await find('Patient', `identifier:of-type=${encodeURIComponent('http://terminology.hl7.org/CodeSystem/v2-0203|MR|A1')}`)).toEqual(['p1']);
    expect(await find('Patient', 'identifier:text=medical')).toEqual(['p1']);
    expect(await find('Patient', 'identifier:missing=true')).toEqual(['p3']);
    expect(await find('Patient', 'identifier:missing=false')).toEqual(['p1', 'p2']);
    expect(await find('Patient', 'active=true')).toEqual(['p1']);
    expect(await find('Patient', 'active=false')).toEqual(['p2']);
    expect(await find('Patient', 'gender=female')).toEqual(['p1']);
    expect(await find('Patient', 'telecom=555-0100')).toEqual(['p1']); // ContactPoint.value
    expect(await find('Patient', 'phone=555-0100')).toEqual(['p1']);
    expect(await find('Patient', 'email=555-0100')).toEqual([]);
    const bad = await api.get('/Patient?identifier:of-type=MR|A1').set('Prefer', 'handling=strict');
    expect(bad.status).toBe(400);
  });

  test('date: precision ranges and every prefix (eq ne gt lt ge le sa eb ap); Period; time zones; Timing', async () => {
    const { find } = await fixture({
      xmas: { resourceType: 'Patient', birthDate: '1974-12-25' },
      y75: { resourceType: 'Patient', birthDate: '1975' },
      jan: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, effectivePeriod: { start: '2013-01-01', end: '2013-01-31' } },
      tz: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, effectiveDateTime: '2013-01-14T10:00:00+01:00' },
      open: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, effectivePeriod: { start: '2013-01-20T00:00:00Z' } },
    });
    expect(await find('Patient', 'birthdate=1974')).toEqual(['xmas']);
    expect(await find('Patient', 'birthdate=1974-12')).toEqual(['xmas']);
    expect(await find('Patient', 'birthdate=1974-12-25')).toEqual(['xmas']);
    expect(await find('Patient', 'birthdate=1974-12-24')).toEqual([]);
    expect(await find('Patient', 'birthdate=1975-06')).toEqual([]); // a year is not inside a month
    expect(await find('Patient', 'birthdate=ne1974')).toEqual(['y75']);
    expect(await find('Patient', 'birthdate=gt1974-12-24')).toEqual(['xmas', 'y75']);
    expect(await find('Patient', 'birthdate=gt1974-12-25')).toEqual(['y75']);
    expect(await find('Patient', 'birthdate=lt1974-12-25')).toEqual([]);
    expect(await find('Patient', 'birthdate=le1974-12-25')).toEqual(['xmas']);
    expect(await find('Patient', 'birthdate=ge1975')).toEqual(['y75']);
    expect(await find('Patient', 'birthdate=lt1975-06')).toEqual(['xmas', 'y75']); // 1975 starts before June
    expect(await find('Patient', 'birthdate=sa1974-12-24')).toEqual(['xmas', 'y75']);
    expect(await find('Patient', 'birthdate=eb1975')).toEqual(['xmas']);
    // ap widens by 10% of the gap between the value and now (search.html#prefix): decades ago, that is years
    expect(await find('Patient', 'birthdate=ap1974-12-25')).toEqual(['xmas', 'y75']);
    expect(await find('Patient', 'birthdate=ge1974-12-25&birthdate=le1974-12-31')).toEqual(['xmas']);

    expect(await find('Observation', 'date=2013-01')).toEqual(['jan', 'tz']);
    expect(await find('Observation', 'date=2013-01-14')).toEqual(['tz']); // the Period is not inside the day
    expect(await find('Observation', 'date=ap2013-01-14')).toEqual(['jan', 'open', 'tz']);
    expect(await find('Observation', 'date=gt2013-01-14')).toEqual(['jan', 'open']);
    expect(await find('Observation', 'date=lt2013-01-14')).toEqual(['jan']);
    expect(await find('Observation', 'date=sa2012-12-31')).toEqual(['jan', 'open', 'tz']);
    expect(await find('Observation', 'date=sa2013-01-01')).toEqual(['open', 'tz']);
    expect(await find('Observation', 'date=eb2013-02-01')).toEqual(['jan', 'tz']);
    expect(await find('Observation', 'date=gt2030')).toEqual(['open']); // no end: open to the future
    expect(await find('Observation', `date=${encodeURIComponent('2013-01-14T09:00:00Z')}`)).toEqual(['tz']);
    expect(await find('Observation', `date=${encodeURIComponent('2013-01-14T10:00:00+01:00')}`)).toEqual(['tz']);
    expect(await find('Observation', 'date=2013-01-14T10:00:00+01:00')).toEqual(['tz']); // '+' arriving as a space
    expect(await find('Observation', `date=${encodeURIComponent('2013-01-14T10:00:00Z')}`)).toEqual([]);

    const { find: find2 } = await fixture({
      plan: { resourceType: 'CarePlan', status: 'active', intent: 'plan', subject: { reference: 'Patient/x' }, activity: [{ detail: { status: 'scheduled', scheduledTiming: { event: ['2020-03-01', '2020-03-10'] } } }] },
    });
    expect(await find2('CarePlan', 'activity-date=2020-03')).toEqual(['plan']); // Timing: its outer limits
    expect(await find2('CarePlan', 'activity-date=2020-03-05')).toEqual([]);
    expect(await find2('CarePlan', 'activity-date=ap2020-03-05')).toEqual(['plan']);
    await api.get('/Patient?birthdate=1974-13').expect(400);
    await api.get('/Patient?birthdate=yesterday').expect(400);
  });

  test('number: implicit precision, prefixes, Range values', async () => {
    const ra = (p: Record<string, unknown>) => ({ resourceType: 'RiskAssessment', status: 'final', subject: { reference: 'Patient/x' }, prediction: [p] });
    const UCUM = 'http://unitsofmeasure.org';
    const { find } = await fixture({ p08: ra({ probabilityDecimal: 0.8 }), range: ra({ probabilityRange: { low: { value: 0.2, system: UCUM, code: '%' }, high: { value: 0.4, system: UCUM, code: '%' } } }) /* ras-1: percentages */, p100: ra({ probabilityDecimal: 100 }) });
    expect(await find('RiskAssessment', 'probability=0.8')).toEqual(['p08']);
    expect(await find('RiskAssessment', 'probability=0.80')).toEqual(['p08']);
    expect(await find('RiskAssessment', 'probability=0.81')).toEqual([]);
    expect(await find('RiskAssessment', 'probability=1')).toEqual(['p08']); // [0.5, 1.5)
    expect(await find('RiskAssessment', 'probability=100')).toEqual(['p100']);
    expect(await find('RiskAssessment', 'probability=1e2')).toEqual(['p100']); // [50, 150)
    expect(await find('RiskAssessment', 'probability=gt0.5')).toEqual(['p08', 'p100']);
    expect(await find('RiskAssessment', 'probability=gt0.3')).toEqual(['p08', 'p100', 'range']);
    expect(await find('RiskAssessment', 'probability=lt0.5')).toEqual(['range']);
    expect(await find('RiskAssessment', 'probability=le0.8')).toEqual(['p08', 'range']);
    expect(await find('RiskAssessment', 'probability=ge100')).toEqual(['p100']);
    expect(await find('RiskAssessment', 'probability=ne0.8')).toEqual(['p100', 'range']);
    expect(await find('RiskAssessment', 'probability=sa0.4')).toEqual(['p08', 'p100']);
    expect(await find('RiskAssessment', 'probability=eb0.8')).toEqual(['range']);
    expect(await find('RiskAssessment', 'probability=ap0.75')).toEqual(['p08']);
    await api.get('/RiskAssessment?probability=abc').expect(400);
  });

  test('quantity: value|system|code, value||code, implicit precision, comparators', async () => {
    const ucum = 'http://unitsofmeasure.org';
    const obs = (v: Record<string, unknown>) => ({ resourceType: 'Observation', status: 'final', code: { text: 'q' }, valueQuantity: v });
    const { find } = await fixture({
      mg: obs({ value: 5.4, unit: 'mg', system: ucum, code: 'mg' }),
      g: obs({ value: 5.4, unit: 'g', system: ucum, code: 'g' }),
      text: obs({ value: 5.4, unit: 'mg' }),
      lt: obs({ value: 5, comparator: '<', unit: 'mg', system: ucum, code: 'mg' }),
    });
    expect(await find('Observation', `value-quantity=${encodeURIComponent(`5.4|${ucum}|mg`)}`)).toEqual(['mg']);
    expect(await find('Observation', `value-quantity=${encodeURIComponent('5.4||mg')}`)).toEqual(['mg', 'text']);
    expect(await find('Observation', 'value-quantity=5.4')).toEqual(['g', 'mg', 'text']);
    expect(await find('Observation', 'value-quantity=5.40')).toEqual(['g', 'mg', 'text']);
    expect(await find('Observation', 'value-quantity=5')).toEqual(['g', 'mg', 'text']); // [4.5, 5.5)
    expect(await find('Observation', `value-quantity=${encodeURIComponent(`gt5|${ucum}|mg`)}`)).toEqual(['mg']);
    expect(await find('Observation', `value-quantity=${encodeURIComponent(`lt4|${ucum}|mg`)}`)).toEqual(['lt']); // "<5" reaches below 4
    expect(await find('Observation', `value-quantity=${encodeURIComponent(`gt6|${ucum}|mg`)}`)).toEqual([]);
    expect(await find('Observation', `value-quantity=${encodeURIComponent(`ap5|${ucum}|g`)}`)).toEqual(['g']);
    await api.get(`/Observation?value-quantity=${encodeURIComponent('5|mg')}`).expect(400);
  });

  test('composite: code-value-quantity and component-code-value-quantity keep the parts of one value together', async () => {
    const loinc = 'http://loinc.org';
    const mmHg = { unit: 'mmHg', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' };
    const { find } = await fixture({
      bp: {
        resourceType: 'Observation', status: 'final', code: { coding: [{ system: loinc, code: '85354-9' }] },
        component: [
          { code: { coding: [{ system: loinc, code: '8480-6' }] }, valueQuantity: { value: 107, ...mmHg } },
          { code: { coding: [{ system: loinc, code: '8462-4' }] }, valueQuantity: { value: 60, ...mmHg } },
        ],
      },
      glucose: { resourceType: 'Observation', status: 'final', code: { coding: [{ system: loinc, code: '2339-0' }] }, valueQuantity: { value: 6.3, unit: 'mmol/L' } },
      color: { resourceType: 'Observation', status: 'final', code: { coding: [{ system: loinc, code: '5778-6' }] }, valueCodeableConcept: { coding: [{ system: 'http://snomed.info/sct', code: '371244009' }] } },
    });
    const q = (s: string) => encodeURIComponent(s);
    expect(await find('Observation', `component-code-value-quantity=${q(`${loinc}|8480-6$lt130`)}`)).toEqual(['bp']);
    expect(await find('Observation', `component-code-value-quantity=${q(`${loinc}|8480-6$gt130`)}`)).toEqual([]);
    // 107 > 100 belongs to the systolic component, not the diastolic one
    expect(await find('Observation', `component-code-value-quantity=${q(`${loinc}|8462-4$gt100`)}`)).toEqual([]);
    expect(await find('Observation', `component-code-value-quantity=${q(`${loinc}|8462-4$60`)}`)).toEqual(['bp']);
    expect(await find('Observation', `code-value-quantity=${q(`${loinc}|2339-0$gt6`)}`)).toEqual(['glucose']);
    expect(await find('Observation', `code-value-quantity=${q(`${loinc}|2339-0$gt7`)},${q(`${loinc}|2339-0$6.3`)}`)).toEqual(['glucose']);
    expect(await find('Observation', `combo-code-value-quantity=${q('8480-6$107')}`)).toEqual(['bp']);
    expect(await find('Observation', `code-value-concept=${q(`${loinc}|5778-6$http://snomed.info/sct|371244009`)}`)).toEqual(['color']);
    await api.get(`/Observation?code-value-quantity=${q('8480-6')}`).expect(400);
  });

  test('chain with :not: a reference to a resource that is not here (never created, or deleted) refers to nothing', async () => {
    const { ids, find } = await fixture({
      pat: { resourceType: 'Patient', telecom: [{ system: 'email', value: 'a@example.org' }] },
      gone: { resourceType: 'Patient' },
    });
    const tag = { system: 'urn:vesta:test', code: randomUUID() };
    const obs = async (ref: string) =>
      (await api.post('/Observation').set('Content-Type', FHIR).send({ resourceType: 'Observation', meta: { tag: [tag] }, status: 'final', code: { text: 'x' }, subject: { reference: ref } }).expect(201)).body.id as string;
    const here = await obs(`Patient/${ids.pat}`);
    await obs('Patient/not-loaded');
    await obs(`Patient/${ids.gone}`);
    await api.delete(`/Patient/${ids.gone}`).expect((r) => expect([200, 204]).toContain(r.status));
    const matches = async (query: string) => {
      const res = await api.get(`/Observation?${query}&_tag=${encodeURIComponent(`${tag.system}|${tag.code}`)}`).set('Prefer', 'handling=strict').expect(200);
      return (res.body.entry ?? []).map((e: { resource: { id: string } }) => e.resource.id).sort();
    };
    expect(await matches('subject:Patient.email:not=b@example.org')).toEqual([here]);
    expect(await matches('subject.email:not=a@example.org')).toEqual([]);
    expect(await matches('subject:Patient.email=a@example.org')).toEqual([here]);
  });
});
