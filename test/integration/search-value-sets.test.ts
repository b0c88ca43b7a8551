// Token :in and :not-in (https://hl7.org/fhir/R4/search.html#modifiers) against the value sets of the
// R4 package, on every available backend: codings in (or not in) the expansion, the implied system of
// `code` elements, OR values, versions, chains and _has; value sets that cannot be expanded are
// refused with a 400 naming why, and sealed PHI parameters refuse both modifiers.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const q = encodeURIComponent;
const ACT = 'http://terminology.hl7.org/CodeSystem/v3-ActCode';
const ENCOUNTER_CODES = 'http://terminology.hl7.org/ValueSet/v3-ActEncounterCode'; // is-a _ActEncounterCode
const GENDER = 'http://hl7.org/fhir/ValueSet/administrative-gender';
const GENDER_IDENTITY = 'http://hl7.org/fhir/ValueSet/gender-identity'; // also has "female", in another system
const CATEGORY = 'http://hl7.org/fhir/ValueSet/observation-category';
const CATEGORY_SYSTEM = 'http://terminology.hl7.org/CodeSystem/observation-category';
const CLINICAL = 'http://hl7.org/fhir/ValueSet/condition-clinical';

describe.each(backends())('token :in and :not-in on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  beforeAll(async () => {
    t = await startTestServer(backend, { PHI_ENCRYPTION: 'off' });
    api = authed(t);
  });
  afterAll(async () => {
    await t.close();
  });

  /** Creates resources tagged for one test; `find` returns the labels of the matches of `type?query`. */
  async function fixture(items: Record<string, (ids: Record<string, string>) => Record<string, unknown>>) {
    const tag = randomUUID();
    const ids: Record<string, string> = {};
    for (const [label, make] of Object.entries(items)) {
      const r = make(ids);
      const res = await api.post(`/${r.resourceType}`).set('Content-Type', FHIR).send({ ...r, meta: { tag: [{ system: 'urn:vesta:test', code: tag }] } }).expect(201);
      ids[label] = res.body.id;
    }
    const byId = Object.fromEntries(Object.entries(ids).map(([k, v]) => [v, k]));
    const find = async (type: string, query: string): Promise<string[]> => {
      const res = await api.get(`/${type}?${query}&_tag=${q(`urn:vesta:test|${tag}`)}&_count=100`).set('Prefer', 'handling=strict');
      if (res.status !== 200) throw new Error(`${type}?${query}: ${res.status} ${JSON.stringify(res.body.issue)}`);
      return (res.body.entry ?? []).filter((e: { search: { mode: string } }) => e.search.mode === 'match').map((e: { resource: { id: string } }) => byId[e.resource.id] ?? e.resource.id).sort();
    };
    return { ids, find };
  }

  test('Coding: in the expansion (an is-a filter of the package) by system and code; :not-in is the rest', async () => {
    const enc = (system: string, code: string) => () => ({ resourceType: 'Encounter', status: 'finished', class: { system, code } });
    const { find } = await fixture({
      amb: enc(ACT, 'AMB'),
      emer: enc(ACT, 'EMER'),
      receivable: enc(ACT, 'ACCTRECEIVABLE'), // in v3-ActCode, not below _ActEncounterCode
      other: enc('urn:other', 'AMB'), // the code alone is not enough: the system must match
    });
    expect(await find('Encounter', `class:in=${q(ENCOUNTER_CODES)}`)).toEqual(['amb', 'emer']);
    expect(await find('Encounter', `class:not-in=${q(ENCOUNTER_CODES)}`)).toEqual(['other', 'receivable']);
    expect(await find('Encounter', `class:in=${q('http://terminology.hl7.org/ValueSet/v3-ActCode')}`)).toEqual(['amb', 'emer', 'receivable']);
    expect(await find('Encounter', `class:in=${q(`${ENCOUNTER_CODES}|2014-03-26`)}`)).toEqual(['amb', 'emer']);
    expect(await find('Encounter', `class:in=${q(ENCOUNTER_CODES)}&class=EMER`)).toEqual(['emer']);
  });

  test('CodeableConcept: any coding in the set; OR values; :not-in holds for resources without a value', async () => {
    const obs = (...codings: { system: string; code: string }[]) => () => ({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, ...(codings.length ? { category: [{ coding: codings }] } : {}) });
    const { find } = await fixture({
      vital: obs({ system: CATEGORY_SYSTEM, code: 'vital-signs' }),
      mixed: obs({ system: 'urn:local', code: 'v' }, { system: CATEGORY_SYSTEM, code: 'laboratory' }),
      local: obs({ system: 'urn:local', code: 'vital-signs' }),
      none: obs(),
    });
    expect(await find('Observation', `category:in=${q(CATEGORY)}`)).toEqual(['mixed', 'vital']);
    expect(await find('Observation', `category:not-in=${q(CATEGORY)}`)).toEqual(['local', 'none']);
    expect(await find('Observation', `category:in=${q(CLINICAL)}`)).toEqual([]);
    expect(await find('Observation', `category:in=${q(CLINICAL)},${q(CATEGORY)}`)).toEqual(['mixed', 'vital']);
    expect(await find('Observation', `category:not-in=${q(CLINICAL)}`)).toEqual(['local', 'mixed', 'none', 'vital']);
  });

  test('code elements: the system implied by the binding; versions; chains and _has', async () => {
    const { ids, find } = await fixture({
      f: () => ({ resourceType: 'Patient', gender: 'female' }),
      m: () => ({ resourceType: 'Patient', gender: 'male' }),
      none: () => ({ resourceType: 'Patient' }),
      obsF: (i) => ({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${i.f}` }, category: [{ coding: [{ system: CATEGORY_SYSTEM, code: 'survey' }] }] }),
      obsNone: (i) => ({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${i.none}` } }),
      obsGone: () => ({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/not-here' } }),
    });
    expect(ids.f).toBeDefined();
    expect(await find('Patient', `gender:in=${q(GENDER)}`)).toEqual(['f', 'm']);
    expect(await find('Patient', `gender:in=${q(GENDER_IDENTITY)}`)).toEqual([]); // "female" there is another system's code
    expect(await find('Patient', `gender:not-in=${q(GENDER)}`)).toEqual(['none']);
    expect(await find('Patient', `gender:in=${q(`${GENDER}|4.0.1`)}`)).toEqual(['f', 'm']);
    expect(await find('Observation', `status:in=${q('http://hl7.org/fhir/ValueSet/observation-status')}`)).toEqual(['obsF', 'obsGone', 'obsNone']);
    expect(await find('Observation', `subject:Patient.gender:in=${q(GENDER)}`)).toEqual(['obsF']);
    // :not-in through a chain needs the target to exist, as :not does
    expect(await find('Observation', `subject:Patient.gender:not-in=${q(GENDER)}`)).toEqual(['obsNone']);
    expect(await find('Patient', `_has:Observation:subject:category:in=${q(CATEGORY)}`)).toEqual(['f']);
    expect(await find('Patient', `_has:Observation:subject:category:not-in=${q(CATEGORY)}`)).toEqual(['none']);
    // system search: each type's `code` elements stand for their own binding
    const both = await api.get(`/?_type=Patient,Practitioner&gender:in=${q(GENDER)}&_tag=${q('urn:vesta:test|nothing')}`).set('Prefer', 'handling=strict').expect(200);
    expect(both.body.entry ?? []).toEqual([]);
  });

  test.each([
    ['a value set the package cannot expand', `code:in=${q('http://hl7.org/fhir/ValueSet/observation-codes')}`, /cannot be expanded.*loinc/],
    ['an unknown value set', `code:in=${q('http://example.org/fhir/ValueSet/secret-list')}`, /not known/],
    ['a literal reference', `code:not-in=${q('ValueSet/secret-list')}`, /not known/],
    ['another version', `category:in=${q(`${CATEGORY}|3.0.2`)}`, /version 4\.0\.1 only/],
  ])('%s is refused with a 400 not-supported, whatever the handling', async (_what, query, why) => {
    for (const prefer of ['handling=strict', 'handling=lenient']) {
      const res = await api.get(`/Observation?${query}`).set('Prefer', prefer).expect(400);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(res.body.issue[0].code).toBe('not-supported');
      expect(res.body.issue[0].diagnostics).toMatch(why);
      expect(res.text).not.toMatch(/secret/);
    }
  });

  test(':in is a token modifier only; the CapabilityStatement no longer lists it as not served', async () => {
    await api.get(`/Patient?name:in=${q(GENDER)}`).set('Prefer', 'handling=strict').expect(400);
    const cs = await api.get('/metadata').expect(200);
    expect(cs.body.rest[0].documentation).toMatch(/:in/);
    expect(cs.body.rest[0].documentation).not.toMatch(/Not served:[^.]*:in/);
  });
});

describe.each(backends())('token :in and :not-in with PHI sealed on %s PostgreSQL', (backend) => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer(backend);
  });
  afterAll(async () => {
    await t.close();
  });

  test.each(['identifier:in', 'identifier:not-in', 'telecom:in'])('Patient?%s is refused on a blind-indexed parameter; plaintext ones still serve it', async (name) => {
    const api = authed(t);
    const res = await api.get(`/Patient?${name}=${q(GENDER)}`).expect(400);
    expect(res.body.issue[0].code).toBe('not-supported');
    expect(res.body.issue[0].diagnostics).toContain(`:${name.split(':')[1]} is not served`);
    const id = (await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', gender: 'other' }).expect(201)).body.id;
    const ok = await api.get(`/Patient?gender:in=${q(GENDER)}&_id=${id}`).set('Prefer', 'handling=strict').expect(200);
    expect(ok.body.entry.map((e: { resource: { id: string } }) => e.resource.id)).toEqual([id]);
  });
});
