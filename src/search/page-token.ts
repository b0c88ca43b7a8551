// Signed paging cursors (https://hl7.org/fhir/R4/http.html#paging): opaque to clients, refused
// with 400 when altered or replayed against different criteria.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { FhirError } from '../fhir/errors.js';

export class PageTokens {
  private readonly key: Buffer;

  /** A secret shared by every node; without one, a random per-process key (links die on restart). */
  constructor(secret?: string) {
    this.key = secret ? Buffer.from(secret, 'utf8') : randomBytes(32);
  }

  private mac(body: string): Buffer {
    return createHmac('sha256', this.key).update(body).digest().subarray(0, 16);
  }

  /** Encodes a cursor bound to a scope string (e.g. the canonical query). */
  sign(scope: string, cursor: Record<string, string | number>): string {
    const body = Buffer.from(JSON.stringify(cursor)).toString('base64url');
    return `${body}.${this.mac(`${scope}\n${body}`).toString('base64url')}`;
  }

  /** Decodes a cursor; throws a 400 FhirError when the token was altered or belongs to other criteria. */
  verify(scope: string, token: string): Record<string, string | number> {
    const bad = () => new FhirError('invalid-search', 'the paging token is invalid or does not belong to this query');
    const dot = token.indexOf('.');
    if (dot < 0 || token.length > 2048) throw bad();
    const body = token.slice(0, dot);
    let sig: Buffer;
    try {
      sig = Buffer.from(token.slice(dot + 1), 'base64url');
    } catch {
      throw bad();
    }
    const want = this.mac(`${scope}\n${body}`);
    if (sig.length !== want.length || !timingSafeEqual(sig, want)) throw bad();
    try {
      const v = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as unknown;
      if (!v || typeof v !== 'object' || Array.isArray(v)) throw bad();
      return v as Record<string, string | number>;
    } catch {
      throw bad();
    }
  }
}
