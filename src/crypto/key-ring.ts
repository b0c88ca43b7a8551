// The key ring (design.md "PHI at rest"): content-encryption keys as a JWKS with kids, one active;
// old keys keep opening old data. A separate key computes blind-index HMACs. The KeyProvider
// interface is the seam where a KMS or Vault transit can plug in.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import jose from 'node-jose';

export interface KeyRingFile {
  /** kid of the key new writes use. */
  active: string;
  keys: { kty: 'oct'; kid: string; alg: 'A256KW'; use: 'enc'; k: string }[];
  /** Key for blind-index HMACs (never used to encrypt). */
  blind: { kty: 'oct'; kid: string; k: string };
}

export class KeyRingError extends Error {}

export interface KeyProvider {
  readonly activeKid: string;
  keystore(): jose.JWK.KeyStore;
  blindKey(): Buffer;
  /** Key id of the blind-index key (recorded with each resource's blind index rows). */
  readonly blindKid: string;
  kids(): string[];
  /** Raw bytes of a content-encryption key, for the native decrypt path. */
  rawKey(kid: string): Buffer | undefined;
}

function newKey(kid: string) {
  return { kty: 'oct' as const, kid, alg: 'A256KW' as const, use: 'enc' as const, k: randomBytes(32).toString('base64url') };
}

/** A fresh ring: one active content key and one blind-index key. */
export function generateKeyRing(): KeyRingFile {
  const kid = `k-${new Date().toISOString().slice(0, 10)}-${randomBytes(3).toString('hex')}`;
  return { active: kid, keys: [newKey(kid)], blind: { kty: 'oct', kid: `blind-${randomBytes(3).toString('hex')}`, k: randomBytes(32).toString('base64url') } };
}

/** Adds a new active key (rotation); older keys stay to open older versions. */
export function rotate(ring: KeyRingFile): KeyRingFile {
  const kid = `k-${new Date().toISOString().slice(0, 10)}-${randomBytes(3).toString('hex')}`;
  return { ...ring, active: kid, keys: [...ring.keys, newKey(kid)] };
}

/**
 * Replaces the blind-index key. The old one is dropped: blind rows computed with it no longer match,
 * and the blind re-index job (jobs/blind-reindex.ts) recomputes them on the next start; until it has
 * finished, searches on sealed PHI parameters miss the resources not yet re-indexed.
 */
export function rotateBlind(ring: KeyRingFile): KeyRingFile {
  return { ...ring, blind: { kty: 'oct', kid: `blind-${randomBytes(3).toString('hex')}`, k: randomBytes(32).toString('base64url') } };
}

export function checkRing(ring: unknown): KeyRingFile {
  const r = ring as KeyRingFile;
  if (!r || typeof r !== 'object' || !Array.isArray(r.keys) || !r.keys.length) throw new KeyRingError('key ring: "keys" must list at least one key');
  for (const k of r.keys) {
    if (k.kty !== 'oct' || typeof k.kid !== 'string' || !k.kid || typeof k.k !== 'string' || Buffer.from(k.k, 'base64url').length !== 32) {
      throw new KeyRingError('key ring: every key must be {kty:"oct", kid, k: 32 random bytes base64url}');
    }
  }
  if (new Set(r.keys.map((k) => k.kid)).size !== r.keys.length) throw new KeyRingError('key ring: duplicate kid');
  if (!r.keys.some((k) => k.kid === r.active)) throw new KeyRingError('key ring: "active" must name one of the keys');
  if (!r.blind || typeof r.blind.k !== 'string' || Buffer.from(r.blind.k, 'base64url').length < 32) throw new KeyRingError('key ring: "blind" must hold a 32-byte key');
  if (r.keys.some((k) => k.k === r.blind.k)) throw new KeyRingError('key ring: the blind-index key must differ from the encryption keys');
  return r;
}

export class LocalKeyRing implements KeyProvider {
  private constructor(
    private readonly ring: KeyRingFile,
    private readonly store: jose.JWK.KeyStore,
  ) {}

  static async fromFile(ring: KeyRingFile): Promise<LocalKeyRing> {
    checkRing(ring);
    const store = jose.JWK.createKeyStore();
    for (const k of ring.keys) await store.add({ ...k, alg: 'A256KW', use: 'enc' });
    return new LocalKeyRing(ring, store);
  }

  get activeKid(): string {
    return this.ring.active;
  }

  keystore(): jose.JWK.KeyStore {
    return this.store;
  }

  blindKey(): Buffer {
    return Buffer.from(this.ring.blind.k, 'base64url');
  }

  get blindKid(): string {
    return this.ring.blind.kid;
  }

  kids(): string[] {
    return this.ring.keys.map((k) => k.kid);
  }

  rawKey(kid: string): Buffer | undefined {
    const k = this.ring.keys.find((x) => x.kid === kid);
    return k ? Buffer.from(k.k, 'base64url') : undefined;
  }
}

/** Reads a ring file, or creates one (mode 600) when `create` is set and none exists. */
export function readOrCreateRingFile(path: string, create: boolean): { ring: KeyRingFile; created: boolean } {
  if (existsSync(path)) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(path, 'utf8'));
    } catch {
      throw new KeyRingError('key ring file is not valid JSON');
    }
    return { ring: checkRing(parsed), created: false };
  }
  if (!create) throw new KeyRingError('key ring file does not exist');
  const ring = generateKeyRing();
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify(ring, null, 2) + '\n', { mode: 0o600 });
  return { ring, created: true };
}
