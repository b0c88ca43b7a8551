// The BALP-shaped AuditEvents (src/audit/balp.ts) are valid R4 resources, carry who/what/when/outcome,
// and hold no token, query value or resource content; the ledger's digest is canonical (RFC 8785).
import { describe, expect, test } from '@jest/globals';
import { actionOf, buildAuditEvent, outcomeOf, type AuditFacts } from '../../src/audit/balp.js';
import { canonicalBytes, eventDigest, GENESIS, linkHash } from '../../src/audit/chain.js';
import { R4Validator } from '../../src/validation/validator.js';

const validator = new R4Validator();
const base: AuditFacts = {
  interaction: 'read',
  status: 200,
  recorded: new Date('2026-12-05T12:00:00Z'),
  requestId: 'req-1',
  client: 'app-1',
  user: 'doc',
  fhirUser: 'https://x.example/fhir/Practitioner/p1',
  tokenId: 'jti-123',
  address: '10.0.0.7',
  server: 'https://x.example/fhir',
  resources: [{ type: 'Observation', id: 'o1', version: '3' }],
  patients: ['pt1'],
};

describe('BALP AuditEvents', () => {
  test.each<[string, Partial<AuditFacts>]>([
    ['read', {}],
    ['create failure', { interaction: 'create', status: 422, description: 'invalid-resource', resources: [] }],
    ['search with query', { interaction: 'search-type', resources: [], query: { type: 'Patient', parameters: ['name', 'birthdate', 'name'] } }],
    ['transaction', { interaction: 'transaction', resources: [] }],
    ['operation', { interaction: 'operation:validate', status: 400 }],
    ['sign-in failure', { interaction: 'auth:login', status: 401, user: undefined, fhirUser: undefined, resources: [], patients: [] }],
    ['job', { interaction: 'job:reseal', job: 'vesta-job:reseal', user: undefined, tokenId: undefined, address: undefined }],
  ])('%s: valid R4', (_name, change) => {
    const e = buildAuditEvent({ ...base, ...change } as AuditFacts);
    expect(validator.validate(e).filter((i) => i.severity === 'error' || i.severity === 'fatal')).toEqual([]);
  });

  test('the validator does check them: a broken one is refused', () => {
    const { recorded: _r, ...broken } = buildAuditEvent(base) as Record<string, unknown>;
    expect(validator.validate({ ...broken, action: 'X' }).filter((i) => i.severity === 'error').length).toBeGreaterThanOrEqual(2);
  });

  test('who, what, when, outcome; jti as policy, never the token; query names only', () => {
    const e = buildAuditEvent({ ...base, interaction: 'search-type', query: { type: 'Patient', parameters: ['name', 'identifier'] } }) as Record<string, unknown>;
    expect(e).toMatchObject({ action: 'R', outcome: '0', recorded: '2026-12-05T12:00:00.000Z', subtype: [{ code: 'search-type' }] });
    const agents = e.agent as { requestor: boolean; policy?: string[]; who?: { reference?: string } }[];
    expect(agents.filter((a) => a.requestor)).toHaveLength(1);
    expect(agents.find((a) => a.requestor)?.who?.reference).toBe('https://x.example/fhir/Practitioner/p1');
    expect(agents[0].policy).toEqual(['jti-123']);
    const entities = JSON.stringify(e.entity);
    expect(entities).toContain('Observation/o1/_history/3');
    expect(entities).toContain('Patient/pt1');
    expect(entities).toContain('Patient?identifier&name');
    expect(entities).toContain('req-1');
  });

  test('actions and outcomes', () => {
    expect(['create', 'read', 'update', 'patch', 'delete', 'search-type', 'transaction', 'operation:validate'].map(actionOf)).toEqual(['C', 'R', 'U', 'U', 'D', 'R', 'E', 'E']);
    expect([200, 201, 304, 401, 404, 412, 422, 500, 503].map(outcomeOf)).toEqual(['0', '0', '0', '4', '4', '4', '4', '8', '8']);
  });
});

describe('chain arithmetic', () => {
  test('RFC 8785: key order and number forms do not change the digest', () => {
    expect(canonicalBytes({ b: 1, a: [1e2, 'x', { d: true, c: null }] }).toString()).toBe('{"a":[100,"x",{"c":null,"d":true}],"b":1}');
    expect(eventDigest({ b: 1, a: 2 }).equals(eventDigest({ a: 2, b: 1 }))).toBe(true);
    expect(eventDigest({ a: 2 }).equals(eventDigest({ a: 3 }))).toBe(false);
  });

  test('each hash binds position, previous hash and digest', () => {
    const d = eventDigest({ a: 1 });
    const h0 = linkHash(GENESIS, 0, d);
    expect(linkHash(GENESIS, 1, d).equals(h0)).toBe(false);
    expect(linkHash(h0, 0, d).equals(h0)).toBe(false);
    expect(linkHash(GENESIS, 0, eventDigest({ a: 2 })).equals(h0)).toBe(false);
    expect(h0.toString('hex')).toHaveLength(64);
  });
});
