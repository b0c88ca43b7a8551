// The pool behind JWE content keys and IVs (src/crypto/random-pool.ts): every draw is fresh bytes,
// across refills, and none is left in the pool once handed out.
import { describe, expect, it } from '@jest/globals';
import { freshBytes } from '../../src/crypto/random-pool.js';

describe('freshBytes', () => {
  it('never hands out the same bytes twice, across many refills of the pool', () => {
    const seen = new Set<string>();
    // 44 bytes per JWE (content key and IV): 5,000 draws refill the 4 KB pool about 54 times.
    for (let i = 0; i < 5000; i++) {
      const b = freshBytes(44);
      expect(b.length).toBe(44);
      const hex = b.toString('hex');
      expect(seen.has(hex)).toBe(false);
      seen.add(hex);
    }
    // Sizes that do not divide the pool: the tail of a pool is never split across two draws.
    for (const n of [1, 13, 100, 4000, 4096]) expect(freshBytes(n).length).toBe(n);
  });

  it('returns a copy: changing what was handed out changes nothing else', () => {
    const a = freshBytes(32);
    const copy = Buffer.from(a);
    a.fill(0);
    const b = freshBytes(32);
    expect(b.equals(Buffer.alloc(32))).toBe(false);
    expect(copy.equals(Buffer.alloc(32))).toBe(false);
  });

  it('refuses a draw larger than the pool', () => {
    expect(() => freshBytes(4097)).toThrow(/at most 4096/);
  });
});
