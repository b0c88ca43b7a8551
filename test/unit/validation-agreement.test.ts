// Agreement with the HL7 reference validator (Java) on the public fhir-test-cases R4 cases in
// test/fixtures/validator-cases: each input goes through the server's JSON reader and the server's
// validator; a case agrees on the verdict when both find errors or both find none, and on the count
// when the numbers of errors (error + fatal) are equal. Cases the reference validator ran with
// non-default options (index.json `options`: JSON comments allowed, contained resources ignored,
// security checks, reference resolution, ...) are counted apart as well as in the total.
import { describe, expect, test } from '@jest/globals';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { findPackageRoot } from '../../src/fhir/package-root.js';
import { parseJson } from '../../src/http/body.js';
import { R4Validator } from '../../src/validation/validator.js';

interface Case {
  name: string;
  file: string;
  expected: { fatal: number; error: number };
  options?: Record<string, unknown>;
}

const base = join(findPackageRoot(), 'test', 'fixtures', 'validator-cases');
const index = JSON.parse(readFileSync(join(base, 'index.json'), 'utf8')) as { cases: Case[] };
const validator = new R4Validator();

function vestaErrors(file: string): number {
  let resource: unknown;
  try {
    resource = parseJson(readFileSync(join(base, file)));
  } catch {
    return 1; // the server answers 400: one fatal issue
  }
  return validator.validate(resource).filter((i) => i.severity === 'error' || i.severity === 'fatal').length;
}

interface Figures {
  cases: number;
  verdict: number;
  count: number;
}

const pct = (n: number, d: number) => `${((100 * n) / d).toFixed(1)}%`;

describe('agreement with the HL7 reference validator', () => {
  test('verdict agreement is at least 90% on the cases run with default options', () => {
    const all: Figures = { cases: 0, verdict: 0, count: 0 };
    const plain: Figures = { cases: 0, verdict: 0, count: 0 };
    const optioned: Figures = { cases: 0, verdict: 0, count: 0 };
    const disagreements: string[] = [];
    for (const c of index.cases) {
      const expected = c.expected.error + c.expected.fatal;
      const got = vestaErrors(c.file);
      const verdict = (expected === 0) === (got === 0);
      for (const f of [all, c.options ? optioned : plain]) {
        f.cases++;
        if (verdict) f.verdict++;
        if (expected === got) f.count++;
      }
      if (!verdict) disagreements.push(`${c.name}: reference ${expected} error(s), Vesta ${got}${c.options ? ` (options ${JSON.stringify(c.options)})` : ''}`);
    }
    const line = (name: string, f: Figures) => `${name}: ${f.cases} cases, verdict ${f.verdict} (${pct(f.verdict, f.cases)}), error count ${f.count} (${pct(f.count, f.cases)})`;
    // eslint-disable-next-line no-console
    console.log([line('all cases', all), line('default options', plain), line('non-default options', optioned), 'verdict disagreements:', ...disagreements.map((d) => `  ${d}`)].join('\n'));
    expect(all.cases).toBe(105);
    expect(plain.verdict / plain.cases).toBeGreaterThanOrEqual(0.9);
    // The total, options included, must not fall below what this revision measured (92 of 105).
    expect(all.verdict).toBeGreaterThanOrEqual(92);
  });
});
