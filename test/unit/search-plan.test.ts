// Parsing and SQL planning (https://hl7.org/fhir/R4/search.html): every client value is a binding,
// modifiers and prefixes are checked per parameter type, and what is not served is reported or refused.
import { describe, expect, test } from '@jest/globals';
import { FhirError } from '../../src/fhir/errors.js';
import { parseIncludes } from '../../src/search/include.js';
import { parseSearch } from '../../src/search/parse.js';
import { planSearch, planWhere } from '../../src/search/plan.js';
import { planSort } from '../../src/search/sort.js';

const open = { sealed: false };
const lenient = (type: string, pairs: [string, string][]) => parseSearch(type, pairs, { strict: false, phi: open, baseUrl: 'http://fhir.test' });
const strict = (type: string, pairs: [string, string][]) => parseSearch(type, pairs, { strict: true, phi: open });
const placeholders = (sql: string) => (sql.match(/\?/g) ?? []).length;

describe('planning', () => {
  const evil = "x'); drop table resource; --";
  const cases: [string, string, string][] = [
    ['Patient', 'name', evil],
    ['Patient', 'name:exact', evil],
    ['Patient', 'name:contains', evil],
    ['Patient', 'identifier', `${evil}|${evil}`],
    ['Patient', 'identifier:of-type', `${evil}|${evil}|${evil}`],
    ['Patient', 'gender:not', evil],
    ['Patient', 'general-practitioner', evil],
    ['Patient', 'general-practitioner:identifier', evil],
    ['ValueSet', 'url:below', evil],
    ['ValueSet', 'url:above', `http://x/${evil}/y`],
    ['Observation', 'value-quantity', `5|${evil}|${evil}`],
    ['Observation', 'code-value-quantity', `${evil}$gt5`],
    ['Observation', 'subject:Patient.name', evil],
    ['Patient', '_has:Observation:patient:code', evil],
    ['Patient', '_id', evil],
  ];
  test.each(cases)('%s?%s=... binds the value and never splices it', (type, name, value) => {
    const plan = planWhere(lenient(type, [[name, value]]));
    expect(plan.sql).not.toContain('drop table');
    expect(placeholders(plan.sql)).toBe(plan.bindings.length);
    expect(plan.bindings.some((b) => typeof b === 'string' && b.includes('drop table'))).toBe(true);
  });

  test.each(cases)('%s?%s=... binds the value in the index-only form too', (type, name, value) => {
    const plan = planSearch(lenient(type, [[name, value], ['_lastUpdated', 'gt2020']]));
    for (const f of [plan.where, ...(plan.driven ? [plan.driven] : [])]) {
      expect(f.sql).not.toContain('drop table');
      expect(placeholders(f.sql)).toBe(f.bindings.length);
    }
    if (plan.driven) expect(plan.driven.bindings.some((b) => typeof b === 'string' && b.includes('drop table'))).toBe(true);
  });

  test('LIKE metacharacters in string values are escaped', () => {
    const plan = planWhere(lenient('Patient', [['family', '50%_off\\']]));
    expect(plan.bindings).toContain('50\\%\\_off\\\\%');
  });

  test('comma is OR inside one EXISTS; a repeated parameter is AND', () => {
    const one = planWhere(lenient('Observation', [['code', 'a,b']]));
    expect((one.sql.match(/exists/g) ?? []).length).toBe(1);
    expect(one.sql).toMatch(/ or /);
    const two = planWhere(lenient('Observation', [['code', 'a'], ['code', 'b']]));
    expect((two.sql.match(/exists/g) ?? []).length).toBe(2);
    const escaped = lenient('Observation', [['code', 'a\\,b']]);
    expect(escaped.clauses[0].values).toEqual(['a\\,b']);
    expect(planWhere(escaped).bindings).toContain('a,b');
  });

  test('bad values are 400s that do not echo the value', () => {
    for (const [type, name, value] of [['Patient', 'birthdate', 'secret-1961'], ['RiskAssessment', 'probability', 'secret'], ['Observation', 'value-quantity', '1|secret'], ['Patient', 'name:missing', 'secret']] as const) {
      let err: unknown;
      try {
        planWhere(lenient(type, [[name, value]]));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(FhirError);
      expect((err as FhirError).status).toBe(400);
      expect((err as FhirError).message).not.toContain('secret');
    }
  });
});

describe('parsing', () => {
  test('unknown parameters and unsupported modifiers are reported, or refused when strict', () => {
    const req = lenient('Patient', [['nonsense', '1'], ['gender:above', 'http://x/vs'], ['birthdate:exact', '2000'], ['_filter', 'x'], ['gender', 'male']]);
    expect(req.ignored.map((i) => i.name)).toEqual(['nonsense', 'gender:above', 'birthdate:exact', '_filter']);
    expect(req.clauses.map((c) => c.code)).toEqual(['gender']);
    expect(() => strict('Patient', [['nonsense', '1']])).toThrow(FhirError);
    expect(() => strict('Patient', [['gender:below', 'x']])).toThrow(FhirError);
    expect(() => strict('Patient', [['name:missing', 'maybe']])).toThrow(FhirError);
    expect(() => strict('Observation', [['subject:Device.name', 'x']])).toThrow(FhirError);
  });

  test('chains resolve their targets; _has checks the reference direction', () => {
    const chain = strict('Observation', [['subject.name', 'x']]).clauses[0];
    expect(chain.path[0]).toMatchObject({ kind: 'chain', targets: ['Patient', 'Location'] });
    expect(chain.path[0].kind === 'chain' && chain.path[0].targets).not.toContain('Device');
    expect(() => strict('Patient', [['_has:Observation:performer:code', 'x']])).not.toThrow();
    expect(() => strict('Patient', [['_has:Observation:code:code', 'x']])).toThrow(FhirError);
    expect(() => strict('Patient', [['_has:Observation:subject:a.b.c.d.e.f', 'x']])).toThrow(FhirError);
  });

  test('_sort keys and _include values are validated', () => {
    expect(planSort('Patient', '-birthdate,_id', { strict: true, phi: open }).keys.map((k) => [k.type, k.desc])).toEqual([['bigint', true], ['text', false]]);
    expect(planSort('Patient', 'birthdate', { strict: false, phi: { sealed: true } }).ignored).toHaveLength(1);
    expect(() => planSort('Observation', 'code-value-quantity', { strict: true, phi: open })).toThrow(FhirError);
    expect(parseIncludes('Observation', [{ rev: false, value: 'Observation:subject:Patient' }], { strict: true, phi: open }).list).toEqual([
      { rev: false, sourceType: 'Observation', params: ['subject'], targetType: 'Patient', iterate: false },
    ]);
    expect(parseIncludes('Observation', [{ rev: false, value: 'Patient:organization' }], { strict: false, phi: open }).ignored).toHaveLength(1);
    expect(() => parseIncludes('Observation', [{ rev: true, value: 'Nope:x' }], { strict: true, phi: open })).toThrow(FhirError);
  });
});
