import { describe, expect, test } from '@jest/globals';
import { bodyKind, parseJson } from '../../src/http/body.js';
import { FhirError } from '../../src/fhir/errors.js';

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return e instanceof FhirError ? `${e.status}:${e.code}` : 'other';
  }
  return undefined;
}

describe('request bodies', () => {
  test('valid JSON parses', () => {
    expect(parseJson(Buffer.from('{"resourceType":"Patient","name":[{"given":["a"]}]}'))).toEqual({ resourceType: 'Patient', name: [{ given: ['a'] }] });
  });

  test('bad JSON, empty bodies, deep nesting and prototype keys are 400s that do not echo the body', () => {
    expect(code(() => parseJson(Buffer.from('{"secret-name": ')))).toBe('400:invalid-json');
    try {
      parseJson(Buffer.from('{"family":"Smithson", oops}'));
    } catch (e) {
      expect((e as Error).message).not.toContain('Smithson');
    }
    expect(code(() => parseJson(Buffer.alloc(0)))).toBe('400:invalid-json');
    expect(code(() => parseJson(Buffer.from('['.repeat(10000) + ']'.repeat(10000))))).toBe('400:invalid-json');
    expect(code(() => parseJson(Buffer.from('{"a":'.repeat(101) + '1' + '}'.repeat(101))))).toBe('400:invalid-json');
    expect(code(() => parseJson(Buffer.from('{"a":'.repeat(99) + '1' + '}'.repeat(99))))).toBeUndefined();
    expect(code(() => parseJson(Buffer.from('{"__proto__":{"x":1}}')))).toBe('400:invalid-json');
    expect(code(() => parseJson(Buffer.from('{"a":[{"constructor":1}]}')))).toBe('400:invalid-json');
    expect(({} as Record<string, unknown>).x).toBeUndefined();
  });

  test('media types', () => {
    expect(bodyKind('application/fhir+json; charset=utf-8', ['fhir-json'])).toBe('fhir-json');
    expect(bodyKind('application/json', ['fhir-json'])).toBe('fhir-json');
    expect(bodyKind('application/fhir+json; fhirVersion=4.0', ['fhir-json'])).toBe('fhir-json');
    expect(code(() => bodyKind('application/fhir+json; fhirVersion=3.0', ['fhir-json']))).toBe('415:unsupported-media-type');
    expect(code(() => bodyKind('application/fhir+xml', ['fhir-json']))).toBe('415:unsupported-media-type');
    expect(code(() => bodyKind('application/json; charset=latin1', ['fhir-json']))).toBe('415:unsupported-media-type');
    expect(code(() => bodyKind(undefined, ['fhir-json']))).toBe('415:unsupported-media-type');
    expect(code(() => bodyKind('application/json-patch+json', ['fhir-json']))).toBe('415:unsupported-media-type');
  });
});
