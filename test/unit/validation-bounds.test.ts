// The validator's cost is linear in the resource and bounded by VALIDATION_MAX_ISSUES (issue 14):
// ajv's error gathering is rewritten to append in place, an invalid resource stops being checked
// soon after the cap, and the report ends with one issue counting what was left out.
import { describe, expect, test } from '@jest/globals';
import { linearErrors } from '../../src/validation/structure.js';
import { R4Validator, capIssues } from '../../src/validation/validator.js';

const zeros = (n: number) => ({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, category: new Array(n).fill(0) });

function timeMs(f: () => void): number {
  const t0 = performance.now();
  f();
  return performance.now() - t0;
}

describe('validation cost', () => {
  test('64,000 invalid items are judged fast and reported as 100 issues and "more not listed"', () => {
    const v = new R4Validator();
    v.validate(zeros(1)); // compile outside the timing
    let issues: ReturnType<R4Validator['validate']> = [];
    const ms = timeMs(() => (issues = v.validate(zeros(64_000))));
    // before the fix: 64 s; now a few ms (bound generous for a loaded 2-core machine)
    expect(ms).toBeLessThan(1000);
    expect(issues).toHaveLength(101);
    expect(issues.slice(0, 100).every((i) => i.severity === 'error' && i.expression?.[0]?.startsWith('Observation.category['))).toBe(true);
    expect(issues[100]).toMatchObject({ severity: 'information', code: 'informational' });
    expect(issues[100].diagnostics).toMatch(/^and more issues not listed/);
  });

  test('without a practical cap the cost grows linearly: 128,000 items cost about 4x 32,000, not 16x', () => {
    const v = new R4Validator({ maxIssues: 10_000_000 });
    v.validate(zeros(1));
    const best = (n: number) => Math.min(...[0, 1, 2].map(() => timeMs(() => v.validate(zeros(n)))));
    const small = best(32_000);
    const large = best(128_000);
    expect(v.validate(zeros(32_000)).filter((i) => i.severity === 'error')).toHaveLength(32_000);
    // quadratic would be 16x (and took 12.8 s at 32,000); allow for noise and GC
    expect(large / small).toBeLessThan(9);
    expect(large).toBeLessThan(10_000);
  });

  test('every error concatenation of the generated code is rewritten; an unknown shape fails loudly', () => {
    const code = 'if(!(validate2(x))){vErrors = vErrors === null ? validate2.errors : vErrors.concat(validate2.errors);errors = vErrors.length;}';
    const out = linearErrors(code);
    expect(out).not.toContain('concat');
    expect(out).toContain('vErrors.push(');
    expect(out).toContain('self.vestaStopAfter');
    expect(() => linearErrors('vErrors = vErrors.concat(other);')).toThrow(/does not rewrite/);
  });
});

describe('the cap never changes the verdict', () => {
  test('a valid resource with more warnings than the cap stays valid, with the rest counted', () => {
    const v = new R4Validator({ maxIssues: 2 });
    // dom-6 (no narrative) on the Bundle and on each entry's resource: warnings only
    const bundle = { resourceType: 'Bundle', type: 'collection', entry: Array.from({ length: 5 }, (_, i) => ({ fullUrl: `urn:uuid:00000000-0000-0000-0000-00000000000${i}`, resource: { resourceType: 'Basic', code: { text: 'x' } } })) };
    const issues = v.validate(bundle);
    expect(issues.some((i) => i.severity === 'error' || i.severity === 'fatal')).toBe(false);
    expect(issues).toHaveLength(3);
    expect(issues[2].diagnostics).toMatch(/^and \d+ more issues? not listed \(2 reported\)$/);
  });

  test('an invalid resource whose first issues are warnings is still invalid under a cap of 1', () => {
    const v = new R4Validator({ maxIssues: 1 });
    // 80 warnings (dom-6 of each entry), past the walk's stopping point (2 x 1 + 50), then one
    // error only the walk finds (a status outside its required value set)
    const entry = Array.from({ length: 80 }, (_, i) => ({ fullUrl: `urn:uuid:00000000-0000-0000-0000-${String(i).padStart(12, '0')}`, resource: { resourceType: 'Basic', code: { text: 'x' } } as Record<string, unknown> }));
    entry.push({ fullUrl: 'urn:uuid:00000000-0000-0000-0001-000000000000', resource: { resourceType: 'Observation', code: { text: 'x' }, status: 'not-a-status' } });
    const issues = v.validate({ resourceType: 'Bundle', type: 'collection', entry });
    expect(issues[0]).toMatchObject({ severity: 'error', code: 'code-invalid' });
    expect(issues).toHaveLength(2);
  });

  test('capIssues keeps errors first and counts the rest', () => {
    const w = { severity: 'warning' as const, code: 'invariant', diagnostics: 'w' };
    const e = { severity: 'error' as const, code: 'value', diagnostics: 'e' };
    const out = capIssues([w, w, w, e], 2, false, 'Patient');
    expect(out.map((i) => i.severity)).toEqual(['error', 'warning', 'information']);
    expect(out[2].diagnostics).toBe('and 2 more issues not listed (2 reported)');
    expect(capIssues([w, e], 2, false, 'Patient')).toEqual([w, e]);
  });
});
