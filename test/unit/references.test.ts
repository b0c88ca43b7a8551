// Reference rewriting for transactions (https://hl7.org/fhir/R4/bundle.html#references): every
// reference to a mapped fullUrl is rewritten, nested and in narrative links, and a retried attempt
// can undo the rewrites of the attempt before it.
import { describe, expect, test } from '@jest/globals';
import { rewriteReferences } from '../../src/fhir/references.js';

describe('rewriteReferences', () => {
  const resource = () => ({
    resourceType: 'Observation',
    subject: { reference: 'urn:uuid:aaaaaaaa-0000-0000-0000-000000000001' },
    performer: [{ reference: 'urn:uuid:aaaaaaaa-0000-0000-0000-000000000002#frag' }, { reference: 'Practitioner/kept' }],
    extension: [{ url: 'http://example.org/x', valueReference: { reference: 'urn:uuid:aaaaaaaa-0000-0000-0000-000000000001' } }],
    text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml"><a href="urn:uuid:aaaaaaaa-0000-0000-0000-000000000001">p</a></div>' },
  });
  const map = new Map([
    ['urn:uuid:aaaaaaaa-0000-0000-0000-000000000001', 'Patient/p1'],
    ['urn:uuid:aaaaaaaa-0000-0000-0000-000000000002', 'Practitioner/d1'],
  ]);

  test('rewrites references at any depth, keeps fragments, and narrative links', () => {
    const r = resource();
    expect(rewriteReferences(r, map)).toBe(3);
    expect(r.subject.reference).toBe('Patient/p1');
    expect(r.performer.map((p) => p.reference)).toEqual(['Practitioner/d1#frag', 'Practitioner/kept']);
    expect(r.extension[0].valueReference.reference).toBe('Patient/p1');
    expect(r.text.div).toContain('href="Patient/p1"');
  });

  test('the undo log restores the resource exactly, so a retried transaction resolves afresh', () => {
    const r = resource();
    const undo: [Record<string, unknown>, string, unknown][] = [];
    rewriteReferences(r, map, undo);
    expect(r).not.toEqual(resource());
    for (let i = undo.length - 1; i >= 0; i--) undo[i][0][undo[i][1]] = undo[i][2];
    expect(r).toEqual(resource());
    // the second attempt maps to other ids (fresh server ids) and rewrites them all again
    expect(rewriteReferences(r, new Map([['urn:uuid:aaaaaaaa-0000-0000-0000-000000000001', 'Patient/p2']]))).toBe(2);
    expect(r.subject.reference).toBe('Patient/p2');
  });
});
