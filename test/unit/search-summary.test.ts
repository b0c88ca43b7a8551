// _summary=true and _summary=text (https://hl7.org/fhir/R4/search.html#summary): the generated summary
// flags drive which elements stay; backbone elements keep their summary children, datatypes stay whole.
import { describe, expect, test } from '@jest/globals';
import type { Resource } from 'fhir/r4.js';
import { FhirError } from '../../src/fhir/errors.js';
import { applySummary, parseReadSummary, parseSummary, shapeBySummary } from '../../src/search/shape.js';

const subsetted = (r: Resource) => (r.meta?.tag ?? []).some((t) => t.code === 'SUBSETTED' && t.system === 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue');
const ext = [{ url: 'http://example.org/x', valueString: 'y' }];
const mmHg = { value: 107, unit: 'mmHg', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' };

const observation = {
  resourceType: 'Observation',
  id: 'bp',
  meta: { versionId: '2', tag: [{ system: 'urn:t', code: 'keep' }] },
  text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">BP</div>' },
  contained: [{ resourceType: 'Patient', id: 'p' }],
  extension: ext,
  modifierExtension: ext,
  status: 'final',
  _status: { extension: ext },
  category: [{ text: 'vital' }],
  code: { coding: [{ system: 'http://loinc.org', code: '85354-9' }] },
  subject: { reference: 'Patient/1' },
  effectiveDateTime: '2020-01-01',
  valueQuantity: mmHg,
  interpretation: [{ text: 'high' }],
  referenceRange: [{ text: 'normal' }],
  component: [{ extension: ext, code: { text: 'systolic' }, valueQuantity: mmHg, interpretation: [{ text: 'high' }] }],
} as unknown as Resource;

describe('_summary', () => {
  test('true: summary elements of the definition; backbones keep their summary children; SUBSETTED', () => {
    const before = JSON.stringify(observation);
    const s = applySummary(observation, 'true') as unknown as Record<string, unknown>;
    expect(Object.keys(s).sort()).toEqual(['_status', 'code', 'component', 'effectiveDateTime', 'id', 'meta', 'modifierExtension', 'resourceType', 'status', 'subject', 'valueQuantity']);
    expect(s.component).toEqual([{ code: { text: 'systolic' }, valueQuantity: mmHg }]);
    expect(subsetted(s as unknown as Resource)).toBe(true);
    expect((s.meta as { tag: { code: string }[]; versionId: string }).tag.map((t) => t.code)).toEqual(['keep', 'SUBSETTED']);
    expect((s.meta as { versionId: string }).versionId).toBe('2');
    expect(JSON.stringify(observation)).toBe(before); // the stored resource is not touched
  });

  test('text: the narrative, id, meta and the top-level mandatory elements', () => {
    const s = applySummary(observation, 'text') as unknown as Record<string, unknown>;
    expect(Object.keys(s).sort()).toEqual(['_status', 'code', 'id', 'meta', 'resourceType', 'status', 'text']);
    expect(subsetted(s as unknown as Resource)).toBe(true);
  });

  test('choice elements by their [x] name; datatype values whole (their own flags do not apply)', () => {
    const patient = {
      resourceType: 'Patient',
      id: 'p',
      name: [{ family: 'Chalmers', extension: ext }],
      deceasedBoolean: false,
      multipleBirthInteger: 2, // multipleBirth[x] is not a summary element
      contact: [{ name: { family: 'X' } }],
      link: [{ extension: ext, other: { reference: 'Patient/q' }, type: 'seealso' }],
      communication: [{ language: { text: 'en' } }],
    } as unknown as Resource;
    const s = applySummary(patient, 'true') as unknown as Record<string, unknown>;
    expect(Object.keys(s).sort()).toEqual(['deceasedBoolean', 'id', 'link', 'meta', 'name', 'resourceType']);
    expect(s.name).toEqual([{ family: 'Chalmers', extension: ext }]);
    expect(s.link).toEqual([{ other: { reference: 'Patient/q' }, type: 'seealso' }]);
    // Patient has no mandatory top-level element: text mode keeps the envelope (and narrative, absent here)
    expect(Object.keys(applySummary(patient, 'text')).sort()).toEqual(['id', 'meta', 'resourceType']);
  });

  test('a backbone that repeats another by contentReference (Bundle.entry.link is Bundle.link) uses its flags', () => {
    const bundle = {
      resourceType: 'Bundle',
      type: 'collection',
      entry: [{ extension: ext, fullUrl: 'urn:uuid:1', link: [{ extension: ext, relation: 'self', url: 'http://x' }], resource: observation }],
    } as unknown as Resource;
    const s = applySummary(bundle, 'true') as unknown as { entry: Record<string, unknown>[] };
    expect(s.entry).toEqual([{ fullUrl: 'urn:uuid:1', link: [{ relation: 'self', url: 'http://x' }], resource: observation }]);
  });

  test('values: true, text, data, count, false; read refuses count', () => {
    expect(parseSummary('true')).toBe('true');
    expect(parseSummary('text')).toBe('text');
    expect(() => parseSummary('maybe')).toThrow(FhirError);
    expect(() => parseReadSummary('count')).toThrow(FhirError);
    expect(parseReadSummary(undefined)).toBeUndefined();
    expect(shapeBySummary(observation, 'false')).toBe(observation);
    expect((shapeBySummary(observation, 'data') as { text?: unknown }).text).toBeUndefined();
  });
});
