// Users of the built-in authorization server (`vesta users add`): scrypt password hashes (RFC 7914),
// never logged; login throttled per user and per network address, counted in the database so every
// node sees the same failures.
import { createHash, randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import type { Queryable } from '../storage/db.js';
import { clearLoginFailures, countLoginFailures, findUserRow, pruneLoginFailures, recordLoginFailure, type UserRow } from '../storage/auth-store.js';

const N = 1 << 15;
const R = 8;
const P = 1;
const KEY_LEN = 32;
const MAXMEM = 128 * N * R * 2;

function scrypt(password: string, salt: Buffer, keylen: number, opts: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => scryptCb(password, salt, keylen, opts, (err, key) => (err ? reject(err) : resolve(key))));
}

/** `scrypt$N$r$p$salt$hash` (base64url). */
export async function hashPassword(password: string): Promise<string> {
  if (password.length < 8) throw new Error('the password must have at least 8 characters');
  if (password.length > 1024) throw new Error('the password is too long');
  const salt = randomBytes(16);
  const key = await scrypt(password, salt, KEY_LEN, { N, r: R, p: P, maxmem: MAXMEM });
  return `scrypt$${N}$${R}$${P}$${salt.toString('base64url')}$${key.toString('base64url')}`;
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false;
  const [n, r, p] = parts.slice(1, 4).map(Number);
  if (!n || !r || !p || n > 1 << 20 || r > 32 || p > 16) return false;
  const salt = Buffer.from(parts[4], 'base64url');
  const expected = Buffer.from(parts[5], 'base64url');
  if (password.length > 1024) return false;
  const key = await scrypt(password, salt, expected.length, { N: n, r, p, maxmem: 128 * n * r * 2 });
  return key.length === expected.length && timingSafeEqual(key, expected);
}

/** A hash of a password nobody knows: unknown users cost the same time as known ones. */
let decoy: Promise<string> | undefined;

export interface ThrottlePolicy {
  maxPerUser: number;
  maxPerAddress: number;
  windowMs: number;
}

export type LoginResult = { ok: true; user: UserRow } | { ok: false; reason: 'throttled' | 'invalid' };

export class UserDirectory {
  constructor(
    private readonly q: Queryable,
    private readonly throttle: ThrottlePolicy,
  ) {}

  find(username: string): Promise<UserRow | undefined> {
    return findUserRow(this.q, username);
  }

  /**
   * Checks a login. Throttled before the password is looked at: past the limit for the user or the
   * address, even the right password is refused until the window passes.
   */
  async login(username: string, password: string, address: string): Promise<LoginResult> {
    // Throttle keys hash the name: any string a form can carry (NUL, very long) is a valid key.
    const userKey = `user:${createHash('sha256').update(username.toLowerCase()).digest('base64url')}`;
    const addressKey = `addr:${address}`;
    const since = new Date(Date.now() - this.throttle.windowMs);
    const counts = await countLoginFailures(this.q, [userKey, addressKey], since);
    if ((counts.get(userKey) ?? 0) >= this.throttle.maxPerUser || (counts.get(addressKey) ?? 0) >= this.throttle.maxPerAddress) {
      return { ok: false, reason: 'throttled' };
    }
    const user = await findUserRow(this.q, username);
    decoy ??= hashPassword(randomBytes(24).toString('base64url'));
    const ok = await verifyPassword(password, user?.passwordHash ?? (await decoy));
    if (!user || !ok || user.disabled) {
      await recordLoginFailure(this.q, [userKey, addressKey]);
      return { ok: false, reason: 'invalid' };
    }
    await clearLoginFailures(this.q, userKey);
    return { ok: true, user };
  }

  prune(): Promise<number> {
    return pruneLoginFailures(this.q, new Date(Date.now() - this.throttle.windowMs));
  }
}
