// SMART scope parsing (scopes-and-launch-context.html): v2 letters and constraints, v1 mapping, and
// malformed scopes ignored rather than widened.
import { describe, expect, test } from '@jest/globals';
import { parseScope, parseScopes } from '../../src/auth/scopes.js';
import { jwksMaxAge } from '../../src/auth/token-verifier.js';

const letters = (s: string) => [...(parseScope(s)?.letters ?? [])].join('');

describe('SMART scopes', () => {
  test('v2 letters in order, any non-empty subsequence of cruds', () => {
    expect(letters('patient/Observation.rs')).toBe('rs');
    expect(letters('user/*.cruds')).toBe('cruds');
    expect(letters('system/Patient.c')).toBe('c');
    expect(letters('system/Patient.d')).toBe('d');
    expect(parseScope('patient/Observation.rs')).toMatchObject({ context: 'patient', type: 'Observation' });
  });

  test('v1 read, write and * map as the specification says', () => {
    expect(letters('patient/Observation.read')).toBe('rs');
    expect(letters('user/Observation.write')).toBe('cud');
    expect(letters('system/*.*')).toBe('cruds');
  });

  test('out-of-order, repeated or unknown letters, bad types and bad contexts are ignored, not widened', () => {
    for (const s of ['patient/Observation.sr', 'patient/Observation.rr', 'patient/Observation.rx', 'patient/Observation.', 'patient/observation.rs', 'patient/.rs', 'admin/*.cruds', 'patient/Observation.READ', 'patient/Obs*.rs', 'patient/Observation.rs?', 'patient/Observation.read?category=x', 'patient/Observation.rs?=x', 'patient/Observation.rs?category=']) {
      expect([s, parseScope(s)]).toEqual([s, undefined]);
    }
    const p = parseScopes('openid fhirUser launch/patient patient/Observation.sr patient/Patient.r offline_access');
    expect(p.grants.map((g) => g.scope)).toEqual(['patient/Patient.r']);
    expect(p.ignored).toEqual(['patient/Observation.sr']);
    expect(p.other).toEqual(['openid', 'fhirUser', 'launch/patient', 'offline_access']);
  });

  test('v2 constraints are kept as pairs (several are ANDed); several grants on a type stay separate (ORed)', () => {
    const g = parseScope('patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory&code=http://loinc.org|1234-5');
    expect(g?.constraint).toEqual([
      ['category', 'http://terminology.hl7.org/CodeSystem/observation-category|laboratory'],
      ['code', 'http://loinc.org|1234-5'],
    ]);
    expect(parseScopes('patient/Observation.rs?category=a patient/Observation.rs?category=b').grants).toHaveLength(2);
  });

  test('JWKS caching follows Cache-Control max-age within [60 s, 24 h]; 5 minutes without', () => {
    expect(jwksMaxAge('public, max-age=600')).toBe(600);
    expect(jwksMaxAge('max-age=5')).toBe(60);
    expect(jwksMaxAge('max-age=9999999')).toBe(86400);
    expect(jwksMaxAge(null)).toBe(300);
    expect(jwksMaxAge('no-store')).toBe(60);
  });
});
