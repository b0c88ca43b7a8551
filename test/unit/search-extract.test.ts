// Index extraction (https://hl7.org/fhir/R4/search.html#ptypes): every official expression compiles and
// evaluates over the official examples, and each datatype yields the rows the spec's matching rules need.
import { describe, expect, test } from '@jest/globals';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Resource } from 'fhir/r4.js';
import { resourceTypeInfo, searchParamsFor } from '../../src/fhir/definitions.js';
import { findPackageRoot } from '../../src/fhir/package-root.js';
import { compileExpression, rewriteExpression, splitUnion } from '../../src/search/expressions.js';
import { extractIndexRows, extractionFailures, type IndexRows } from '../../src/search/index-extract.js';
import { paramsOf, supportedSearchParams } from '../../src/search/registry.js';
import { phiParamIndexed, protectIndexValue } from '../../src/search/phi-seam.js';
import { dateRange, MAX_MS } from '../../src/search/types/date.js';
import { parseNumberQuery } from '../../src/search/types/number.js';
import { soundex } from '../../src/search/types/string.js';

const rowsOf = (r: IndexRows, kind: keyof IndexRows, param: string) => ((r[kind] ?? []) as { param: string }[]).filter((x) => x.param === param);

describe('expressions', () => {
  test('every official expression of every type compiles once rewritten; resolve() and `as` are gone', () => {
    let n = 0;
    for (const { type } of resourceTypeInfo()) {
      for (const spec of paramsOf(type).indexed) {
        const exprs = [spec.def.expression!, ...(spec.components ?? []).map((c) => c.expression)];
        for (const e of exprs) {
          const r = rewriteExpression(e);
          expect(r).not.toMatch(/resolve\(\)| as [A-Za-z]|\.as\(/);
          expect(() => compileExpression(e)).not.toThrow();
          n++;
        }
      }
    }
    expect(n).toBeGreaterThan(2400);
  });

  test('top-level unions split outside parentheses and quotes', () => {
    expect(splitUnion("(a.b as X) | c.where(d = 'x|y') | e")).toEqual(['(a.b as X)', "c.where(d = 'x|y')", 'e']);
  });

  test('the supported set covers every official parameter but the special and full-text ones', () => {
    let official = 0;
    let supported = 0;
    for (const { type } of resourceTypeInfo()) {
      const p = paramsOf(type);
      official += searchParamsFor(type).length;
      supported += p.supported.size;
      for (const [code, why] of p.unsupported) expect([code, why]).toEqual([code, expect.stringMatching(/./)]);
    }
    // Not served: _filter and _query on each of the 146 types, and a few specials.
    expect(official - supported).toBeLessThan(2 * 146 + 10);
    expect(supported).toBeGreaterThan(2500);
    const obs = supportedSearchParams('Observation').map((s) => s.name);
    expect(obs).toEqual(expect.arrayContaining(['_id', '_lastUpdated', 'code', 'date', 'patient', 'value-quantity', 'component-code-value-quantity', 'code-value-concept']));
    expect(supportedSearchParams('Patient').map((s) => s.name)).not.toContain('name');
    expect(supportedSearchParams('Patient', { sealed: false }).map((s) => s.name)).toEqual(expect.arrayContaining(['name', 'birthdate', 'identifier']));
  });
});

describe('extraction over the official examples', () => {
  test('no expression throws on any example, and the examples yield rows', () => {
    const dir = join(findPackageRoot(), 'node_modules', 'hl7.fhir.r4.examples');
    const before = extractionFailures.count;
    let resources = 0;
    let rows = 0;
    for (const f of readdirSync(dir).filter((x) => x.endsWith('.json') && !x.startsWith('package'))) {
      let r: Resource;
      try {
        r = JSON.parse(readFileSync(join(dir, f), 'utf8')) as Resource;
      } catch {
        continue;
      }
      if (!r.resourceType || !paramsOf(r.resourceType).indexed.length) continue;
      const out = extractIndexRows(r);
      resources++;
      rows += Object.values(out).reduce((s, l) => s + (l as unknown[]).length, 0);
    }
    expect(resources).toBeGreaterThan(2000);
    expect(rows / resources).toBeGreaterThan(5);
    expect(extractionFailures.count - before).toBe(0);
  });
});

describe('values by datatype', () => {
  test('dates: the interval of the precision, time zones, invalid values', () => {
    expect(dateRange('2013')).toEqual({ low: Date.UTC(2013, 0, 1), high: Date.UTC(2014, 0, 1) });
    expect(dateRange('2013-02')).toEqual({ low: Date.UTC(2013, 1, 1), high: Date.UTC(2013, 2, 1) });
    expect(dateRange('2013-02-28')).toEqual({ low: Date.UTC(2013, 1, 28), high: Date.UTC(2013, 2, 1) });
    expect(dateRange('2013-01-14T10:00+01:00')).toEqual({ low: Date.UTC(2013, 0, 14, 9), high: Date.UTC(2013, 0, 14, 9, 1) });
    expect(dateRange('2013-01-14T10:00:00.5Z')).toEqual({ low: Date.UTC(2013, 0, 14, 10, 0, 0, 500), high: Date.UTC(2013, 0, 14, 10, 0, 0, 600) });
    expect(dateRange('0050-01-01')!.low).toBe(new Date('0050-01-01T00:00:00Z').getTime());
    for (const bad of ['2013-13', '2013-02-30', '2013-01-01T25:00Z', 'today', '13-01-01']) expect(dateRange(bad)).toBeUndefined();
    const rows = extractIndexRows({ resourceType: 'Encounter', status: 'finished', class: { code: 'x' }, period: { start: '2020-01-01' } } as Resource);
    expect(rowsOf(rows, 'date', 'date')).toEqual([{ param: 'date', low: Date.UTC(2020, 0, 1), high: MAX_MS }]);
  });

  test('dates: the string variant of a choice is free text, not a date, even when it reads like one', () => {
    const plan = (detail: Record<string, unknown>) =>
      rowsOf(extractIndexRows({ resourceType: 'CarePlan', status: 'active', intent: 'plan', subject: { reference: 'Patient/p' }, activity: [{ detail: { status: 'scheduled', ...detail } }] } as Resource), 'date', 'activity-date');
    expect(plan({ scheduledString: '2011-06-27T09:30:10+01:00' })).toEqual([]);
    expect(plan({ scheduledPeriod: { start: '2011-06-27', end: '2011-06-27' } })).toEqual([{ param: 'activity-date', low: Date.UTC(2011, 5, 27), high: Date.UTC(2011, 5, 28) }]);
    const imm = (occ: Record<string, unknown>) =>
      rowsOf(extractIndexRows({ resourceType: 'Immunization', status: 'completed', vaccineCode: { text: 'x' }, patient: { reference: 'Patient/p' }, ...occ } as Resource), 'date', 'date');
    expect(imm({ occurrenceString: '2013' })).toEqual([]);
    expect(imm({ occurrenceDateTime: '2013' })).toEqual([{ param: 'date', low: Date.UTC(2013, 0, 1), high: Date.UTC(2014, 0, 1) }]);
  });

  test('numbers: implicit precision of the search value', () => {
    expect(parseNumberQuery('100', 'n')).toEqual({ prefix: 'eq', value: '100', half: '5e-1' });
    expect(parseNumberQuery('gt100.00', 'n')).toEqual({ prefix: 'gt', value: '100.00', half: '5e-3' });
    expect(parseNumberQuery('1e2', 'n')).toEqual({ prefix: 'eq', value: '1e2', half: '5e1' });
    expect(() => parseNumberQuery('1,5', 'n')).toThrow();
  });

  test('tokens: Identifier (with :of-type rows), ContactPoint, CodeableConcept text, boolean, code', () => {
    const rows = extractIndexRows({
      resourceType: 'Patient', active: true, gender: 'male',
      identifier: [{ system: 'urn:mrn', value: '42', type: { coding: [{ system: 'urn:t', code: 'MR' }], text: 'Medical Record' } }],
      telecom: [{ system: 'email', value: 'a@b.org' }],
      maritalStatus: { coding: [{ system: 'urn:ms', code: 'M', display: 'Married' }], text: 'Wed' },
    } as Resource);
    expect(rowsOf(rows, 'token', 'identifier')).toEqual([{ param: 'identifier', system: 'urn:mrn', code: '42', text: 'medical record' }]);
    expect(rowsOf(rows, 'token', 'identifier:of-type')).toEqual([{ param: 'identifier:of-type', system: 'urn:t', code: 'MR|42' }]);
    expect(rowsOf(rows, 'token', 'email')).toEqual([{ param: 'email', system: null, code: 'a@b.org' }]);
    expect(rowsOf(rows, 'token', 'active')).toEqual([{ param: 'active', system: null, code: 'true' }]);
    expect(rowsOf(rows, 'token', 'gender')).toEqual([{ param: 'gender', system: null, code: 'male' }]);
  });

  test('references: relative, absolute, identifier, contained; resolve() is a type test', () => {
    const obs = (subject: Record<string, unknown>) => extractIndexRows({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject } as Resource);
    expect(rowsOf(obs({ reference: 'Patient/p1/_history/2' }), 'reference', 'patient')).toEqual([{ param: 'patient', targetType: 'Patient', targetId: 'p1', url: null, version: null }]);
    expect(rowsOf(obs({ reference: 'Group/g1' }), 'reference', 'patient')).toEqual([]);
    expect(rowsOf(obs({ reference: 'http://x.org/fhir/Patient/p2' }), 'reference', 'patient')).toEqual([{ param: 'patient', targetType: 'Patient', targetId: null, url: 'http://x.org/fhir/Patient/p2', version: null }]);
    expect(rowsOf(obs({ reference: '#contained' }), 'reference', 'subject')).toEqual([]);
    expect(rowsOf(obs({ identifier: { system: 's', value: 'v' } }), 'token', 'subject:identifier')).toEqual([{ param: 'subject:identifier', system: 's', code: 'v' }]);
    expect(rowsOf(obs({ type: 'Patient', identifier: { value: 'v' } }), 'token', 'patient:identifier')).toHaveLength(1);
  });

  test('long values are keyed by hash, and repeated values give one row', () => {
    const long = 'x'.repeat(300);
    const rows = extractIndexRows({ resourceType: 'Patient', identifier: [{ value: long }, { value: long }], name: [{ given: ['Ann'] }, { given: ['Ann'] }] } as Resource);
    const id = rowsOf(rows, 'token', 'identifier') as unknown as { code: string }[];
    expect(id).toHaveLength(1);
    expect(id[0].code).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(rowsOf(rows, 'string', 'given')).toHaveLength(1);
  });

  test('phonetic: American Soundex', () => {
    expect(['Robert', 'Rupert', 'Ashcraft', 'Tymczak', 'Pfister', 'Smith', 'Smyth'].map((w) => soundex(w.toLowerCase()))).toEqual(['R163', 'R163', 'A261', 'T522', 'P236', 'S530', 'S530']);
  });
});

describe('the PHI seam', () => {
  test('sealed PHI values are withheld, everything else passes unchanged', () => {
    const row = { param: 'family', norm: 'x', exact: 'X' };
    expect(protectIndexValue('Patient', 'family', row, { sealed: true })).toBeUndefined();
    expect(protectIndexValue('Patient', 'family', row, { sealed: false })).toBe(row);
    expect(protectIndexValue('Patient', 'identifier:of-type', row, { sealed: true })).toBeUndefined(); // identifiers are sealed too
    expect(protectIndexValue('Observation', 'identifier:of-type', row, { sealed: true })).toBe(row);
    expect(protectIndexValue('Observation', 'code', row, { sealed: true })).toBe(row);
    expect(phiParamIndexed('Practitioner', 'name', { sealed: true })).toBe(true); // not sealed by the default policy
    expect(phiParamIndexed('Patient', 'birthdate', { sealed: true })).toBe(false);
  });
});
