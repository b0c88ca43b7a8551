// The R4 validator rule by rule (https://hl7.org/fhir/R4/validation.html): structure, cardinality,
// choice types, primitives, _element siblings, contained and nested resources, unknown and empty
// elements, invariants (inherited ones included), required bindings, FHIRPath locations, messages
// free of resource values, bounds and faults.
import { describe, expect, test } from '@jest/globals';
import { FhirError, type Issue } from '../../src/fhir/errors.js';
import { R4Validator } from '../../src/validation/validator.js';
import { schemaDocument } from '../../src/validation/artifacts.js';
import { BASE64_PATTERN, base64Shape } from '../../src/validation/structure.js';
import { bestTimeMs, carrying, hostileValues, STRING_PRIMITIVES } from '../../bench/hostile-primitives.js';

const v = new R4Validator();
const errors = (r: unknown): Issue[] => v.validate(r).filter((i) => i.severity === 'error' || i.severity === 'fatal');
const at = (r: unknown): string[] => errors(r).map((i) => `${i.code} ${i.expression?.[0]}`);
const DAR = { url: 'http://hl7.org/fhir/StructureDefinition/data-absent-reason', valueCode: 'unknown' };
const obs = (extra: Record<string, unknown> = {}) => ({ resourceType: 'Observation', status: 'final', code: { text: 'heart rate' }, ...extra });

describe('structure and types', () => {
  test('a valid resource has no errors', () => {
    expect(errors({ resourceType: 'Patient', active: true, name: [{ family: 'Chalmers', given: ['Peter', 'James'] }], gender: 'male', birthDate: '1974-12-25' })).toEqual([]);
    expect(errors(obs({ valueQuantity: { value: 72, unit: 'beats/min', system: 'http://unitsofmeasure.org', code: '/min' } }))).toEqual([]);
  });

  test('JSON types follow the element types', () => {
    expect(at({ resourceType: 'Patient', active: 'yes' })).toEqual(['value Patient.active']);
    expect(at({ resourceType: 'Patient', name: { family: 'x' } })).toEqual(['structure Patient.name']);
    expect(at({ resourceType: 'Patient', name: [{ family: ['x'] }] })).toEqual(['value Patient.name[0].family']);
    expect(at(obs({ valueQuantity: { value: '72' } }))).toEqual(['value Observation.value.ofType(Quantity).value']);
  });

  test('unknown elements are rejected and named only when they look like element names', () => {
    const r = errors({ resourceType: 'Patient', foo: 1, 'John Smith 555-1234': 2 });
    expect(r.map((i) => i.diagnostics).sort()).toEqual(["unknown element '?'", "unknown element 'foo'"]);
    expect(r.map((i) => i.expression?.[0]).sort()).toEqual(['Patient.?', 'Patient.foo']);
    expect(at({ resourceType: 'Patient', name: [{ family: 'x', nickname: 'y' }] })).toEqual(['structure Patient.name[0].nickname']);
  });

  test('a resourceType that is missing or unknown is a structure error', () => {
    expect(errors({ name: 'x' })[0].code).toBe('structure');
    expect(errors({ resourceType: 'Patients' })[0].code).toBe('structure');
    expect(errors('Patient')[0].code).toBe('structure');
  });
});

describe('cardinality', () => {
  test('required elements are reported with their location', () => {
    expect(at({ resourceType: 'Observation' }).sort()).toEqual(['required Observation.code', 'required Observation.status']);
    expect(at({ resourceType: 'Patient', link: [{ type: 'seealso' }] })).toEqual(['required Patient.link[0].other']);
  });

  test('a required primitive may be present as its _ sibling only (extensions, no value)', () => {
    expect(errors({ resourceType: 'Observation', _status: { extension: [DAR] }, code: { text: 'x' } })).toEqual([]);
  });

  test('repeating elements are arrays, single ones are not', () => {
    expect(at({ resourceType: 'Patient', gender: ['male'] })).toEqual(['value Patient.gender']);
    expect(at({ resourceType: 'Patient', identifier: { value: '1' } })).toEqual(['structure Patient.identifier']);
  });
});

describe('choice types', () => {
  test('at most one variant', () => {
    const r = errors({ resourceType: 'Patient', deceasedBoolean: true, deceasedDateTime: '2020-01-01' });
    expect(r.map((i) => [i.code, i.diagnostics, i.expression?.[0]])).toEqual([['structure', "only one type of 'deceased[x]' may be present", 'Patient.deceased']]);
  });

  test('only the allowed types', () => {
    expect(at({ resourceType: 'Patient', deceasedString: 'yes' })).toEqual(['structure Patient.deceasedString']);
  });

  test('a required choice needs one variant', () => {
    const r = errors({ resourceType: 'Claim', status: 'active', type: { text: 't' }, use: 'claim', patient: { reference: 'Patient/1' }, created: '2020-01-01', provider: { reference: 'Practitioner/1' }, priority: { text: 'normal' }, insurance: [{ sequence: 1, focal: true, coverage: { reference: 'Coverage/1' } }], diagnosis: [{ sequence: 1 }] });
    expect(r.map((i) => [i.code, i.diagnostics, i.expression?.[0]])).toEqual([['required', "missing required element 'diagnosis[x]'", 'Claim.diagnosis[0].diagnosis']]);
  });
});

describe('primitives', () => {
  test('values follow the regexes of the spec', () => {
    expect(at({ resourceType: 'Patient', birthDate: '1974-13-01' })).toEqual(['value Patient.birthDate']);
    expect(at({ resourceType: 'Patient', birthDate: '74-12-01' })).toEqual(['value Patient.birthDate']);
    expect(at(obs({ effectiveDateTime: '2020-01-01T10:00:00' }))).toEqual(['value Observation.effective.ofType(dateTime)']); // a time needs a zone
    expect(at(obs({ issued: '2020-01-01' }))).toEqual(['value Observation.issued']); // an instant is complete
    expect(at({ resourceType: 'Patient', id: 'has space' })).toEqual(['value Patient.id']);
    expect(at({ resourceType: 'Patient', id: 'x'.repeat(65) })).toEqual(['value Patient.id']);
    expect(errors({ resourceType: 'Patient', id: 'a-Z.09' })).toEqual([]);
  });

  test('calendar dates are checked beyond the regex', () => {
    expect(errors({ resourceType: 'Patient', birthDate: '2021-02-29' })[0].diagnostics).toBe('the value is not a valid calendar date');
    expect(errors({ resourceType: 'Patient', birthDate: '2020-02-29' })).toEqual([]);
    expect(errors({ resourceType: 'Patient', birthDate: '2021-02' })).toEqual([]);
  });

  test('numbers: integer ranges, positiveInt, unsignedInt, decimal as a JSON number', () => {
    expect(at({ resourceType: 'Patient', multipleBirthInteger: 2147483648 })).toEqual(['value Patient.multipleBirth.ofType(integer)']);
    expect(at({ resourceType: 'Patient', multipleBirthInteger: 1.5 })).toEqual(['value Patient.multipleBirth.ofType(integer)']);
    expect(at({ resourceType: 'Patient', photo: [{ contentType: 'image/png', size: -1 }] })).toEqual(['value Patient.photo[0].size']);
    expect(at(obs({ valueQuantity: { value: '1.0' } }))).toEqual(['value Observation.value.ofType(Quantity).value']);
  });

  test('whitespace is ASCII whitespace, as in the spec (a no-break space is content)', () => {
    expect(errors({ resourceType: 'Patient', gender: 'male', name: [{ family: 'O\u00a0Brien' }] })).toEqual([]);
    expect(at({ resourceType: 'Patient', gender: 'ma le' })).toEqual(['code-invalid Patient.gender']);
    expect(at({ resourceType: 'Patient', gender: 'male ' })).toEqual(['value Patient.gender']);
  });

  // The spec's base64Binary regex backtracks exponentially (a failing value of 12 quads separated by
  // two spaces takes ~16 ms, of 24 several minutes); every primitive must be judged in linear time.
  // Checked by scaling, not by a wall-clock threshold (this machine is shared and noisy): a value ten
  // times longer may take at most 30 times as long (linear is 10, quadratic 100, exponential never
  // ends), and nothing may come near a hang. A ratio over 30 is measured again with more tries,
  // small and large interleaved, before it counts: one GC pause or a busy neighbour in a single
  // try made a linear check look 70x once (CI, 2026-12-02); a real quadratic stays at 100x however
  // often it is measured. The absolute time for 100,000 characters is a figure of `npm run bench`
  // (bench/hostile-primitives.ts).
  test('every primitive regex judges hostile values in linear time', () => {
    const defs = schemaDocument().$defs;
    const stringTypes = Object.entries(defs).filter(([k, d]) => d.type === 'string' && !k.includes('-')).map(([k]) => k).sort();
    expect(stringTypes).toEqual([...STRING_PRIMITIVES].sort());
    const small = hostileValues(10_000);
    const large = hostileValues(100_000);
    const superlinear: string[] = [];
    for (const type of stringTypes) {
      for (let i = 0; i < large.length; i++) {
        const bigOne = carrying(type, large[i].value);
        const smallOne = carrying(type, small[i].value);
        let tLarge = bestTimeMs(v, bigOne, 3);
        if (tLarge < 5) continue; // too fast to be anything but linear
        let tSmall = Math.max(bestTimeMs(v, smallOne, 5), 0.05);
        for (let again = 0; again < 3 && tLarge / tSmall > 30 && tLarge <= 2000; again++) {
          for (let k = 0; k < 10; k++) {
            tSmall = Math.max(Math.min(tSmall, bestTimeMs(v, smallOne, 1)), 0.05);
            tLarge = Math.min(tLarge, bestTimeMs(v, bigOne, 1));
          }
        }
        if (tLarge / tSmall > 30 || tLarge > 2000) superlinear.push(`${type} / ${large[i].name}: ${tSmall.toFixed(2)} ms at 10,000, ${tLarge.toFixed(1)} ms at 100,000`);
      }
    }
    expect(superlinear).toEqual([]);
  });
});

describe('_element siblings', () => {
  test('extensions on a primitive, with or without its value', () => {
    expect(errors({ resourceType: 'Patient', birthDate: '1970', _birthDate: { extension: [{ url: 'http://example.org/x', valueString: 'y' }] } })).toEqual([]);
    expect(errors({ resourceType: 'Patient', _birthDate: { extension: [DAR] } })).toEqual([]);
  });

  test('a primitive with neither value nor extension fails ele-1; unknown members are rejected', () => {
    expect(errors({ resourceType: 'Patient', _birthDate: { id: 'b1' } }).map((i) => [i.code, i.diagnostics.slice(0, 6), i.expression?.[0]])).toEqual([['invariant', 'ele-1:', 'Patient.birthDate']]);
    expect(at({ resourceType: 'Patient', _birthDate: { value: '1970' } })).toContain('structure Patient.birthDate.value');
  });

  test('repeating primitives and their _ arrays align; null only where the other has an item', () => {
    expect(errors({ resourceType: 'Patient', name: [{ given: ['A', null], _given: [null, { extension: [DAR] }] }] })).toEqual([]);
    expect(at({ resourceType: 'Patient', name: [{ given: ['A', 'B'], _given: [null] }] })).toEqual(['structure Patient.name[0].given']);
    expect(at({ resourceType: 'Patient', name: [{ given: ['A', null] }] })).toEqual(['structure Patient.name[0].given[1]']);
    expect(at({ resourceType: 'Patient', name: [{ given: ['A'], _given: [{ extension: [{ url: 'http://example.org/x', valueInteger: 'one' }] }] }] })).toEqual(['value Patient.name[0].given[0].extension[0].value.ofType(integer)']);
  });
});

describe('contained and nested resources', () => {
  test('a contained resource is validated as its own type, with its location', () => {
    const r = obs({ contained: [{ resourceType: 'Patient', id: 'p1', active: 'yes' }], subject: { reference: '#p1' } });
    expect(at(r)).toEqual(['value Observation.contained[0].active']);
    expect(at(obs({ contained: [{ resourceType: 'Nothing', id: 'x' }], subject: { reference: '#x' } }))).toEqual(['structure Observation.contained[0]']);
  });

  test('Bundle entries and Parameters resources are validated as their own types', () => {
    const b = { resourceType: 'Bundle', type: 'collection', entry: [{ fullUrl: 'urn:uuid:0b1f3a1e-27a5-4f43-9d0a-8b1d6a3c6c11', resource: { resourceType: 'Patient', gender: 'robot' } }] };
    expect(at(b)).toEqual(['code-invalid Bundle.entry[0].resource.gender']);
    const p = { resourceType: 'Parameters', parameter: [{ name: 'p', resource: obs({ status: undefined }) }] };
    expect(at(JSON.parse(JSON.stringify(p)))).toEqual(['required Parameters.parameter[0].resource.status']);
  });

  test('dom-2, dom-3, dom-4 and ref-1 on contained resources', () => {
    expect(errors(obs({ contained: [{ resourceType: 'Patient', id: 'p1' }] })).map((i) => i.diagnostics.slice(0, 5))).toEqual(['dom-3']);
    expect(errors(obs({ contained: [{ resourceType: 'Patient', id: 'p1', meta: { versionId: '2' } }], subject: { reference: '#p1' } })).map((i) => i.diagnostics.slice(0, 5))).toEqual(['dom-4']);
    expect(errors(obs({ contained: [{ resourceType: 'Patient', id: 'p1', contained: [{ resourceType: 'Basic', id: 'b', code: { text: 'x' } }] }], subject: { reference: '#p1' } })).map((i) => i.diagnostics.slice(0, 5))).toContain('dom-2');
    expect(errors(obs({ subject: { reference: '#nowhere' } })).map((i) => [i.diagnostics.slice(0, 5), i.expression?.[0]])).toEqual([['ref-1', 'Observation.subject']]);
    // A contained resource that points back at its container ('#') needs no reference to it (dom-3).
    expect(errors(obs({ contained: [{ resourceType: 'Provenance', id: 'pv', target: [{ reference: '#' }], recorded: '2020-01-01T00:00:00Z', agent: [{ who: { display: 'x' } }] }] })).filter((i) => i.diagnostics.startsWith('dom-3'))).toEqual([]);
  });
});

describe('empty values', () => {
  test('empty arrays, objects and strings are rejected; an element with only an id fails ele-1', () => {
    expect(at({ resourceType: 'Patient', name: [] })).toEqual(['structure Patient.name']);
    expect(at({ resourceType: 'Patient', name: [{}] })).toEqual(['structure Patient.name[0]']);
    expect(at({ resourceType: 'Patient', gender: '' })).toEqual(['value Patient.gender']);
    expect(errors({ resourceType: 'Patient', gender: '' })[0].diagnostics).toBe('strings must not be empty');
    expect(at({ resourceType: 'Patient', implicitRules: '' })).toEqual(['value Patient.implicitRules']);
    expect(at({ resourceType: 'Patient', name: [{ id: 'n1' }] })).toEqual(['invariant Patient.name[0]']);
  });
});

describe('invariants', () => {
  test('an element invariant (pat-1) at its element', () => {
    const r = errors({ resourceType: 'Patient', contact: [{ gender: 'female' }] });
    expect(r.map((i) => [i.code, i.diagnostics, i.expression?.[0]])).toEqual([['invariant', 'pat-1: SHALL at least contain a contact\'s details or a reference to an organization', 'Patient.contact[0]']]);
  });

  test('inherited invariants: ext-1 from Extension, per-1 from Period, qty-3 from Quantity', () => {
    expect(at({ resourceType: 'Patient', extension: [{ url: 'http://example.org/x', valueString: 'a', extension: [{ url: 'y', valueString: 'b' }] }] })).toEqual(['invariant Patient.extension[0]']);
    expect(at({ resourceType: 'Patient', contact: [{ name: { family: 'x' }, period: { start: '2020-02-01', end: '2020-01-01' } }] })).toEqual(['invariant Patient.contact[0].period']);
    expect(at(obs({ valueQuantity: { value: 1, code: 'mg' } }))).toEqual(['invariant Observation.value.ofType(Quantity)']);
  });

  test('an uncertain comparison does not hold (per-1 with a date start and a later time on that day)', () => {
    expect(at({ resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, period: { start: '2023-06-21', end: '2023-06-21T06:20:00Z' } })).toEqual(['invariant Encounter.period']);
  });

  test('warning invariants (dom-6) do not make errors', () => {
    const issues = v.validate({ resourceType: 'Patient', active: true });
    expect(issues.map((i) => [i.severity, i.diagnostics.slice(0, 5)])).toEqual([['warning', 'dom-6']]);
  });

  test('narrative XHTML: txt-1 and txt-2', () => {
    const text = (div: string) => ({ resourceType: 'Patient', text: { status: 'generated', div } });
    expect(errors(text('<div xmlns="http://www.w3.org/1999/xhtml"><p>Peter <b>James</b> &amp; co&#160;</p><img src="#a" alt="x"/></div>'))).toEqual([]);
    expect(errors(text('<div xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></div>')).map((i) => i.diagnostics)).toEqual([expect.stringMatching(/^txt-1: .*<script> is not allowed/)]);
    expect(errors(text('<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="x()">a</p></div>'))[0].diagnostics).toMatch(/"onclick" is not allowed/);
    expect(errors(text('<div><p>a</p></div>'))[0].diagnostics).toMatch(/XHTML namespace/);
    expect(errors(text('<div xmlns="http://www.w3.org/1999/xhtml"><p>a</div>'))[0].diagnostics).toMatch(/not well-formed/);
    // No DTD: only XML's predefined entities and numeric references exist (the HL7 validator agrees).
    expect(errors(text('<div xmlns="http://www.w3.org/1999/xhtml"><p>CPT&reg; &nbsp;</p></div>'))[0].diagnostics).toMatch(/undefined entity reference/);
    expect(errors(text('<div xmlns="http://www.w3.org/1999/xhtml"><p>&lt;&gt;&quot;&apos;&amp;&#xAE;</p></div>'))).toEqual([]);
    expect(errors(text('<div xmlns="http://www.w3.org/1999/xhtml">  </div>')).map((i) => i.diagnostics.slice(0, 5))).toEqual(['txt-2']);
    expect(errors(text('<div xmlns="http://www.w3.org/1999/xhtml"><p>a</p></div><div xmlns="http://www.w3.org/1999/xhtml">b</div>'))[0].diagnostics).toMatch(/single <div>/);
  });
});

describe('required bindings', () => {
  test('a code outside the value set', () => {
    const r = errors({ resourceType: 'Patient', gender: 'robot' });
    expect(r.map((i) => [i.code, i.diagnostics, i.expression?.[0]])).toEqual([['code-invalid', 'the code is not in the required value set http://hl7.org/fhir/ValueSet/administrative-gender', 'Patient.gender']]);
    expect(at(obs({ status: 'done' }))).toEqual(['code-invalid Observation.status']);
    expect(at(obs({ valueQuantity: { value: 1, comparator: '!=' } }))).toEqual(['code-invalid Observation.value.ofType(Quantity).comparator']);
  });

  test('a CodeableConcept needs one coding from the value set', () => {
    const ai = (coding: unknown[]) => ({ resourceType: 'AllergyIntolerance', patient: { reference: 'Patient/1' }, clinicalStatus: { coding } });
    const system = 'http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical';
    expect(errors(ai([{ system, code: 'active' }]))).toEqual([]);
    expect(at(ai([{ system, code: 'dormant' }]))).toEqual(['code-invalid AllergyIntolerance.clinicalStatus']);
    expect(errors(ai([{ system: 'http://example.org/local', code: 'x' }, { system, code: 'resolved' }]))).toEqual([]);
  });

  test('a Coding.system must be absolute and a code system, not a value set', () => {
    expect(at(obs({ code: { coding: [{ system: 'loinc', code: '1' }] } }))).toEqual(['value Observation.code.coding[0].system']);
    expect(at(obs({ code: { coding: [{ system: 'http://hl7.org/fhir/ValueSet/observation-codes', code: '1' }] } }))).toEqual(['code-invalid Observation.code.coding[0].system']);
  });
});

describe('messages and locations', () => {
  test('no issue repeats a value of the resource', () => {
    const secret = 'Zebulon-Quartermain-19';
    const bad = [
      { resourceType: 'Patient', birthDate: `${secret}` },
      { resourceType: 'Patient', gender: secret },
      { resourceType: 'Patient', [`${secret} name`]: 'x' },
      { resourceType: 'Patient', name: [{ family: [secret] }] },
      { resourceType: 'Patient', text: { status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml"><${secret.toLowerCase()}>x</${secret.toLowerCase()}></div>` } },
      { resourceType: 'Patient', text: { status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml"><p ${secret.toLowerCase()}="1">x</p></div>` } },
      { resourceType: 'Patient', extension: [{ url: secret, valueString: 'a', extension: [{ url: 'b', valueString: secret }] }] },
      obs({ subject: { reference: `#${secret}` }, valueQuantity: { value: 1, comparator: secret } }),
    ];
    for (const r of bad) {
      const issues = v.validate(r);
      expect(issues.length).toBeGreaterThan(0);
      expect(JSON.stringify(issues)).not.toContain(secret);
      expect(JSON.stringify(issues).toLowerCase()).not.toContain(secret.toLowerCase());
    }
  });

  test('locations index repeating elements and name choice types', () => {
    expect(at({ resourceType: 'Patient', name: [{ given: ['a'] }, { given: ['b', 'c d', 7] }] })).toEqual(['value Patient.name[1].given[2]']);
    expect(at({ resourceType: 'Questionnaire', status: 'draft', item: [{ linkId: '1', type: 'group', item: [{ type: 'display', text: 'x' }] }] })).toEqual(['required Questionnaire.item[0].item[0].linkId']);
  });
});

describe('bounds and faults', () => {
  test('depth and size are bounded', () => {
    let item: Record<string, unknown> = { linkId: 'leaf', type: 'display' };
    for (let i = 0; i < 200; i++) item = { linkId: String(i), type: 'group', item: [item] };
    const deep = { resourceType: 'Questionnaire', status: 'draft', item: [item] };
    expect(errors(deep).map((i) => i.code)).toEqual(['too-costly']);
    const small = new R4Validator({ maxNodes: 50 });
    expect(small.validate({ resourceType: 'Patient', name: Array.from({ length: 30 }, () => ({ family: 'x' })) }).map((i) => i.code)).toEqual(['too-costly']);
  });

  test('a fault inside the validator is an internal FhirError (a 500), not a crash', () => {
    const hostile = { resourceType: 'Patient' } as Record<string, unknown>;
    Object.defineProperty(hostile, 'name', { enumerable: true, get: () => { throw new Error('boom'); } });
    let thrown: unknown;
    try {
      v.validate(hostile);
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toBeInstanceOf(FhirError);
    expect((thrown as FhirError).code).toBe('internal');
    expect((thrown as FhirError).message).not.toContain('boom');
  });
});

describe('the base64Binary shape check', () => {
  // ajv runs base64Shape in place of the generated pattern (src/validation/structure.ts); it must
  // accept exactly the pattern's language, and the pattern must still be the one it replaces.
  test('agrees with the generated pattern on edge cases and random strings', () => {
    expect(schemaDocument().$defs.base64Binary.pattern).toBe(BASE64_PATTERN);
    const re = new RegExp(BASE64_PATTERN);
    const cases = ['', ' ', 'AAAA', ' AAAA', 'AAAA ', 'AA AA', 'AAAA\nBBBB', 'AAA', 'AAAAA', 'AA==', '\t\nAAAA  BBBB\r\n', 'AAAA!', 'AAA\u00e9', '====', 'A/+9', 'AAAA\u00a0'];
    const alphabet = 'Ab9+/= \n\t!\u00e9';
    let seed = 7;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    for (let i = 0; i < 5000; i++) cases.push(Array.from({ length: Math.floor(rnd() * 14) }, () => alphabet[Math.floor(rnd() * alphabet.length)]).join(''));
    const disagree = cases.filter((s) => re.test(s) !== base64Shape(s));
    expect(disagree).toEqual([]);
    expect(cases.filter((s) => base64Shape(s)).length).toBeGreaterThan(20); // the random strings reach both verdicts
  });
});

describe('unknown extensions (VALIDATION_UNKNOWN_EXTENSIONS)', () => {
  const secret = 'http://private.example.org/fhir/StructureDefinition/mothers-maiden-name-Smith';
  const patient = (url: string, nested?: Record<string, unknown>[]) => ({ resourceType: 'Patient', extension: [{ url, ...(nested ? { extension: nested } : { valueString: 'x' }) }] });
  const refusing = new R4Validator({ unknownExtensions: 'reject' });
  const refused = (r: unknown) => refusing.validate(r).filter((i) => i.severity === 'error');

  test('accepted by default: the base specification lets any extension be used', () => {
    expect(errors(patient(secret))).toEqual([]);
  });

  test('refused when asked, at the url, without quoting it', () => {
    const e = refused(patient(secret));
    expect(e.map((i) => `${i.code} ${i.expression?.[0]}`)).toEqual(['structure Patient.extension[0].url']);
    expect(JSON.stringify(e)).not.toContain('private.example.org');
    expect(JSON.stringify(e)).not.toContain('Smith');
  });

  test('core extensions, cross-version extensions and the relative urls inside a complex extension pass', () => {
    expect(refused(patient('http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName'))).toEqual([]);
    expect(refused(patient('http://hl7.org/fhir/5.0/StructureDefinition/extension-Patient.contact.additionalName'))).toEqual([]);
    expect(refused(patient('http://hl7.org/fhir/StructureDefinition/patient-nationality', [{ url: 'code', valueCodeableConcept: { text: 'x' } }]))).toEqual([]);
    // modifier extensions and extensions deep in datatypes are judged alike
    expect(refused({ resourceType: 'Patient', name: [{ family: 'x', extension: [{ url: secret, valueString: 'y' }] }] }).map((i) => i.expression?.[0])).toEqual(['Patient.name[0].extension[0].url']);
    expect(refused({ resourceType: 'Patient', modifierExtension: [{ url: secret, valueBoolean: true }] }).map((i) => i.expression?.[0])).toEqual(['Patient.modifierExtension[0].url']);
  });
});
