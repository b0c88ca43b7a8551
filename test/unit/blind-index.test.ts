import { describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { BlindIndexer, isProtectedParam, MAX_PREFIX, normaliseString } from '../../src/crypto/blind-index.js';

describe('blind indexes', () => {
  const bi = new BlindIndexer(randomBytes(32));

  test('normalisation is case- and accent-insensitive (search.html#string)', () => {
    expect(normaliseString('  Agustín  FONSECA ')).toBe('agustin fonseca');
    expect(normaliseString('Müller')).toBe(normaliseString('muller'));
  });

  test('prefixes of the normalised value match a search prefix; values never appear in clear', () => {
    const stored = bi.prefixes('Patient', 'family', 'Fonseca');
    expect(stored).toHaveLength(7);
    expect(stored).toContain(bi.prefixes('Patient', 'family', 'fon')[2]);
    expect(stored.join('')).not.toMatch(/fonseca/i);
    expect(bi.prefixes('Patient', 'family', 'Constantinopoulos')).toHaveLength(MAX_PREFIX);
  });

  test('domains separate parameters and types; keys separate deployments', () => {
    expect(bi.exact('Patient', 'family', 'x')).not.toBe(bi.exact('Patient', 'given', 'x'));
    expect(bi.exact('Patient', 'family', 'x')).not.toBe(bi.exact('Person', 'family', 'x'));
    expect(new BlindIndexer(randomBytes(32)).exact('Patient', 'family', 'x')).not.toBe(bi.exact('Patient', 'family', 'x'));
    expect(bi.token('Patient', 'identifier', 'urn:mrn', '123').systemCode).not.toBe(bi.token('Patient', 'identifier', null, '123').systemCode);
  });

  test('dates give day, month and year MACs', () => {
    const d = bi.date('Patient', 'birthdate', '1961-07-04');
    expect(d.year).toBe(bi.date('Patient', 'birthdate', '1961').year);
    expect(d.day).toBeDefined();
    expect(bi.date('Patient', 'birthdate', '1961').day).toBeUndefined();
  });

  test('the protected parameter table follows the PHI policy', () => {
    expect(isProtectedParam('Patient', 'birthdate')).toBe(true);
    expect(isProtectedParam('Patient', 'gender')).toBe(false);
    expect(isProtectedParam('Observation', 'code')).toBe(false);
    expect(() => new BlindIndexer(randomBytes(8))).toThrow();
  });
});
