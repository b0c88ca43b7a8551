// The search columns of a ledger entry (src/audit/search-columns.ts): what each column holds for a
// BALP event and for a client-made one, and that the keys a search value looks for are exactly the
// keys the matching stored values produce (and not those of near misses).
import { describe, expect, test } from '@jest/globals';
import { buildAuditEvent } from '../../src/audit/balp.js';
import { referenceKeys, referenceQueryKeys, searchColumns, tokenKeys, tokenQueryKey } from '../../src/audit/search-columns.js';
import { FhirError } from '../../src/fhir/errors.js';

const BASE = 'https://x.example/fhir';

const balp = buildAuditEvent({
  interaction: 'read',
  status: 200,
  recorded: new Date('2026-12-05T12:00:00.123Z'),
  requestId: 'req-1',
  client: 'app-1',
  user: 'doc',
  fhirUser: 'Practitioner/pr1',
  tokenId: 'jti-1',
  server: BASE,
  resources: [{ type: 'Observation', id: 'o1', version: '3' }],
  patients: ['pt1'],
});

/** Whether a search value (of a reference parameter) finds a column. */
const refMatch = (column: string[], raw: string, type?: string) => referenceQueryKeys(raw, 'p', type, BASE).some((k) => column.includes(k));
const tokMatch = (column: string[], raw: string) => column.includes(tokenQueryKey(raw)!);

describe('audit search columns', () => {
  test('a BALP read: recorded, action, outcome, type, subtype, agents, entities, patient', () => {
    const c = searchColumns(balp, BASE);
    expect(c.recorded?.toISOString()).toBe('2026-12-05T12:00:00.123Z');
    expect(c.action).toBe('R');
    expect(c.outcome).toBe('0');
    expect(c.type).toEqual(expect.arrayContaining(['rest', 'http://terminology.hl7.org/CodeSystem/audit-event-type|rest', 'http://terminology.hl7.org/CodeSystem/audit-event-type|']));
    expect(c.subtype).toContain('http://hl7.org/fhir/restful-interaction|read');
    expect(c.agent).toEqual(['Practitioner/pr1', '/pr1']);
    // The client by identifier (system: this server's client registry), the server by its URL (no system).
    expect(c.agentIdentifier).toEqual(expect.arrayContaining([`${BASE}/auth/clients|app-1`, 'app-1', `${BASE}/auth/clients|`, BASE, `|${BASE}`]));
    expect(c.entity).toEqual(expect.arrayContaining(['Observation/o1', '/o1', 'Observation/o1/_history/3', 'Patient/pt1', '/pt1']));
    expect(c.entityIdentifier).toEqual(expect.arrayContaining(['req-1', '|req-1']));
    expect(c.patient).toEqual(['Patient/pt1']);
    // BALP names the source by display only: nothing to search by.
    expect(c.source).toEqual([]);
  });

  test('token keys answer code, system|code, |code and system| and nothing else', () => {
    const withSystem = tokenKeys('http://s', 'c');
    expect(tokMatch(withSystem, 'c')).toBe(true);
    expect(tokMatch(withSystem, 'http://s|c')).toBe(true);
    expect(tokMatch(withSystem, 'http://s|')).toBe(true);
    expect(tokMatch(withSystem, '|c')).toBe(false);
    expect(tokMatch(withSystem, 'http://other|c')).toBe(false);
    expect(tokMatch(withSystem, 'http://s|d')).toBe(false);
    const noSystem = tokenKeys(undefined, 'c');
    expect(tokMatch(noSystem, '|c')).toBe(true);
    expect(tokMatch(noSystem, 'c')).toBe(true);
    expect(tokMatch(noSystem, 'http://s|c')).toBe(false);
    expect(tokenQueryKey('|')).toBeUndefined();
  });

  test('a | or , inside a code is escaped on both sides, so it cannot pose as a system', () => {
    const odd = tokenKeys(undefined, 'a|b');
    expect(tokMatch(odd, 'a\\|b')).toBe(true);
    expect(tokMatch(odd, 'a|b')).toBe(false);
    expect(tokMatch(tokenKeys('a', 'b'), 'a\\|b')).toBe(false);
    expect(tokMatch(tokenKeys('urn:s', 'x,y'), 'urn:s|x\\,y')).toBe(true);
  });

  test('long codes and systems become hashes on both sides', () => {
    const long = 'x'.repeat(300);
    const keys = tokenKeys(`urn:${long}`, long);
    expect(keys.every((k) => k.length <= 128)).toBe(true);
    expect(tokMatch(keys, `urn:${long}|${long}`)).toBe(true);
    expect(tokMatch(keys, `urn:${long}|${long}y`)).toBe(false);
  });

  test('references: relative, bare id, versioned, absolute on this base, elsewhere, contained', () => {
    const rel = referenceKeys('Observation/o1');
    expect(refMatch(rel, 'Observation/o1')).toBe(true);
    expect(refMatch(rel, 'o1')).toBe(true);
    expect(refMatch(rel, 'o1', 'Observation')).toBe(true);
    expect(refMatch(rel, 'o1', 'Condition')).toBe(false);
    expect(refMatch(rel, `${BASE}/Observation/o1`)).toBe(true);
    expect(refMatch(rel, 'Observation/o2')).toBe(false);
    expect(refMatch(rel, 'Observation/o1/_history/1')).toBe(false);

    const versioned = referenceKeys('Observation/o1/_history/3');
    expect(refMatch(versioned, 'Observation/o1')).toBe(true);
    expect(refMatch(versioned, 'Observation/o1/_history/3')).toBe(true);
    expect(refMatch(versioned, 'Observation/o1/_history/2')).toBe(false);

    // Absolute on this server: indexed as the relative reference it stands for.
    const local = referenceKeys(`${BASE}/Patient/p9/_history/2`, BASE);
    expect(local).toEqual(['Patient/p9', '/p9', 'Patient/p9/_history/2']);
    // Appended without a base it stays absolute; a search still finds it by its relative form.
    const unstripped = referenceKeys(`${BASE}/Patient/p9`);
    expect(refMatch(unstripped, 'Patient/p9')).toBe(true);
    expect(refMatch(unstripped, 'p9', 'Patient')).toBe(true);

    const elsewhere = referenceKeys('https://other.example/fhir/Patient/p1/_history/4');
    expect(refMatch(elsewhere, 'https://other.example/fhir/Patient/p1')).toBe(true);
    expect(refMatch(elsewhere, 'https://other.example/fhir/Patient/p1/_history/4')).toBe(true);
    expect(refMatch(elsewhere, 'Patient/p1')).toBe(false);
    expect(referenceKeys('#contained')).toEqual([]);
  });

  test('the patient column: Patients among agent.who and entity.what, typed keys only', () => {
    const c = searchColumns(
      {
        resourceType: 'AuditEvent',
        recorded: '2026-01-01T00:00:00Z',
        agent: [{ who: { reference: 'Patient/self' } }, { who: { reference: 'Practitioner/x' } }],
        entity: [{ what: { reference: `${BASE}/Patient/a/_history/1` } }, { what: { reference: 'https://other.example/Patient/b' } }, { what: { reference: 'Observation/o' } }],
      },
      BASE,
    );
    expect(c.patient).toEqual(['Patient/self', 'Patient/a', 'Patient/a/_history/1', 'https://other.example/Patient/b']);
    expect(refMatch(c.patient, 'a', 'Patient')).toBe(true);
    expect(refMatch(c.patient, 'x', 'Patient')).toBe(false);
    expect(refMatch(c.patient, 'o', 'Patient')).toBe(false);
  });

  test('reference values that contradict the type are refused', () => {
    expect(() => referenceQueryKeys('Observation/o1', 'patient', 'Patient', BASE)).toThrow(FhirError);
    expect(() => referenceQueryKeys('https://other.example/Observation/o1', 'patient', 'Patient', BASE)).toThrow(FhirError);
    expect(() => referenceQueryKeys('', 'agent', undefined, BASE)).toThrow(FhirError);
  });

  test('what the stored form lacks stays empty, and an invalid recorded is null', () => {
    const c = searchColumns({ resourceType: 'AuditEvent', recorded: 'yesterday', source: { observer: { reference: 'Device/d1' } } });
    expect(c.recorded).toBeNull();
    expect(c.action).toBeNull();
    expect(c.outcome).toBeNull();
    expect([c.type, c.subtype, c.agent, c.entity, c.patient]).toEqual([[], [], [], [], []]);
    expect(c.source).toEqual(['Device/d1', '/d1']);
  });
});
