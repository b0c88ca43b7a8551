// Seals the PHI elements of each resource version as one compact JWE (RFC 7516; A256KW key
// wrapping with a fresh content key and IV per message, A256GCM content encryption). The protected
// header binds resourceType, id and versionId, so a ciphertext copied to another row does not open.
import { createCipheriv, createDecipheriv } from 'node:crypto';
import { freshBytes } from './random-pool.js';
import { pace } from '../fhir/pacer.js';
import type { Resource } from 'fhir/r4.js';
import { BlindIndexer } from './blind-index.js';
import type { PhiCodec, Sealed, VersionRef } from './phi-codec.js';
import { extractProtected, restoreProtected, withoutProtected, type Extracted } from './phi-extract.js';
import type { KeyProvider } from './key-ring.js';
import type { PhiPolicy } from './phi-policy.js';

/** A sealed row that does not belong where it was found, or does not open. Never carries PHI. */
export class PhiIntegrityError extends Error {
  constructor(message: string, readonly ref: VersionRef, readonly kid?: string) {
    super(message);
    this.name = 'PhiIntegrityError';
  }
}

/** The default initial value of AES Key Wrap (RFC 3394 section 2.2.3.1). */
const AES_KW_IV = Buffer.from('A6A6A6A6A6A6A6A6', 'hex');

export class JweCodec implements PhiCodec {
  readonly name = 'jwe';
  readonly blind: { indexer: BlindIndexer; kid: string };

  constructor(
    private readonly keys: KeyProvider,
    readonly policy: PhiPolicy,
  ) {
    this.blind = { indexer: new BlindIndexer(keys.blindKey()), kid: keys.blindKid };
  }

  get activeKid(): string {
    return this.keys.activeKid;
  }

  async seal(resource: Resource, ref: VersionRef): Promise<Sealed> {
    // Without copying the resource whole (a structuredClone per write was measured among the top
    // costs of a write, issue 18): the stored content shares what the policy leaves with `resource`.
    const { content, extracted } = withoutProtected(resource as unknown as Record<string, unknown>, this.policy);
    if (!extracted.length) return { content: resource, sealed: null, kid: this.keys.activeKid };
    // Each step is proportional to the resource (30 MB of notes take a second in all): the event loop
    // gets a turn between them (fhir/pacer.ts).
    await pace();
    const payload = Buffer.from(JSON.stringify(extracted), 'utf8');
    await pace();
    return { content: content as unknown as Resource, sealed: this.encrypt(payload, ref), kid: this.keys.activeKid };
  }

  async sealOwned(resource: Resource, ref: VersionRef): Promise<Sealed> {
    const copy = resource as unknown as Record<string, unknown>;
    const extracted = extractProtected(copy, this.policy);
    // Nothing to seal under this policy: the version is still marked as examined under the active key,
    // so a re-seal after a policy change (or after sealing was switched on) knows what it has seen.
    if (!extracted.length) return { content: resource, sealed: null, kid: this.keys.activeKid };
    await pace();
    const payload = Buffer.from(JSON.stringify(extracted), 'utf8');
    await pace();
    return { content: copy as unknown as Resource, sealed: this.encrypt(payload, ref), kid: this.keys.activeKid };
  }

  async open(content: Resource, sealed: string | null, ref: VersionRef): Promise<Resource> {
    if (sealed === null) return content;
    return this.openOwned(structuredClone(content), sealed, ref);
  }

  async openOwned(content: Resource, sealed: string | null, ref: VersionRef): Promise<Resource> {
    if (sealed === null) return content;
    let header: Record<string, unknown>;
    let payload: Buffer;
    try {
      ({ header, payload } = this.decrypt(sealed));
    } catch {
      throw new PhiIntegrityError('sealed PHI does not open with any key of the ring', ref, kidOf(sealed));
    }
    // The header is authenticated (GCM AAD): these values are what was sealed.
    if (header['vesta.rt'] !== ref.resourceType || header['vesta.id'] !== ref.id || header['vesta.v'] !== ref.versionId) {
      throw new PhiIntegrityError('sealed PHI belongs to another resource version', ref, kidOf(sealed));
    }
    const resource = content as unknown as Record<string, unknown>;
    restoreProtected(resource, JSON.parse(payload.toString('utf8')) as Extracted);
    return resource as unknown as Resource;
  }

  /**
   * Encrypts a compact JWE (RFC 7516 section 7.1; RFC 7518 A256KW key wrapping of a fresh content key,
   * A256GCM with a fresh IV, the protected header as AAD) on node:crypto. node-jose did the same but
   * base64url-encoded in JavaScript: about a second of one uninterrupted task for a 30 MB payload,
   * against tens of milliseconds here. The unit tests check that node-jose decrypts the result.
   */
  private encrypt(payload: Buffer, ref: VersionRef): string {
    const kid = this.keys.activeKid;
    const kek = this.keys.rawKey(kid);
    if (!kek || kek.length !== 32) throw new Error('the active PHI key is not a 256-bit symmetric key');
    const header = { alg: 'A256KW', enc: 'A256GCM', kid, 'vesta.rt': ref.resourceType, 'vesta.id': ref.id, 'vesta.v': ref.versionId };
    const h = Buffer.from(JSON.stringify(header), 'utf8').toString('base64url');
    // One draw for the content key and the IV (random-pool.ts).
    const fresh = freshBytes(44);
    const cek = fresh.subarray(0, 32);
    const iv = fresh.subarray(32);
    const wrap = createCipheriv('id-aes256-wrap', kek, AES_KW_IV);
    const ek = Buffer.concat([wrap.update(cek), wrap.final()]);
    const gcm = createCipheriv('aes-256-gcm', cek, iv, { authTagLength: 16 });
    gcm.setAAD(Buffer.from(h, 'ascii'));
    const ct = Buffer.concat([gcm.update(payload), gcm.final()]);
    return [h, ek.toString('base64url'), iv.toString('base64url'), ct.toString('base64url'), gcm.getAuthTag().toString('base64url')].join('.');
  }

  /**
   * Decrypts a compact JWE of exactly the shape seal() writes (RFC 7516 section 5.2 with RFC 7518
   * A256KW and A256GCM) on node:crypto. Reads are the hot path: node-jose took about 165 us per
   * open here against 15 us for this (README, "PHI at rest"). Anything else (other alg/enc, zip,
   * crit, unknown kid) is refused.
   */
  private decrypt(compact: string): { header: Record<string, unknown>; payload: Buffer } {
    const parts = compact.split('.');
    if (parts.length !== 5) throw new Error('not a compact JWE');
    const [h, ek, iv, ct, tag] = parts;
    const header = JSON.parse(Buffer.from(h, 'base64url').toString('utf8')) as Record<string, unknown>;
    if (header.alg !== 'A256KW' || header.enc !== 'A256GCM' || 'zip' in header || 'crit' in header || typeof header.kid !== 'string') {
      throw new Error('unexpected JWE header');
    }
    const kek = this.keys.rawKey(header.kid);
    if (!kek) throw new Error('unknown kid');
    const unwrap = createDecipheriv('id-aes256-wrap', kek, AES_KW_IV);
    const cek = Buffer.concat([unwrap.update(Buffer.from(ek, 'base64url')), unwrap.final()]);
    const ivb = Buffer.from(iv, 'base64url');
    const tagb = Buffer.from(tag, 'base64url');
    if (cek.length !== 32 || ivb.length !== 12 || tagb.length !== 16) throw new Error('malformed JWE');
    const d = createDecipheriv('aes-256-gcm', cek, ivb, { authTagLength: 16 });
    d.setAAD(Buffer.from(h, 'ascii'));
    d.setAuthTag(tagb);
    return { header, payload: Buffer.concat([d.update(Buffer.from(ct, 'base64url')), d.final()]) };
  }
}

/** The kid in a compact JWE's protected header (for logs and rotation), without decrypting. */
export function kidOf(compact: string): string | undefined {
  try {
    const h = JSON.parse(Buffer.from(compact.split('.')[0], 'base64url').toString('utf8')) as { kid?: unknown };
    return typeof h.kid === 'string' ? h.kid : undefined;
  } catch {
    return undefined;
  }
}
