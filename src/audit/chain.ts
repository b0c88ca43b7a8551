// The ledger's hash chain (issue 16). An entry's digest is the SHA-256 of its AuditEvent in RFC 8785
// canonical JSON (the `canonicalize` package, by the RFC's author); its hash binds the previous
// entry's hash, its own position and its digest, so an edit, deletion, insertion or reordering
// changes every hash after it:
//   digest_n = SHA-256(JCS(event_n))
//   hash_n   = SHA-256(hash_{n-1} || uint64be(n) || digest_n),   hash_{-1} = 32 zero bytes
import { createHash } from 'node:crypto';
import canonicalize from 'canonicalize';

export const GENESIS = Buffer.alloc(32);

/** RFC 8785 canonical JSON of a value, as text. */
export function canonicalText(value: unknown): string {
  const text = canonicalize(value);
  if (text === undefined) throw new Error('the value has no JSON form');
  return text;
}

/** RFC 8785 canonical bytes of a JSON value. */
export function canonicalBytes(value: unknown): Buffer {
  return Buffer.from(canonicalText(value), 'utf8');
}

export function eventDigest(event: unknown): Buffer {
  return createHash('sha256').update(canonicalBytes(event)).digest();
}

/** The digest of stored canonical text (what verify recomputes: no parsing). */
export function canonicalDigest(canonical: string): Buffer {
  return createHash('sha256').update(canonical, 'utf8').digest();
}

export function linkHash(prevHash: Buffer, position: number, digest: Buffer): Buffer {
  const pos = Buffer.alloc(8);
  pos.writeBigUInt64BE(BigInt(position));
  return createHash('sha256').update(prevHash).update(pos).update(digest).digest();
}
