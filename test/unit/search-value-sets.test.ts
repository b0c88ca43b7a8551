// Value sets for token :in / :not-in (https://hl7.org/fhir/R4/search.html#modifiers,
// valueset.html#expansion): the generated expansions, their lookup, and the SQL planned from them
// (every code a binding, never spliced; :not-in a NOT EXISTS like :not).
import { describe, expect, test } from '@jest/globals';
import { FhirError } from '../../src/fhir/errors.js';
import { implicitCodeSystems, lookupValueSet } from '../../src/fhir/value-sets.js';
import { parseSearch } from '../../src/search/parse.js';
import { planWhere } from '../../src/search/plan.js';

const open = { sealed: false };
const plan = (type: string, name: string, value: string) => planWhere(parseSearch(type, [[name, value]], { strict: true, phi: open }));
const placeholders = (sql: string) => (sql.match(/\?/g) ?? []).length;

describe('value set expansions from the package', () => {
  test('compose by concept, whole complete code systems, is-a filters, exclude, imports', () => {
    const gender = lookupValueSet('http://hl7.org/fhir/ValueSet/administrative-gender');
    expect(gender).toEqual({ codes: { 'http://hl7.org/fhir/administrative-gender': ['female', 'male', 'other', 'unknown'] } });
    const enc = lookupValueSet('http://terminology.hl7.org/ValueSet/v3-ActEncounterCode');
    if (!('codes' in enc)) throw new Error('v3-ActEncounterCode should expand');
    const act = enc.codes['http://terminology.hl7.org/CodeSystem/v3-ActCode'];
    expect(act).toEqual(expect.arrayContaining(['AMB', 'EMER', 'IMP', 'VR']));
    expect(act).not.toContain('_ActEncounterCode'); // the is-a root, excluded by compose.exclude
    expect(act).not.toContain('ACCTRECEIVABLE');
    // valueSet imports: security-labels is the union of six v3 value sets
    const labels = lookupValueSet('http://hl7.org/fhir/ValueSet/security-labels');
    if (!('codes' in labels)) throw new Error('security-labels should expand');
    expect(labels.codes['http://terminology.hl7.org/CodeSystem/v3-Confidentiality']).toContain('R');
    expect(labels.codes['http://terminology.hl7.org/CodeSystem/v3-ActCode']).toContain('HIV');
  });

  test('versions, value sets the package cannot expand, unknown ones', () => {
    expect('codes' in lookupValueSet('http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1')).toBe(true);
    expect(lookupValueSet('http://hl7.org/fhir/ValueSet/administrative-gender|3.0.2')).toEqual({ unavailable: expect.stringMatching(/version 4\.0\.1 only/) });
    expect(lookupValueSet('http://hl7.org/fhir/ValueSet/observation-codes')).toEqual({ unavailable: expect.stringMatching(/cannot be expanded.*http:\/\/loinc\.org/) });
    const unknown = lookupValueSet('http://example.org/private-name');
    expect(unknown).toEqual({ unavailable: expect.stringMatching(/not known/) });
    expect(JSON.stringify(unknown)).not.toContain('private-name');
    expect(lookupValueSet('constructor')).toEqual({ unavailable: expect.stringMatching(/not known/) });
  });

  test('code elements carry the systems of their required binding', () => {
    expect(implicitCodeSystems('Patient.gender')).toEqual(['http://hl7.org/fhir/administrative-gender']);
    expect(implicitCodeSystems('Observation.status')).toEqual(['http://hl7.org/fhir/observation-status']);
    expect(implicitCodeSystems('Observation.code')).toEqual([]); // a CodeableConcept says its system itself
  });
});

describe('planning :in and :not-in', () => {
  test('codes travel as one bound JSON array per system; the system is bound too', () => {
    const p = plan('Encounter', 'class:in', 'http://terminology.hl7.org/ValueSet/v3-ActEncounterCode');
    expect(placeholders(p.sql)).toBe(p.bindings.length);
    expect(p.sql).not.toMatch(/AMB|v3-ActCode/);
    expect(p.bindings).toContain('http://terminology.hl7.org/CodeSystem/v3-ActCode');
    const codes = p.bindings.find((b) => typeof b === 'string' && b.startsWith('['));
    expect(JSON.parse(codes as string)).toEqual(expect.arrayContaining(['AMB', 'EMER']));
    expect(p.sql).not.toMatch(/not exists/);
    expect(plan('Encounter', 'class:not-in', 'http://terminology.hl7.org/ValueSet/v3-ActEncounterCode').sql).toMatch(/not exists/);
  });

  test('a code element also matches rows without a system, for its implied system only', () => {
    const p = plan('Patient', 'gender:in', 'http://hl7.org/fhir/ValueSet/administrative-gender');
    expect(p.sql).toMatch(/system is null/);
    expect(plan('Patient', 'gender:in', 'http://hl7.org/fhir/ValueSet/gender-identity').sql).not.toMatch(/system is null/);
  });

  test('an unknown value set is a 400 not-supported that does not echo the value', () => {
    const evil = "http://x/'); drop table resource; --";
    let err: unknown;
    try {
      plan('Observation', 'code:in', evil);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(FhirError);
    expect((err as FhirError).code).toBe('unsupported-search');
    expect((err as FhirError).message).not.toContain('drop table');
  });
});
