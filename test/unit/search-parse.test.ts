import { describe, expect, test } from '@jest/globals';
import { canonicalCriteria, parseCriteria, parseSearch, splitOr, splitToken } from '../../src/search/parse.js';
import { planWhere } from '../../src/search/plan.js';
import { FhirError } from '../../src/fhir/errors.js';

describe('search parsing (search.html#escaping)', () => {
  test('comma separates OR values unless escaped', () => {
    expect(splitOr('a,b')).toEqual(['a', 'b']);
    expect(splitOr('a\\,b,c')).toEqual(['a\\,b', 'c']);
  });

  test('token forms: code, system|code, |code, system|', () => {
    expect(splitToken('123')).toEqual({ code: '123', hasBar: false });
    expect(splitToken('urn:x|123')).toEqual({ system: 'urn:x', code: '123', hasBar: true });
    expect(splitToken('|123')).toEqual({ code: '123', hasBar: true });
    expect(splitToken('urn:x|')).toEqual({ system: 'urn:x', hasBar: true });
    expect(splitToken('a\\|b|c')).toEqual({ system: 'a|b', code: 'c', hasBar: true });
  });

  test('criteria are strict and canonical regardless of order', () => {
    const a = parseCriteria('Observation', 'identifier=urn:x|1&_id=abc');
    const b = parseCriteria('Observation', 'Observation?_id=abc&identifier=urn:x|1');
    expect(canonicalCriteria(a)).toBe(canonicalCriteria(b));
    // name and identifier are PHI: with sealing (the default) and no blind index they are refused, never answered wrongly
    expect(() => parseCriteria('Patient', 'identifier=urn:x|1')).toThrow(FhirError);
    expect(() => parseCriteria('Patient', 'name=smith')).toThrow(FhirError);
    expect(parseCriteria('Patient', 'name=smith', { phi: { sealed: false } }).clauses[0].code).toBe('name');
    expect(() => parseCriteria('Patient', 'nonsense=1')).toThrow(FhirError);
    expect(() => parseCriteria('Patient', 'identifier:in=http://x/vs')).toThrow(FhirError);
    expect(parseCriteria('Observation', 'identifier:text=x').clauses[0].modifier).toBe('text');
    expect(() => parseCriteria('Patient', '')).toThrow(FhirError);
    expect(() => parseCriteria('Patient', 'Observation?identifier=x')).toThrow(FhirError);
  });

  test('lenient search reports what it ignores; values are bound, never spliced', () => {
    const req = parseSearch('Observation', [['identifier', "x'; drop table resource; --"], ['bogus', '1']], { strict: false });
    expect(req.ignored.map((i) => i.name)).toEqual(['bogus']);
    const plan = planWhere(req);
    expect(plan.sql).not.toContain('drop table');
    expect(plan.bindings).toContain("x'; drop table resource; --");
  });
});
