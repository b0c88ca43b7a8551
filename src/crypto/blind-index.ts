// Blind indexes (design.md "PHI at rest"): search index values of protected elements are stored as
// keyed HMACs of normalised values, never in the clear. Matches found through them are confirmed
// after opening the resource, so a truncated-HMAC collision can never produce a wrong result.
import { createHmac } from 'node:crypto';

/** Search parameters whose index values are PHI, per resource type (the policy's elements). */
export const PROTECTED_SEARCH_PARAMS: Readonly<Record<string, readonly string[]>> = {
  Patient: ['name', 'family', 'given', 'phonetic', 'identifier', 'birthdate', 'telecom', 'phone', 'email', 'address', 'address-city', 'address-country', 'address-postalcode', 'address-state', 'address-use'],
  RelatedPerson: ['name', 'identifier', 'birthdate', 'telecom', 'phone', 'email', 'address', 'address-city', 'address-country', 'address-postalcode', 'address-state', 'address-use', 'phonetic'],
  Person: ['name', 'identifier', 'birthdate', 'telecom', 'phone', 'email', 'address', 'address-city', 'address-country', 'address-postalcode', 'address-state', 'address-use', 'phonetic'],
};

export function isProtectedParam(type: string, param: string): boolean {
  return PROTECTED_SEARCH_PARAMS[type]?.includes(param) ?? false;
}

/** Case- and accent-insensitive form used by FHIR string search (search.html#string). */
export function normaliseString(s: string): string {
  return s.normalize('NFD').replace(/\p{M}+/gu, '').toLowerCase().replace(/\s+/g, ' ').trim();
}

/** Longest name prefix indexed: longer search prefixes match on this and are confirmed after opening. */
export const MAX_PREFIX = 8;

export class BlindIndexer {
  constructor(private readonly key: Buffer) {
    if (key.length < 32) throw new Error('blind-index key must be at least 32 bytes');
  }

  /** HMAC-SHA256 of a domain-separated value, truncated to 16 bytes (hex). */
  mac(domain: string, value: string): string {
    return createHmac('sha256', this.key).update(domain).update('\u0000').update(value).digest().subarray(0, 16).toString('hex');
  }

  /** Exact token: system and code together, and code alone (for `code` and `|code` searches). */
  token(type: string, param: string, system: string | null, code: string): { systemCode: string; code: string } {
    return { systemCode: this.mac(`${type}.${param}.sc`, `${system ?? ''}|${code}`), code: this.mac(`${type}.${param}.c`, code) };
  }

  /** Prefixes 1..MAX_PREFIX of the normalised string, so starts-with search works on HMACs. */
  prefixes(type: string, param: string, value: string): string[] {
    const n = normaliseString(value);
    const out: string[] = [];
    for (let i = 1; i <= Math.min(n.length, MAX_PREFIX); i++) out.push(this.mac(`${type}.${param}.p`, n.slice(0, i)));
    return out;
  }

  /** Exact normalised string (for :exact after confirmation, and for full-value equality). */
  exact(type: string, param: string, value: string): string {
    return this.mac(`${type}.${param}.x`, value);
  }

  /** Dates: the exact day and the year, so `birthdate=YYYY-MM-DD` and `birthdate=YYYY` are served. */
  date(type: string, param: string, isoDate: string): { day?: string; month?: string; year: string } {
    const year = isoDate.slice(0, 4);
    return {
      year: this.mac(`${type}.${param}.y`, year),
      ...(isoDate.length >= 7 ? { month: this.mac(`${type}.${param}.m`, isoDate.slice(0, 7)) } : {}),
      ...(isoDate.length >= 10 ? { day: this.mac(`${type}.${param}.d`, isoDate.slice(0, 10)) } : {}),
    };
  }
}
