// Hostile primitive values for the R4 validator (https://hl7.org/fhir/R4/datatypes.html#primitive):
// shapes that make backtracking regexes explode, at any length. Shared by the scaling test
// (test/unit/validation-rules.test.ts) and the timing figures of `npm run bench` (bench/validation.ts).
import type { R4Validator } from '../src/validation/validator.js';

/** The primitive string types of the generated schemas (checked by the test). */
export const STRING_PRIMITIVES = ['base64Binary', 'canonical', 'code', 'date', 'dateTime', 'id', 'instant', 'markdown', 'oid', 'string', 'time', 'uri', 'url', 'uuid', 'xhtml'];

/** Values of about n characters that end in a character the regexes reject. */
export function hostileValues(n: number): { name: string; value: string }[] {
  return [
    { name: 'letters then a space', value: 'a'.repeat(n) + ' ' },
    { name: 'spaces then a bang', value: ' '.repeat(n) + '!' },
    { name: 'base64 quads with double spaces', value: 'AAAA  '.repeat(Math.floor(n / 6)) + '!' },
    { name: 'words and a trailing space', value: 'a '.repeat(Math.floor(n / 2)) + ' ' },
    { name: 'a long fraction of seconds', value: '2020-01-01T00:00:00.' + '1'.repeat(n) + 'x' },
    { name: 'an oid with a trailing dot', value: 'urn:oid:1' + '.1'.repeat(Math.floor(n / 2)) + '.' },
    { name: 'digits then a letter', value: '0'.repeat(n) + 'x' },
  ];
}

/** A resource carrying `value` as a primitive of `type` (xhtml: inside a narrative with many elements). */
export function carrying(type: string, value: string): Record<string, unknown> {
  if (type === 'xhtml') {
    const n = value.length;
    return { resourceType: 'Basic', code: { text: 'x' }, text: { status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml"><p title="${value.replace(/[<&"]/g, '')}">${value.replace(/[<&]/g, '')}</p>${'<br/>'.repeat(Math.floor(n / 10))}<p>${value}` } };
  }
  return { resourceType: 'Basic', code: { text: 'x' }, extension: [{ url: 'http://example.org/x', [`value${type[0].toUpperCase()}${type.slice(1)}`]: value }] };
}

/** Fastest of `tries` validations of `resource`, in ms (the minimum is the figure least moved by machine noise). */
export function bestTimeMs(v: R4Validator, resource: unknown, tries = 3): number {
  let best = Infinity;
  for (let i = 0; i < tries; i++) {
    const t0 = process.hrtime.bigint();
    v.validate(resource);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return best;
}

export interface HostileFigures {
  /** Characters per hostile value. */
  length: number;
  /** Slowest judgement per primitive type, ms (best of 3 tries each). */
  worstMsByType: Record<string, number>;
  worstMs: number;
  worstType: string;
}

/** Judges every hostile value of `length` characters as every primitive type and reports the slowest. */
export function hostileTimings(v: R4Validator, length = 100_000): HostileFigures {
  const worstMsByType: Record<string, number> = {};
  for (const type of STRING_PRIMITIVES) {
    let worst = 0;
    for (const { value } of hostileValues(length)) worst = Math.max(worst, bestTimeMs(v, carrying(type, value)));
    worstMsByType[type] = Math.round(worst * 10) / 10;
  }
  const [worstType, worstMs] = Object.entries(worstMsByType).sort((a, b) => b[1] - a[1])[0];
  return { length, worstMsByType, worstMs, worstType };
}
