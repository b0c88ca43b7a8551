import { describe, expect, test } from '@jest/globals';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { resourceTypeInfo } from '../../src/fhir/definitions.js';
import { JweCodec, PhiIntegrityError } from '../../src/crypto/jwe-codec.js';
import { checkRing, generateKeyRing, LocalKeyRing, rotate } from '../../src/crypto/key-ring.js';
import { isElementPath, loadPhiPolicy, PhiPolicy, PhiPolicyError } from '../../src/crypto/phi-policy.js';
import type { Resource } from 'fhir/r4.js';
import jose from 'node-jose';

const types = resourceTypeInfo().map((t) => t.type);
const policy = loadPhiPolicy(undefined, types);
const examples = dirname(createRequire(import.meta.url).resolve('hl7.fhir.r4.examples/package.json'));
const example = (f: string) => JSON.parse(readFileSync(join(examples, f), 'utf8')) as Resource;
const ref = (r: Resource, v = 1) => ({ resourceType: r.resourceType, id: r.id ?? 'x', versionId: v });

describe('PHI policy', () => {
  test('the default policy is valid and covers the HIPAA elements', () => {
    expect(policy.pathsFor('Patient')).toEqual(expect.arrayContaining(['name', 'telecom', 'address', 'birthDate', 'identifier', 'photo', 'contact', 'text.div']));
    expect(policy.pathsFor('Observation')).toEqual(['note.text', 'text.div']);
    expect(policy.pathsFor('Binary')).toEqual([]);
  });

  test('element paths walk into datatypes and backbone elements', () => {
    expect(isElementPath('Observation', 'note.text')).toBe(true);
    expect(isElementPath('Patient', 'contact.name.family')).toBe(true);
    expect(isElementPath('Patient', 'name.nickname')).toBe(false);
    expect(isElementPath('Questionnaire', 'item.item.text')).toBe(true);
  });

  test('unknown types and paths are errors at start', () => {
    expect(() => new PhiPolicy({ resources: { Patinet: ['name'] } }, types)).toThrow(PhiPolicyError);
    expect(() => new PhiPolicy({ resources: { Patient: ['nmae'] } }, types)).toThrow(/Patient has no element nmae/);
    expect(() => new PhiPolicy({ resources: { '*': ['nothing.here'] } }, types)).toThrow(PhiPolicyError);
  });
});

describe('JWE sealing', () => {
  test('round trip: stored content holds no protected element; opening restores the resource exactly', async () => {
    const keys = await LocalKeyRing.fromFile(generateKeyRing());
    const codec = new JweCodec(keys, policy);
    for (const f of ['Patient-example.json', 'Patient-f001.json', 'Observation-example.json', 'RelatedPerson-peter.json']) {
      const r = example(f);
      const s = await codec.seal(r, ref(r));
      const stored = JSON.stringify(s.content);
      if (r.resourceType === 'Patient') {
        expect(s.sealed).not.toBeNull();
        for (const k of ['"name"', '"birthDate"', '"telecom"', '"address"', '"identifier"', '"div"']) expect(stored).not.toContain(k);
      }
      expect(await codec.open(s.content, s.sealed, ref(r))).toEqual(r);
    }
  });

  test('contained resources and document Bundles are sealed by their own type', async () => {
    const keys = await LocalKeyRing.fromFile(generateKeyRing());
    const codec = new JweCodec(keys, policy);
    const r = { resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'x' }, contained: [{ resourceType: 'Patient', id: 'p', name: [{ family: 'Hiddenname' }], birthDate: '1950-01-02', _birthDate: { extension: [{ url: 'http://x', valueString: 'y' }] } }] } as unknown as Resource;
    const s = await codec.seal(r, ref(r));
    expect(JSON.stringify(s.content)).not.toMatch(/Hiddenname|1950-01-02|_birthDate/);
    expect(await codec.open(s.content, s.sealed, ref(r))).toEqual(r);
  });

  test('a ciphertext moved to another row or version does not open', async () => {
    const keys = await LocalKeyRing.fromFile(generateKeyRing());
    const codec = new JweCodec(keys, policy);
    const a = example('Patient-example.json');
    const b = { ...example('Patient-f001.json') };
    const sa = await codec.seal(a, ref(a));
    const sb = await codec.seal(b, ref(b));
    await expect(codec.open(sa.content, sb.sealed, ref(a))).rejects.toBeInstanceOf(PhiIntegrityError);
    await expect(codec.open(sa.content, sa.sealed, ref(a, 2))).rejects.toBeInstanceOf(PhiIntegrityError);
    const tampered = sa.sealed!.slice(0, -4) + (sa.sealed!.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    await expect(codec.open(sa.content, tampered, ref(a))).rejects.toBeInstanceOf(PhiIntegrityError);
    try {
      await codec.open(sa.content, sb.sealed, ref(a));
    } catch (e) {
      expect((e as Error).message).not.toMatch(/Chalmers|Peter/);
    }
  });

  test('nonces (IVs) and content keys are never reused', async () => {
    const keys = await LocalKeyRing.fromFile(generateKeyRing());
    const codec = new JweCodec(keys, policy);
    const r = example('Patient-example.json');
    const ivs = new Set<string>();
    const cek = new Set<string>();
    for (let i = 0; i < 500; i++) {
      const s = await codec.seal(r, ref(r, 1));
      const [, wrapped, iv] = s.sealed!.split('.');
      ivs.add(iv);
      cek.add(wrapped);
    }
    expect(ivs.size).toBe(500);
    expect(cek.size).toBe(500);
  });

  test('after rotation new writes use the new key and old ciphertexts still open; a ring without the old key cannot', async () => {
    const ring = generateKeyRing();
    const oldCodec = new JweCodec(await LocalKeyRing.fromFile(ring), policy);
    const r = example('Patient-example.json');
    const old = await oldCodec.seal(r, ref(r));
    const rotated = rotate(ring);
    const newKeys = await LocalKeyRing.fromFile(rotated);
    const codec = new JweCodec(newKeys, policy);
    expect(await codec.open(old.content, old.sealed, ref(r))).toEqual(r);
    const fresh = await codec.seal(r, ref(r, 2));
    expect(JSON.parse(Buffer.from(fresh.sealed!.split('.')[0], 'base64url').toString()).kid).toBe(rotated.active);
    const withoutOld = await LocalKeyRing.fromFile({ ...rotated, keys: rotated.keys.filter((k) => k.kid === rotated.active) });
    await expect(new JweCodec(withoutOld, policy).open(old.content, old.sealed, ref(r))).rejects.toBeInstanceOf(PhiIntegrityError);
  });

  test('the native open agrees with node-jose and refuses JWEs of any other shape', async () => {
    const ring = generateKeyRing();
    const keys = await LocalKeyRing.fromFile(ring);
    const codec = new JweCodec(keys, policy);
    const r = example('Patient-example.json');
    const s = await codec.seal(r, ref(r));
    // node-jose decrypts what we store, and our open reads what node-jose sealed
    const viaJose = await jose.JWE.createDecrypt(keys.keystore()).decrypt(s.sealed!);
    expect(JSON.parse(viaJose.payload.toString()).length).toBeGreaterThan(0);
    expect(await codec.open(s.content, s.sealed, ref(r))).toEqual(r);
    // and a JWE node-jose sealed in the same shape (as Vesta wrote them before sealing went native) opens
    const byJose = await jose.JWE.createEncrypt({ format: 'compact', contentAlg: 'A256GCM', fields: { kid: ring.active, 'vesta.rt': 'Patient', 'vesta.id': r.id, 'vesta.v': 1 } }, { key: keys.keystore().get(ring.active), header: { alg: 'A256KW' } } as unknown as jose.JWK.Key)
      .update(viaJose.payload)
      .final();
    expect(await codec.open(s.content, byJose as unknown as string, ref(r))).toEqual(r);
    // a JWE with another content encryption is not interpreted, even with a valid key
    const other = await jose.JWE.createEncrypt({ format: 'compact', contentAlg: 'A128CBC-HS256', fields: { kid: ring.active, 'vesta.rt': 'Patient', 'vesta.id': r.id, 'vesta.v': 1 } }, { key: keys.keystore().get(ring.active), header: { alg: 'A256KW' } } as unknown as jose.JWK.Key)
      .update(Buffer.from(JSON.stringify([['/gender', 'male']])))
      .final();
    await expect(codec.open(s.content, other as unknown as string, ref(r))).rejects.toBeInstanceOf(PhiIntegrityError);
    await expect(codec.open(s.content, 'a.b.c', ref(r))).rejects.toBeInstanceOf(PhiIntegrityError);
  });

  test('key rings are checked', () => {
    const ring = generateKeyRing();
    expect(() => checkRing({ ...ring, active: 'nope' })).toThrow();
    expect(() => checkRing({ ...ring, blind: { ...ring.blind, k: ring.keys[0].k } })).toThrow(/differ/);
    expect(() => checkRing({ ...ring, keys: [{ ...ring.keys[0], k: 'short' }] })).toThrow();
  });
});

describe('withoutProtected (sealing without a deep copy)', () => {
  test('gives what extractProtected gives on a copy, over every R4 example, and leaves the resource as it was', async () => {
    const { extractProtected, withoutProtected } = await import('../../src/crypto/phi-extract.js');
    const { readdirSync } = await import('node:fs');
    let compared = 0;
    let withPhi = 0;
    for (const f of readdirSync(examples).filter((n) => n.endsWith('.json') && n !== 'package.json')) {
      const resource = JSON.parse(readFileSync(join(examples, f), 'utf8')) as Record<string, unknown>;
      if (typeof resource.resourceType !== 'string') continue;
      const before = JSON.stringify(resource);
      const copy = structuredClone(resource);
      const expected = extractProtected(copy, policy);
      const got = withoutProtected(resource, policy);
      // Same pointers and values in the same order, same stored content (member order included).
      expect(JSON.stringify(got.extracted)).toBe(JSON.stringify(expected));
      expect(JSON.stringify(got.content)).toBe(JSON.stringify(copy));
      // The resource itself is untouched, and nothing is copied when nothing is sealed.
      expect(JSON.stringify(resource)).toBe(before);
      if (!expected.length) expect(got.content).toBe(resource);
      else withPhi++;
      compared++;
    }
    // The package holds thousands of examples (Bundles with entries, contained resources among them).
    expect(compared).toBeGreaterThan(2000);
    expect(withPhi).toBeGreaterThan(500);
  });

  test('sealed content opens back to the resource, and the resource is not changed by sealing', async () => {
    const codec = new JweCodec(await LocalKeyRing.fromFile(generateKeyRing()), policy);
    const patient = example('Patient-example.json');
    const before = JSON.stringify(patient);
    const s = await codec.seal(patient, ref(patient));
    expect(JSON.stringify(patient)).toBe(before);
    expect(JSON.stringify(s.content)).not.toContain('Chalmers');
    const opened = await codec.openOwned(JSON.parse(JSON.stringify(s.content)) as Resource, s.sealed, ref(patient));
    expect(opened).toEqual(patient);
  });
});
