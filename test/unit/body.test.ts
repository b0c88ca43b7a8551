import { describe, expect, test } from '@jest/globals';
import { bodyKind, countJsonValues, invalidUtf8Offset, parseForm, parseJson } from '../../src/http/body.js';
import { negotiate } from '../../src/http/format.js';
import { pruneEmpty } from '../../src/http/respond.js';
import { findBadString } from '../../src/fhir/strings.js';
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

  function message(fn: () => unknown): string {
    try {
      fn();
    } catch (e) {
      return (e as Error).message;
    }
    return '';
  }

  test('invalid UTF-8 is a 400 naming the byte offset, never decoded to U+FFFD', () => {
    const head = Buffer.from('{"resourceType":"Patient","name":[{"family":"');
    for (const bad of [[0xff], [0xc3], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82]]) {
      const buf = Buffer.concat([head, Buffer.from(bad), Buffer.from('x"}]}')]);
      expect(code(() => parseJson(buf))).toBe('400:invalid-json');
      expect(message(() => parseJson(buf))).toContain(`byte offset ${head.length}`);
    }
    // Well-formed multi-byte text passes untouched, BMP and astral alike.
    expect(parseJson(Buffer.from('{"resourceType":"Patient","name":[{"family":"Müller 😀 Łódź"}]}'))).toEqual({ resourceType: 'Patient', name: [{ family: 'Müller 😀 Łódź' }] });
    expect(invalidUtf8Offset(Buffer.from('aé😀'))).toBe(-1);
    expect(invalidUtf8Offset(Buffer.from([0x61, 0x62, 0x80]))).toBe(2);
  });

  test('duplicate member names at any depth are a 400 naming the path', () => {
    expect(code(() => parseJson(Buffer.from('{"resourceType":"Patient","active":true,"active":false}')))).toBe('400:invalid-json');
    const deep = '{"resourceType":"Patient","name":[{"given":["a"]},{"family":"x","given":["b"],"family":"y"}]}';
    expect(code(() => parseJson(Buffer.from(deep)))).toBe('400:invalid-json');
    expect(message(() => parseJson(Buffer.from(deep)))).toBe('the member "family" appears twice in the same object at Patient.name[1]');
    // An escaped spelling of the same name is the same name.
    expect(code(() => parseJson(Buffer.from('{"a":1,"\\u0061":2}')))).toBe('400:invalid-json');
    // The same name in sibling objects, or as a string value, is fine.
    expect(parseJson(Buffer.from('{"a":[{"k":1},{"k":2}],"b":{"k":"k"},"k":"a"}'))).toEqual({ a: [{ k: 1 }, { k: 2 }], b: { k: 'k' }, k: 'a' });
    // Quotes, backslashes and braces inside strings do not confuse the scan.
    expect(parseJson(Buffer.from('{"a":"x\\"}{,\\\\","b":"[\\"a\\",","c":"\\\\"}'))).toEqual({ a: 'x"}{,\\', b: '["a",', c: '\\' });
  });

  test('NUL and lone surrogates in strings and names are a 400 naming the JSON path', () => {
    const cases: [string, string][] = [
      ['{"resourceType":"Patient","name":[{"family":"a\\u0000b"}]}', 'Patient.name[0].family'],
      ['{"resourceType":"Patient","name":[{"given":["ok","\\ud800"]}]}', 'Patient.name[0].given[1]'],
      ['{"resourceType":"Patient","name":[{"given":["\\udc00x"]}]}', 'Patient.name[0].given[0]'],
      ['{"resourceType":"Patient","x\\u0000":1}', 'Patient'],
      ['{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"\\ud83d"}}]}', 'Bundle.entry[0].resource.id'],
    ];
    for (const [json, path] of cases) {
      expect(code(() => parseJson(Buffer.from(json)))).toBe('400:invalid-json');
      expect(message(() => parseJson(Buffer.from(json)))).toContain(path);
    }
    // A proper surrogate pair, escaped or literal, is a character like any other.
    expect(parseJson(Buffer.from('{"a":"\\ud83d\\ude00","b":"😀"}'))).toEqual({ a: '😀', b: '😀' });
    expect(findBadString({ a: [{ b: 'x\u0000' }] }, 'v')).toEqual({ path: 'v.a[0].b', problem: 'a NUL character (U+0000)' });
    expect(findBadString({ a: ['\ud800'] }, 'v')?.path).toBe('v.a[0]');
    expect(findBadString({ a: ['\ud83d\ude00'] }, 'v')).toBeUndefined();
  });

  test('form bodies refuse NUL and malformed UTF-8', () => {
    expect(parseForm(Buffer.from('name=M%C3%BCller&_count=5'))).toEqual([['name', 'Müller'], ['_count', '5']]);
    expect(code(() => parseForm(Buffer.from('name=a%00b')))).toBe('400:invalid-request');
    expect(code(() => parseForm(Buffer.from([0x6e, 0x3d, 0xff])))).toBe('400:invalid-json');
  });

  test('a body with more JSON values than the limit is a 413 before JSON.parse runs (issue 14: parse stalls)', () => {
    // 30 MB of empty objects held the event loop for 12 s in JSON.parse; counted, it is refused at once.
    const objects = Buffer.from(`{"resourceType":"Observation","category":[${'{},'.repeat(5_000_000)}{}]}`);
    const t0 = performance.now();
    expect(code(() => parseJson(objects))).toBe('413:too-large');
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(countJsonValues(Buffer.from('{"a":[1,2,{"b":"x,{["}],"c":"\\\",["}'))).toBe(6);
    // The limit is configurable; separators inside strings do not count.
    expect(code(() => parseJson(Buffer.from('{"a":[1,2,3]}'), 3))).toBe('413:too-large');
    expect(code(() => parseJson(Buffer.from('{"a":"[1,2,3,4,5]"}'), 3))).toBeUndefined();
  });

  test('the checks stay linear: 200,000 array items and 100 levels parse quickly, without recursion', () => {
    const items = Array.from({ length: 200000 }, (_x, i) => `{"k":${i},"s":"v\\u00e9"}`).join(',');
    const big = Buffer.from(`{"resourceType":"Bundle","a":[${items}]}`);
    const t0 = performance.now();
    expect((parseJson(big) as { a: unknown[] }).a.length).toBe(200000);
    const ms = performance.now() - t0;
    // ~6 MB; a quadratic scan would take minutes. Generous for a loaded 2-core machine.
    expect(ms).toBeLessThan(5000);
    expect(code(() => parseJson(Buffer.from('['.repeat(100) + ']'.repeat(100))))).toBeUndefined();
    expect(code(() => parseJson(Buffer.from('['.repeat(101) + ']'.repeat(101))))).toBe('400:invalid-json');
  });

  test('media types: the DSTU2 name is a synonym; another fhirVersion is 415 on bodies, 406 on Accept', () => {
    expect(bodyKind('application/json+fhir', ['fhir-json'])).toBe('fhir-json');
    expect(bodyKind('application/json+fhir; charset=UTF-8', ['fhir-json'])).toBe('fhir-json');
    expect(negotiate('application/json+fhir', undefined, undefined).mime).toBe('application/fhir+json');
    expect(negotiate(undefined, 'application/json+fhir', undefined).mime).toBe('application/fhir+json');
    expect(negotiate(undefined, 'json', undefined).mime).toBe('application/fhir+json');
    expect(negotiate('application/fhir+json; fhirVersion=4.0', undefined, undefined).mime).toBe('application/fhir+json');
    expect(negotiate('application/fhir+json; fhirVersion=4.0.1', undefined, undefined).mime).toBe('application/fhir+json');
    expect(code(() => negotiate('application/fhir+json; fhirVersion=3.0', undefined, undefined))).toBe('406:not-acceptable');
    expect(code(() => negotiate('application/fhir+json; fhirVersion="1.0"', undefined, undefined))).toBe('406:not-acceptable');
    // One acceptable alternative is enough.
    expect(negotiate('application/fhir+json; fhirVersion=3.0, application/fhir+json; fhirVersion=4.0', undefined, undefined).mime).toBe('application/fhir+json');
    expect(code(() => negotiate('application/fhir+json; q=0', undefined, undefined))).toBe('406:not-acceptable');
  });

  test('pruneEmpty drops empty arrays and the objects they leave empty, keeping the rest', () => {
    expect(pruneEmpty({ resourceType: 'Bundle', type: 'searchset', total: 0, entry: [], link: [{ relation: 'self', url: 'u' }] })).toEqual({
      resourceType: 'Bundle',
      type: 'searchset',
      total: 0,
      link: [{ relation: 'self', url: 'u' }],
    });
    expect(pruneEmpty({ a: [{}, { b: [] }, { c: 0 }], d: { e: { f: [] } }, g: '', h: false, i: null, _j: [null, { id: 'x' }] })).toEqual({
      a: [{ c: 0 }],
      g: '',
      h: false,
      i: null,
      _j: [null, { id: 'x' }],
    });
    let deep: unknown = { v: 1 };
    for (let i = 0; i < 1000; i++) deep = { n: [deep], e: [] };
    expect(JSON.stringify(pruneEmpty(deep))).not.toContain('[]');
  });
});
