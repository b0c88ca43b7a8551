// Invariants decided without fhirpath.js (shortcuts, the partial FHIRPath reading, native dom-3) must
// agree with fhirpath.js: the validator's cross-check mode evaluates both and reports any difference.
// Run over the official examples (every file but the large Bundles of definitions, which only repeat
// the individual definition files) and over hand-made cases that fail.
import { describe, expect, test } from '@jest/globals';
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { precheck } from '../../src/validation/precheck.js';
import { definition } from '../../src/validation/type-model.js';
import { R4Validator } from '../../src/validation/validator.js';
import { compatible, holds } from '../../src/validation/invariants.js';

const dir = dirname(createRequire(import.meta.url).resolve('hl7.fhir.r4.examples/package.json'));
const cross = new R4Validator({ crossCheck: true });
const disagreements = (r: unknown) => cross.validate(r).filter((i) => i.code === 'exception');

describe('invariants decided natively agree with fhirpath.js', () => {
  test('over the official examples', () => {
    const files = readdirSync(dir).filter((f) => f.endsWith('.json') && f !== 'package.json' && !f.startsWith('Bundle-'));
    const bundles = readdirSync(dir).filter((f) => f.startsWith('Bundle-') && readFileSync(join(dir, f)).length < 1_000_000);
    const found: string[] = [];
    for (const f of [...files, ...bundles]) {
      for (const i of disagreements(JSON.parse(readFileSync(join(dir, f), 'utf8')))) found.push(`${f} ${i.expression?.[0]}: ${i.diagnostics}`);
    }
    expect(files.length + bundles.length).toBeGreaterThan(5000);
    expect(found).toEqual([]);
  }, 240_000);

  test('on failing cases too', () => {
    const cases = [
      { resourceType: 'Observation', status: 'final', code: { text: 'x' }, contained: [{ resourceType: 'Patient', id: 'p1' }, { resourceType: 'Patient', id: 'p2' }], subject: { reference: '#p2' } },
      { resourceType: 'Observation', status: 'final', code: { text: 'x' }, contained: [{ resourceType: 'Patient', id: 'p1', contained: [{ resourceType: 'Basic', id: 'b', code: { text: 'y' } }] }], subject: { reference: '#p1' } },
      { resourceType: 'Observation', status: 'final', code: { text: 'x' }, dataAbsentReason: { text: 'x' }, valueString: 'y', referenceRange: [{ text: 'n' }, {}] },
      { resourceType: 'Observation', status: 'final', code: { text: 'x' }, valueQuantity: { value: 1, code: 'mg' }, subject: { reference: '#x' } },
      { resourceType: 'Patient', contact: [{ gender: 'male', period: { start: '2020-01-02', end: '2020-01-01' } }], extension: [{ url: 'http://e.org/a' }] },
      { resourceType: 'Bundle', type: 'transaction', entry: [{ fullUrl: 'http://e.org/Patient/1/_history/1', resource: { resourceType: 'Patient' } }, { fullUrl: 'http://e.org/Patient/1', resource: { resourceType: 'Patient' }, request: { method: 'POST', url: 'Patient' } }] },
      { resourceType: 'Bundle', type: 'collection', entry: [{ fullUrl: 'http://e.org/Patient/1', resource: { resourceType: 'Patient' } }, { fullUrl: 'http://e.org/Patient/1', resource: { resourceType: 'Patient' } }, {}] },
      { resourceType: 'Questionnaire', status: 'draft', item: [{ linkId: '1', type: 'group' }, { linkId: '2', type: 'display', item: [{ linkId: '3', type: 'string' }], required: true }] },
      // count() comparisons, `= true`, `!=` (que-12, que-13, que-3) and a repeated linkId (que-2)
      {
        resourceType: 'Questionnaire', status: 'draft', item: [
          { linkId: '1', type: 'boolean' },
          { linkId: '2', type: 'string', enableWhen: [1, 2, 3].map(() => ({ question: '1', operator: 'exists', answerBoolean: true })), initial: [{ valueString: 'a' }, { valueString: 'b' }] },
          { linkId: '3', type: 'display', code: [{ code: 'x' }] },
          { linkId: '3', type: 'string', repeats: false, initial: [{ valueString: 'a' }, { valueString: 'b' }] },
        ],
      },
      // navigation into contained resources (dom-2, dom-4, dom-5)
      { resourceType: 'Observation', status: 'final', code: { text: 'x' }, contained: [{ resourceType: 'Patient', id: 'p', meta: { versionId: '1', security: [{ code: 'x' }] }, contained: [{ resourceType: 'Patient', id: 'q' }] }], subject: { reference: '#p' } },
      { resourceType: 'Observation', status: 'final', code: { text: 'x' }, contained: [{ resourceType: 'Patient', id: 'p', meta: { lastUpdated: '2020-01-01T00:00:00Z' } }], subject: { reference: '#p' } },
      // xor (rat-1), a decimal compared with a literal (tim-5)
      { resourceType: 'Observation', status: 'final', code: { text: 'x' }, valueRatio: { numerator: { value: 1 } } },
      { resourceType: 'Observation', status: 'final', code: { text: 'x' }, effectiveTiming: { repeat: { period: -1, periodUnit: 'd' } } },
      // %ucum and value > 0 (age-1), integer equality (msq-3), matches() (lib-0)
      { resourceType: 'Condition', subject: { reference: 'Patient/1' }, onsetAge: { value: -1, system: 'http://unitsofmeasure.org', code: 'a' } },
      { resourceType: 'Condition', subject: { reference: 'Patient/1' }, onsetAge: { value: 1, system: 'http://example.org', code: 'a' } },
      { resourceType: 'MolecularSequence', coordinateSystem: 2 },
      { resourceType: 'Library', status: 'draft', type: { text: 'x' }, name: 'lower case' },
    ];
    for (const c of cases) {
      expect(cross.validate(c).some((i) => i.code === 'invariant')).toBe(true);
      expect(disagreements(c)).toEqual([]);
    }
  });
});

describe('the partial FHIRPath reading', () => {
  const obs = definition('Observation');
  test('decides boolean combinations of exists/empty/hasValue and literal equality', () => {
    expect(precheck('dataAbsentReason.empty() or value.empty()', { valueString: 'x' }, obs)).toBe('T');
    expect(precheck('dataAbsentReason.empty() or value.empty()', { valueString: 'x', dataAbsentReason: { text: 'y' } }, obs)).toBe('F');
    expect(precheck("status = 'final' implies issued.exists()", { status: 'final' }, obs)).toBe('F');
    expect(precheck("status = 'final' implies issued.exists()", { status: 'amended' }, obs)).toBe('T');
    expect(precheck("status = 'final' implies issued.exists()", {}, obs)).toBe('E'); // {} implies false is {}
    expect(precheck("status = 'final' implies issued.exists()", { issued: '2020-01-01T00:00:00Z' }, obs)).toBe('T');
    expect(precheck('component.where(code.exists()).empty()', {}, obs)).toBe('T');
    expect(precheck('component.where(code.exists()).empty()', { component: [{}] }, obs)).toBe('U');
  });

  test('decides count(), sums of counts, comparisons with literals, xor, startsWith() and matches()', () => {
    const quantity = definition('Quantity');
    expect(precheck('value > 0', { valueInteger: 1 }, obs)).toBe('T');
    expect(precheck('value > 0', { valueInteger: 0 }, obs)).toBe('F');
    expect(precheck('value > 0', {}, obs)).toBe('E');
    expect(precheck('component.count() > 1', { component: [{}, {}] }, obs)).toBe('T');
    expect(precheck('(component.count() + referenceRange.count()) = 1', { component: [{}] }, obs)).toBe('T');
    expect(precheck('component.count() + referenceRange.count() <= 1', { component: [{}], referenceRange: [{}] }, obs)).toBe('F');
    expect(precheck("status != 'final'", { status: 'final' }, obs)).toBe('F');
    expect(precheck("status != 'final'", { status: 'amended' }, obs)).toBe('T');
    expect(precheck('dataAbsentReason.exists() xor value.exists()', { valueString: 'x' }, obs)).toBe('T');
    expect(precheck('dataAbsentReason.exists() xor value.exists()', { valueString: 'x', dataAbsentReason: {} }, obs)).toBe('F');
    expect(precheck('contained.meta.versionId.empty()', { contained: [{ resourceType: 'Patient', meta: { versionId: '1' } }] }, obs)).toBe('F');
    expect(precheck('contained.meta.versionId.empty()', { contained: [{ resourceType: 'Patient' }] }, obs)).toBe('T');
    expect(precheck('system = %ucum', { system: 'http://unitsofmeasure.org' }, quantity)).toBe('T');
    expect(precheck('value >= 1', { value: 1.5 }, quantity)).toBe('T');
    expect(precheck("status.startsWith('fin')", { status: 'final' }, obs)).toBe('T');
    expect(precheck("status.matches('^f')", { status: 'amended' }, obs)).toBe('F');
  });

  test('leaves everything else to fhirpath.js', () => {
    const quantity = definition('Quantity');
    expect(precheck('value = 1', { value: 1.0 }, quantity)).toBe('U'); // decimal equality follows precision rules
    expect(precheck("value > 0 'mg'", { value: 1 }, quantity)).toBe('U'); // a quantity literal
    expect(precheck("code = 1", { code: 'x' }, quantity)).toBe('U'); // mixed types
    expect(precheck('value.count() = 1', { _value: { extension: [] } }, quantity)).toBe('U'); // an item with extensions only
    expect(precheck('contained.meta.versionId.empty()', { contained: [{ resourceType: 'Nonsuch', meta: { versionId: '1' } }] }, obs)).toBe('U');
    expect(precheck('value > 0', { valueString: 'x' }, obs)).toBe('U');
    expect(precheck('nonsuch.exists()', { nonsuch: 1 }, obs)).toBe('U');
    expect(precheck('%resource.id.exists()', {}, obs)).toBe('U');
    expect(precheck('effective.exists() or (issued | effective).count() = 2', { issued: 'x' }, obs)).toBe('U');
    expect(precheck('effective.exists() and (issued | effective).count() = 2', { issued: 'x' }, obs)).toBe('F');
  });

  test('the R4 corrections and the truth of a result', () => {
    expect(compatible('ref-1', "reference.startsWith('#').not()")).toBe("reference.exists() implies (reference.startsWith('#').not())");
    expect(compatible('dom-3', "descendants().as(canonical)")).toBe('descendants().ofType(canonical)');
    expect([holds([true]), holds([false]), holds([]), holds(['x'])]).toEqual([true, false, false, true]);
  });
});
