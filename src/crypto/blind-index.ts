// Blind indexes (design.md "PHI at rest"): search index values of protected elements are stored as
// keyed HMACs of normalised values, never in the clear. Matches found through them are confirmed
// after opening the resource, so a truncated-HMAC collision can never produce a wrong result.
import { createHmac } from 'node:crypto';

/**
 * Search parameters whose index values are PHI under the DEFAULT policy (phi-policy.default.json).
 * The server derives the protected set from the configured policy (search/blind.ts); this table is
 * the fail-closed fallback when no blind index is configured, and a test checks that the derivation
 * over the default policy gives exactly this table.
 */
export const PROTECTED_SEARCH_PARAMS: Readonly<Record<string, readonly string[]>> = {
  Patient: ['name', 'family', 'given', 'phonetic', 'identifier', 'birthdate', 'telecom', 'phone', 'email', 'address', 'address-city', 'address-country', 'address-postalcode', 'address-state', 'address-use'],
  RelatedPerson: ['name', 'identifier', 'birthdate', 'telecom', 'phone', 'email', 'address', 'address-city', 'address-country', 'address-postalcode', 'address-state', 'address-use', 'phonetic'],
  Person: ['name', 'identifier', 'birthdate', 'telecom', 'phone', 'email', 'address', 'address-city', 'address-country', 'address-postalcode', 'address-state', 'address-use', 'phonetic'],
  // "*": note.text reaches List.note.text.
  List: ['notes'],
  // agent.name, agent.network and entity.name are sealed. AuditEvents are ledger entries, not in the
  // resource index: /AuditEvent search (interactions/audit-events.ts) does not serve these parameters.
  AuditEvent: ['address', 'agent-name', 'entity-name'],
};

export function isProtectedParam(type: string, param: string): boolean {
  return PROTECTED_SEARCH_PARAMS[type]?.includes(param) ?? false;
}

/** Case- and accent-insensitive form used by FHIR string search (search.html#string). */
export function normaliseString(s: string): string {
  return s.normalize('NFD').replace(/\p{M}+/gu, '').toLowerCase().replace(/\s+/g, ' ').trim();
}

/**
 * Longest name prefix indexed (UTF-16 units of the normalised value). Every prefix up to this length
 * has its own MAC, so a starts-with search of up to MAX_PREFIX characters is exact on the MACs alone;
 * a longer search value is refused rather than answered from a shorter prefix.
 */
export const MAX_PREFIX = 40;

/** Calendar units a blind date index holds: year (YYYY), month (YYYY-MM) and day (YYYY-MM-DD). */
export type DateUnit = 'year' | 'month' | 'day';

export class BlindIndexer {
  constructor(private readonly key: Buffer) {
    if (key.length < 32) throw new Error('blind-index key must be at least 32 bytes');
  }

  /** HMAC-SHA256 of a domain-separated value, truncated to 16 bytes (hex). */
  mac(domain: string, value: string): string {
    return createHmac('sha256', this.key).update(domain).update('\u0000').update(value).digest().subarray(0, 16).toString('hex');
  }

  /** Token with its system (null for none): serves `system|code` and `|code` (JSON keeps the pair unambiguous). */
  tokenSystemCode(type: string, param: string, system: string | null, code: string): string {
    return this.mac(`${type}.${param}.sc`, JSON.stringify([system ?? '', code]));
  }

  /** Token code alone: serves `code` (any system). */
  tokenCode(type: string, param: string, code: string): string {
    return this.mac(`${type}.${param}.c`, code);
  }

  /** Token system alone: serves `system|` (any code in the system). */
  tokenSystem(type: string, param: string, system: string): string {
    return this.mac(`${type}.${param}.s`, system);
  }

  /** Exact token: system and code together, and code alone (for `code` and `|code` searches). */
  token(type: string, param: string, system: string | null, code: string): { systemCode: string; code: string } {
    return { systemCode: this.tokenSystemCode(type, param, system, code), code: this.tokenCode(type, param, code) };
  }

  /** The MAC of one prefix of an already normalised value (the search side). */
  prefix(type: string, param: string, norm: string): string {
    return this.mac(`${type}.${param}.p`, norm);
  }

  /** Prefixes 1..MAX_PREFIX of an already normalised value, so starts-with search works on HMACs. */
  prefixes(type: string, param: string, norm: string): string[] {
    const out: string[] = [];
    for (let i = 1; i <= Math.min(norm.length, MAX_PREFIX); i++) out.push(this.prefix(type, param, norm.slice(0, i)));
    return out;
  }

  /** Exact value as written (for :exact, and phonetic codes). */
  exact(type: string, param: string, value: string): string {
    return this.mac(`${type}.${param}.x`, value);
  }

  /** One calendar unit (YYYY, YYYY-MM or YYYY-MM-DD) a date value lies within. */
  dateUnit(type: string, param: string, unitText: string): string {
    return this.mac(`${type}.${param}.d`, unitText);
  }

  /** Dates: the day, the month and the year of an ISO date, so `birthdate=YYYY[-MM[-DD]]` is served. */
  date(type: string, param: string, isoDate: string): { day?: string; month?: string; year: string } {
    return {
      year: this.dateUnit(type, param, isoDate.slice(0, 4)),
      ...(isoDate.length >= 7 ? { month: this.dateUnit(type, param, isoDate.slice(0, 7)) } : {}),
      ...(isoDate.length >= 10 ? { day: this.dateUnit(type, param, isoDate.slice(0, 10)) } : {}),
    };
  }

  /**
   * Marks that the parameter has a value no other MAC describes (a token without code or system, a
   * date spanning years), so `:missing` answers as on plaintext. The same for every resource of the
   * type: it says only that a value exists, which the row itself says anyway.
   */
  presence(type: string, param: string): string {
    return this.mac(`${type}.${param}.e`, '');
  }
}
