// Value keys shared by index extraction and SQL planning (https://hl7.org/fhir/R4/search.html#string,
// #token): both sides must transform values identically or searches silently miss.
import { createHash } from 'node:crypto';
import { normaliseString } from '../crypto/blind-index.js';

/** Prefix lengths of the expression indexes in migrations/0002_search_index.ts. */
export const STRING_KEY_LEN = 100;
export const URI_KEY_LEN = 150;

/** Token codes/systems and reference URLs longer than this are stored as a hash (B-tree entry limit). */
export const MAX_KEY_CHARS = 128;

/** Case- and accent-insensitive form of FHIR string search (the blind-index code normalises the same way). */
export function normalise(s: string): string {
  return normaliseString(s);
}

/**
 * An equality key for token codes, systems and reference URLs: the value itself, or a SHA-256 of it
 * when too long for a B-tree entry. Equality is preserved; ordering of long values is not.
 */
export function eqKey(s: string): string;
export function eqKey(s: string | null | undefined): string | null;
export function eqKey(s: string | null | undefined): string | null {
  if (s === null || s === undefined) return null;
  if (s.length <= MAX_KEY_CHARS) return s;
  return `sha256:${createHash('sha256').update(s).digest('hex')}`;
}

/** Escapes LIKE metacharacters so a client value is matched literally (default escape is backslash). */
export function escapeLike(s: string): string {
  return s.replace(/[\\%_]/g, (c) => `\\${c}`);
}

/** The first n code points (PostgreSQL's left() counts characters, not UTF-16 units). */
export function leftChars(s: string, n: number): string {
  if (s.length <= n) return s;
  return Array.from(s).slice(0, n).join('');
}
