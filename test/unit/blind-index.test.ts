import { describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import type { Patient } from 'fhir/r4.js';
import { BlindIndexer, isProtectedParam, MAX_PREFIX, normaliseString, PROTECTED_SEARCH_PARAMS } from '../../src/crypto/blind-index.js';
import { checkRing, generateKeyRing, rotateBlind } from '../../src/crypto/key-ring.js';
import { loadPhiPolicy, PhiPolicy } from '../../src/crypto/phi-policy.js';
import { resourceTypeInfo } from '../../src/fhir/definitions.js';
import { BlindIndex, exactUnit, expressionPaths, unitsWithin } from '../../src/search/blind.js';
import { extractIndexRows } from '../../src/search/index-extract.js';
import { dateRange } from '../../src/search/types/date.js';

const types = resourceTypeInfo().map((t) => t.type);

describe('blind indexes', () => {
  const bi = new BlindIndexer(randomBytes(32));

  test('normalisation is case- and accent-insensitive (search.html#string)', () => {
    expect(normaliseString('  Agustín  FONSECA ')).toBe('agustin fonseca');
    expect(normaliseString('Müller')).toBe(normaliseString('muller'));
  });

  test('every prefix of the normalised value up to MAX_PREFIX has a MAC; values never appear in clear', () => {
    const stored = bi.prefixes('Patient', 'family', 'fonseca');
    expect(stored).toHaveLength(7);
    expect(stored[2]).toBe(bi.prefix('Patient', 'family', 'fon'));
    expect(stored.join('')).not.toMatch(/fonseca/i);
    expect(bi.prefixes('Patient', 'family', 'x'.repeat(MAX_PREFIX + 10))).toHaveLength(MAX_PREFIX);
  });

  test('domains separate parameters, types and kinds; keys separate deployments; token pairs are unambiguous', () => {
    expect(bi.exact('Patient', 'family', 'x')).not.toBe(bi.exact('Patient', 'given', 'x'));
    expect(bi.exact('Patient', 'family', 'x')).not.toBe(bi.exact('Person', 'family', 'x'));
    expect(bi.exact('Patient', 'family', 'x')).not.toBe(bi.prefix('Patient', 'family', 'x'));
    expect(new BlindIndexer(randomBytes(32)).exact('Patient', 'family', 'x')).not.toBe(bi.exact('Patient', 'family', 'x'));
    expect(bi.token('Patient', 'identifier', 'urn:mrn', '123').systemCode).not.toBe(bi.token('Patient', 'identifier', null, '123').systemCode);
    // system "a|b" + code "c" is not system "a" + code "b|c"
    expect(bi.tokenSystemCode('Patient', 'identifier', 'a|b', 'c')).not.toBe(bi.tokenSystemCode('Patient', 'identifier', 'a', 'b|c'));
    expect(bi.mac('d', 'v')).toMatch(/^[0-9a-f]{32}$/);
  });

  test('rotating the blind key replaces it (new kid) and keeps the content keys', () => {
    const ring = generateKeyRing();
    const next = rotateBlind(ring);
    expect(checkRing(next)).toBe(next);
    expect(next.blind.kid).not.toBe(ring.blind.kid);
    expect(next.blind.k).not.toBe(ring.blind.k);
    expect(next.keys).toEqual(ring.keys);
    expect(next.active).toBe(ring.active);
  });

  test('dates give day, month and year MACs', () => {
    const d = bi.date('Patient', 'birthdate', '1961-07-04');
    expect(d.year).toBe(bi.date('Patient', 'birthdate', '1961').year);
    expect(d.day).toBeDefined();
    expect(bi.date('Patient', 'birthdate', '1961').day).toBeUndefined();
  });

  test('calendar units an interval lies within, and the unit a search value is', () => {
    const r = (s: string) => dateRange(s)!;
    expect(unitsWithin(r('1961-07-04').low, r('1961-07-04').high)).toEqual(['1961', '1961-07', '1961-07-04']);
    expect(unitsWithin(r('1961-07').low, r('1961-07').high)).toEqual(['1961', '1961-07']);
    expect(unitsWithin(r('0061').low, r('0061').high)).toEqual(['0061']);
    expect(unitsWithin(r('1961-07-04T23:59:00Z').low, r('1961-07-04T23:59:00Z').high)).toEqual(['1961', '1961-07', '1961-07-04']);
    expect(unitsWithin(r('1961-12-31').low, r('1962-01-01').high)).toEqual([]);
    expect(exactUnit(r('1961-02').low, r('1961-02').high)).toBe('1961-02');
    expect(exactUnit(r('2000-02-29').low, r('2000-02-29').high)).toBe('2000-02-29');
    expect(exactUnit(r('1961-02-03T10:00').low, r('1961-02-03T10:00').high)).toBeUndefined();
  });

  test('expression paths stop at function calls and ignore type tests', () => {
    expect(expressionPaths('Patient', "Patient.telecom.where(system='phone')")).toEqual(['telecom']);
    expect(expressionPaths('Patient', '(Patient.deceased as dateTime)')).toEqual(['deceased']);
    expect(expressionPaths('Patient', 'Patient.name.family')).toEqual(['name.family']);
    expect(expressionPaths('Person', 'Person.link.target.where(resolve() is Patient)')).toEqual(['link.target']);
    expect(expressionPaths('Patient', 'Resource.meta.tag')).toEqual(['meta.tag']);
    expect(expressionPaths('Observation', 'Observation.subject')).toEqual(['subject']);
  });
});

describe('protected parameters derived from the policy', () => {
  const policy = loadPhiPolicy(undefined, types);
  const index = new BlindIndex(new BlindIndexer(randomBytes(32)), 'blind-test', policy);

  test('the default policy gives exactly the documented table, every parameter served by the blind index', () => {
    for (const type of types) {
      const { blind, withheld } = index.protectedParams(type);
      expect([type, [...blind].sort()]).toEqual([type, [...(PROTECTED_SEARCH_PARAMS[type] ?? [])].sort()]);
      expect([type, withheld]).toEqual([type, []]);
    }
    expect([...index.protectedTypes()].sort()).toEqual(['AuditEvent', 'List', 'Patient', 'Person', 'RelatedPerson']);
    expect(isProtectedParam('Patient', 'gender')).toBe(false);
    expect(index.isProtected('Patient', 'identifier:of-type')).toBe(true);
    expect(index.isProtected('Patient', 'general-practitioner')).toBe(false);
    expect(() => new BlindIndexer(randomBytes(8))).toThrow();
  });

  test('a custom policy protects what it names: blind where a blind index serves it, withheld otherwise', () => {
    const custom = new PhiPolicy({ resources: { Practitioner: ['name'], Patient: ['generalPractitioner', 'birthDate'] } }, types);
    const c = new BlindIndex(new BlindIndexer(randomBytes(32)), 'k', custom);
    expect(c.protectedParams('Practitioner').blind.sort()).toEqual(['family', 'given', 'name', 'phonetic']);
    expect(c.protectedParams('Patient')).toEqual({ blind: ['birthdate'], withheld: ['general-practitioner'] });
    expect(c.isBlind('Patient', 'general-practitioner')).toBe(false);
    expect(c.isProtected('Patient', 'general-practitioner:identifier')).toBe(true);
  });

  test('blind rows of a patient: prefixes, exact values, tokens and dates as MACs, nothing else', () => {
    const p: Patient = {
      resourceType: 'Patient',
      gender: 'female',
      name: [{ family: 'Fonseca', given: ['Ana'] }],
      birthDate: '1961-07-04',
      identifier: [{ system: 'urn:mrn', value: '123' }, { value: 'nosys' }],
      telecom: [{ system: 'phone', value: '555' }],
    };
    const rows = index.rowsOf('Patient', extractIndexRows(p));
    const bi = (index as unknown as { indexer: BlindIndexer }).indexer;
    const has = (param: string, mac: string) => rows.some((r) => r.param === param && r.mac === mac);
    expect(has('family', bi.prefix('Patient', 'family', 'fons'))).toBe(true);
    expect(has('family', bi.exact('Patient', 'family', 'Fonseca'))).toBe(true);
    expect(has('name', bi.prefix('Patient', 'name', 'an'))).toBe(true);
    expect(has('identifier', bi.tokenSystemCode('Patient', 'identifier', 'urn:mrn', '123'))).toBe(true);
    expect(has('identifier', bi.tokenCode('Patient', 'identifier', '123'))).toBe(true);
    expect(has('identifier', bi.tokenSystem('Patient', 'identifier', 'urn:mrn'))).toBe(true);
    expect(has('identifier', bi.tokenSystemCode('Patient', 'identifier', null, 'nosys'))).toBe(true);
    expect(has('phone', bi.tokenCode('Patient', 'phone', '555'))).toBe(true);
    expect(has('birthdate', bi.dateUnit('Patient', 'birthdate', '1961-07'))).toBe(true);
    expect(rows.some((r) => r.param === 'gender')).toBe(false);
    // MACs only: 32 hex digits each (digits in a value could match hex by chance, so the letters are checked)
    expect(rows.every((r) => /^[0-9a-f]{32}$/.test(r.mac))).toBe(true);
    expect(JSON.stringify(rows)).not.toMatch(/fonseca|ana|nosys|urn/i);
    // sorted by (param, mac): the stored order says nothing about which prefix is which
    const keys = rows.map((r) => `${r.param} ${r.mac}`);
    expect(keys).toEqual([...keys].sort());
  });
});
