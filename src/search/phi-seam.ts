// The PHI seam of the search index (design.md "PHI at rest"; https://hl7.org/fhir/R4/search.html):
// every index value of a PHI-bearing parameter passes through protectIndexValue before it is stored.
// With sealing on, the values of parameters over sealed elements never reach the plaintext index
// tables: the blind index (search/blind.ts) keeps keyed HMACs of them in idx_blind instead, and the
// parameters it cannot serve (references, numbers, composites over sealed elements) are withheld.
import { isProtectedParam, MAX_PREFIX } from '../crypto/blind-index.js';
import type { BlindIndex } from './blind.js';
import type { TextRow } from './index-rows.js';
import { FULL_TEXT_PARAMS, textDocument } from './types/text.js';

/** How the store keeps PHI: `sealed` when the PHI codec encrypts the policy's elements. */
export interface PhiIndexMode {
  sealed: boolean;
  /**
   * The blind index of the protected parameters (derived from the policy) when sealed. Without one,
   * the default policy's protected parameters are withheld and not searchable (fail closed).
   */
  blind?: BlindIndex;
}

/** The parameter code an index row belongs to (`code$1` composite parts, `code:identifier` derived rows). */
export function baseParam(param: string): string {
  const i = param.search(/[$:]/);
  return i < 0 ? param : param.slice(0, i);
}

/** Whether a parameter's values are PHI that the store seals. */
function isSealedParam(type: string, code: string, mode: PhiIndexMode): boolean {
  if (!mode.sealed) return false;
  // Full text: without the policy (no blind index) there is no telling sealed text from plain, so
  // fail closed; `_text` has nothing left when the narrative is sealed. `_content` keeps what is not
  // sealed (protectTextRow).
  if (FULL_TEXT_PARAMS.has(code)) return !mode.blind || (code === '_text' && mode.blind.sealsNarrative(type));
  return mode.blind ? mode.blind.isProtected(type, code) : isProtectedParam(type, code);
}

/** Whether a parameter is searched through the blind index (its values are HMACs in idx_blind). */
export function isBlindParam(type: string, param: string, mode: PhiIndexMode): boolean {
  return mode.sealed && mode.blind !== undefined && mode.blind.isBlind(type, baseParam(param));
}

/**
 * Whether a parameter is searchable under this mode: plaintext parameters always; sealed PHI ones
 * through the blind index, or not at all when it cannot serve them (withheld, fail closed).
 */
export function phiParamIndexed(type: string, param: string, mode: PhiIndexMode): boolean {
  const code = baseParam(param);
  return !isSealedParam(type, code, mode) || isBlindParam(type, code, mode);
}

/**
 * THE seam: the value to store in the plaintext index tables for one index row, or undefined to keep
 * it out of them. Sealed PHI never goes there; its blind rows are written beside (storage/blind-index-store.ts).
 */
export function protectIndexValue<T>(type: string, param: string, value: T, mode: PhiIndexMode): T | undefined {
  return isSealedParam(type, baseParam(param), mode) ? undefined : value;
}

/**
 * The seam for full text (`_text`, `_content`): the document to index for one text row, without the
 * pieces from elements the policy seals, or undefined to index nothing. Sealed text never reaches
 * idx_text, not even as lexemes.
 */
export function protectTextRow(type: string, row: TextRow, mode: PhiIndexMode): { param: string; doc: string } | undefined {
  if (isSealedParam(type, row.param, mode)) return undefined;
  const doc = textDocument(row, mode.sealed ? (mode.blind?.sealedPaths(type) ?? []) : []);
  return doc === undefined ? undefined : { param: row.param, doc };
}

/** Why a sealed parameter cannot be searched at all (for the parser's report). */
export function phiUnavailableReason(code: string): string {
  if (FULL_TEXT_PARAMS.has(code)) return `search parameter "${code}" is not available while PHI is sealed (the PHI policy seals the text it searches, and sealed text is never indexed)`;
  return `search parameter "${code}" is not available while PHI is sealed (its values are withheld from the index: a blind index serves only string, token and date parameters)`;
}

/** A refusal when _sort names a parameter kept in the blind index (HMACs have no order), else undefined. */
export function phiSortRefusal(type: string, code: string, mode: PhiIndexMode): string | undefined {
  return isBlindParam(type, code, mode) ? `"${code}" is sealed PHI searched through a blind index, which has no order: sorting on it is not supported` : undefined;
}

/** CapabilityStatement documentation of a parameter served through the blind index, else undefined. */
export function phiSearchDocumentation(type: string, code: string, kind: string, description: string, mode: PhiIndexMode): string | undefined {
  if (!isBlindParam(type, code, mode)) return undefined;
  const served: Record<string, string> = {
    string:
      code === 'phonetic'
        ? 'Soundex match as on plaintext.'
        : `Served: starts-with (case- and accent-insensitive) up to ${MAX_PREFIX} characters, and :exact. Refused (400): :contains, longer starts-with values.`,
    token: 'Served: [system]|[code], |[code], [code], [system]|' + (code === 'identifier' ? ', :of-type' : '') + '. Refused (400): :text, :not, :in, :not-in.',
    date: 'Served: an exact year, month or day (YYYY, YYYY-MM, YYYY-MM-DD) without prefix. Refused (400): prefixes (gt, lt, ge, le, ne, sa, eb, ap) and times.',
  };
  return `${description} [Sealed PHI: searched through a blind index (keyed HMACs; no value in the clear). ${served[kind] ?? ''} :missing is served; _sort on it is refused (400).]`;
}
