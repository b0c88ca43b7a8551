// The pure parts of the audit path (src/audit/auditor.ts, trail.ts, patients.ts): an interaction's
// trail becomes a valid BALP AuditEvent; its PHI-bearing elements are sealed into one JWE that the
// chain covers and open() restores; whatever a request says about itself is made storable; the
// patients of a resource come from its Patient compartment parameters.
import { describe, expect, test } from '@jest/globals';
import type { AuditEvent, Observation } from 'fhir/r4.js';
import pino from 'pino';
import { Auditor, SEALED_EXTENSION } from '../../src/audit/auditor.js';
import { canonicalBytes } from '../../src/audit/chain.js';
import { patientsOfResource, patientsOfVersion } from '../../src/audit/patients.js';
import { AuditTrail } from '../../src/audit/trail.js';
import { ANONYMOUS, type Principal } from '../../src/auth/principal.js';
import { JweCodec } from '../../src/crypto/jwe-codec.js';
import { generateKeyRing, LocalKeyRing } from '../../src/crypto/key-ring.js';
import { PlaintextCodec } from '../../src/crypto/phi-codec.js';
import { loadPhiPolicy } from '../../src/crypto/phi-policy.js';
import { resourceTypeInfo } from '../../src/fhir/definitions.js';
import { extractIndexRows } from '../../src/search/index-extract.js';
import { R4Validator } from '../../src/validation/validator.js';

const log = pino({ level: 'silent' });
const BASE = 'https://vesta.example/fhir';
// Never used for I/O here: event(), seal() and open() do not touch the database.
const noDb = {} as never;
const principal: Principal = { kind: 'token', clientId: 'app-1', subject: 'alice', fhirUser: 'Practitioner/p1', tokenId: 'jti-1', scope: 'user/*.rs', grants: [] };
const origin = { principal, requestId: 'req-9', clock: () => new Date('2026-12-05T10:00:00Z'), address: '192.0.2.4' };

async function sealingAuditor(): Promise<Auditor> {
  const policy = loadPhiPolicy(undefined, resourceTypeInfo().map((t) => t.type));
  return new Auditor(noDb, new JweCodec(await LocalKeyRing.fromFile(generateKeyRing()), policy), { baseUrl: BASE, log });
}

describe('the audit path', () => {
  test('a search trail becomes a valid AuditEvent naming the query, its patient and the user', () => {
    const trail = new AuditTrail('search-type', 'Observation');
    trail.search('Observation', [
      ['patient', 'pt-7'],
      ['code', 'http://loinc.org|8867-4'],
      ['_format', 'json'],
    ]);
    const e = new Auditor(noDb, new PlaintextCodec(), { baseUrl: BASE, log }).event(origin, trail, 200);
    expect(new R4Validator().validate(e).filter((i) => i.severity === 'error' || i.severity === 'fatal')).toEqual([]);
    const query = e.entity!.find((x) => x.role?.code === '24')!;
    expect(Buffer.from(query.query!, 'base64').toString('utf8')).toBe('patient=pt-7&code=http%3A%2F%2Floinc.org%7C8867-4');
    expect(query.description).toBe('Observation?code&patient');
    expect(e.entity!.filter((x) => x.role?.code === '1').map((x) => x.what?.reference)).toEqual(['Patient/pt-7']);
    expect(e.agent!.find((a) => a.requestor)).toMatchObject({ altId: 'alice', who: { reference: 'Practitioner/p1' }, policy: ['jti-1'] });
  });

  test('sealing: the query and the address leave the stored form, open() restores them, the chain covers the sealed form', async () => {
    const auditor = await sealingAuditor();
    const trail = new AuditTrail('search-type', 'Patient');
    trail.search('Patient', [['family', 'Hintz-Secret']]);
    const event = auditor.event(origin, trail, 200);
    // seal() consumes the record it is given (its sealed elements are removed in place).
    const stored = await auditor.seal(structuredClone(event));
    const text = canonicalBytes(stored).toString('utf8');
    expect(text).not.toContain(Buffer.from('family=Hintz-Secret').toString('base64'));
    expect(text).not.toContain('Hintz-Secret');
    expect(text).not.toContain('192.0.2.4');
    expect((stored as unknown as AuditEvent).extension?.find((x) => x.url === SEALED_EXTENSION)?.valueString).toMatch(/^ey[\w-]+\./);
    // What search needs stays in the clear.
    expect(text).toContain('"code":"search-type"');
    const opened = await auditor.open(stored);
    expect(opened).toEqual(event);
  });

  test('a request cannot make its record unstorable: NUL, control characters and lone surrogates are replaced, long values bounded', () => {
    const odd: Principal = { ...ANONYMOUS, clientId: `a\u0000b\u0001c\ud800${'x'.repeat(5000)}` };
    const trail = new AuditTrail('request:refused');
    trail.resource(`T\u0000${'y'.repeat(300)}`, 'id\udc00');
    const e = new Auditor(noDb, new PlaintextCodec(), { baseUrl: BASE, log }).event({ ...origin, principal: odd }, trail, 404, 'x'.repeat(1000));
    const json = JSON.stringify(e);
    expect(json).not.toMatch(/\\u0000|\\u0001|\\ud800|\\udc00/);
    expect(e.agent![0].who!.identifier!.value!.length).toBeLessThanOrEqual(257);
    expect(e.agent![0].who!.identifier!.value!.startsWith('a\ufffdb\ufffdc\ufffd')).toBe(true);
    expect(e.outcomeDesc!.length).toBeLessThan(300);
  });

  test("patients: a resource's Patient compartment parameters, from content or from index rows; a deletion's from before", () => {
    const obs: Observation = { resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/p1' }, performer: [{ reference: 'Patient/p2' }, { reference: 'Practitioner/d1' }] };
    expect(patientsOfResource(obs).sort()).toEqual(['p1', 'p2']);
    expect(patientsOfVersion({ resourceType: 'Observation', id: 'o1', resource: obs, index: extractIndexRows(obs) }).sort()).toEqual(['p1', 'p2']);
    expect(patientsOfVersion({ resourceType: 'Observation', id: 'o1', formerPatients: ['p3'] })).toEqual(['p3']);
    expect(patientsOfResource({ resourceType: 'Patient', id: 'p9' })).toEqual(['p9']);
    expect(patientsOfResource({ resourceType: 'Organization', id: 'org' })).toEqual([]);
  });

  test('a Bundle entry has its own trail; a retried transaction forgets what an attempt touched', () => {
    const bundle = new AuditTrail('transaction');
    const entry = bundle.entry('create', 'Observation', true);
    entry.resource('Observation', 'o1', 1, ['p1']);
    expect(bundle.entries).toEqual([entry]);
    bundle.reset();
    expect(entry.resources).toEqual([]);
    expect([...entry.patients]).toEqual([]);
    // A target named before it is found gets its version when it is.
    entry.resource('Observation', 'o2');
    entry.resource('Observation', 'o2', 4);
    expect(entry.resources).toEqual([{ type: 'Observation', id: 'o2', version: '4' }]);
  });
});
