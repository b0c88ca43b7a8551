// Token search (https://hl7.org/fhir/R4/search.html#token): [system|]code on Coding, CodeableConcept,
// Identifier, ContactPoint, code, boolean, id, uri and string; :text on display / CodeableConcept.text
// / Identifier.type.text; :of-type on Identifier.type + value; :not. Codes compare exactly.
import { FhirError } from '../../fhir/errors.js';
import type { TokenRow } from '../index-rows.js';
import { nodeType } from '../expressions.js';
import { eqKey, escapeLike, normalise } from '../keys.js';
import { splitUnescaped, unescapeValue } from '../escape.js';
import { frag, type SqlFragment } from '../sql.js';

/** Derived rows for identifier :of-type live under this parameter name. */
export const ofTypeParam = (param: string) => `${param}:of-type`;

function s(v: unknown): string | null {
  return typeof v === 'string' && v !== '' ? v : null;
}

function textOf(v: unknown): string | null {
  const t = s(v);
  if (t === null) return null;
  const n = normalise(t);
  return n === '' ? null : n;
}

function row(param: string, grp: number | null, system: string | null, code: string | null, text: string | null): TokenRow {
  return { param, ...(grp !== null ? { grp } : {}), system: eqKey(system), code: eqKey(code), ...(text !== null ? { text } : {}) };
}

function coding(param: string, grp: number | null, c: Record<string, unknown>, out: TokenRow[]): void {
  const system = s(c.system);
  const code = s(c.code);
  const text = textOf(c.display);
  if (system !== null || code !== null || text !== null) out.push(row(param, grp, system, code, text));
}

function identifier(param: string, grp: number | null, o: Record<string, unknown>, out: TokenRow[]): void {
  const value = s(o.value);
  const type = o.type as Record<string, unknown> | undefined;
  out.push(row(param, grp, s(o.system), value, textOf(type?.text)));
  if (value !== null && Array.isArray(type?.coding)) {
    for (const c of type.coding as Record<string, unknown>[]) {
      const tc = s(c?.code);
      if (tc !== null) out.push(row(ofTypeParam(param), grp, s(c.system), `${tc}|${value}`, null));
    }
  }
}

/** Datatypes a token expression can reach (e.g. Group.characteristic.value[x]) that carry no token. */
const NOT_TOKENS: ReadonlySet<string> = new Set(['Quantity', 'Age', 'Duration', 'Distance', 'Count', 'SimpleQuantity', 'Money', 'Range', 'Ratio', 'Reference', 'Period', 'Attachment']);

/** Index rows for one value of a token parameter. */
export function extractToken(param: string, value: unknown, grp: number | null, out: TokenRow[]): void {
  if (typeof value === 'string') {
    if (value !== '') out.push(row(param, grp, null, value, null));
    return;
  }
  if (typeof value === 'boolean' || typeof value === 'number') {
    out.push(row(param, grp, null, String(value), null));
    return;
  }
  if (!value || typeof value !== 'object') return;
  const o = value as Record<string, unknown>;
  const t = nodeType(value);
  if ((t !== undefined && NOT_TOKENS.has(t)) || 'reference' in o || 'low' in o || 'high' in o) return;
  if (t === 'CodeableConcept' || (t === undefined && ('coding' in o || ('text' in o && !('value' in o))))) {
    if (Array.isArray(o.coding)) for (const c of o.coding as Record<string, unknown>[]) if (c && typeof c === 'object') coding(param, grp, c, out);
    const text = textOf(o.text);
    if (text !== null) out.push(row(param, grp, null, null, text));
    return;
  }
  if (t === 'ContactPoint') {
    // search.html#token: a ContactPoint matches on its value; ContactPoint.system is not a namespace.
    if (s(o.value) !== null) out.push(row(param, grp, null, s(o.value), null));
    return;
  }
  if (t === 'Identifier' || (t === undefined && 'value' in o)) return identifier(param, grp, o, out);
  if (t === 'Coding' || 'code' in o || 'system' in o) coding(param, grp, o, out);
}

export interface TokenQuery {
  system?: string;
  code?: string;
  /** A `|` was present: `|code` means "no system", `system|` means "any code in the system". */
  hasBar: boolean;
}

/** Splits a token value at its first unescaped '|' and unescapes both halves. */
export function parseTokenQuery(raw: string): TokenQuery {
  const parts = splitUnescaped(raw, '|', 2);
  if (parts.length === 1) return { code: unescapeValue(parts[0]), hasBar: false };
  const system = unescapeValue(parts[0]);
  const code = unescapeValue(parts[1]);
  return { ...(system ? { system } : {}), ...(code ? { code } : {}), hasBar: true };
}

/** The match of one OR value on index alias `a` (columns system, code). */
export function tokenCondition(a: string, raw: string, code: string): SqlFragment {
  const t = parseTokenQuery(raw);
  if (t.code === undefined && t.system === undefined) throw new FhirError('invalid-search', `parameter ${code} has an empty value`);
  const parts: SqlFragment[] = [];
  if (t.code !== undefined) parts.push(frag(`${a}.code = ?`, eqKey(t.code)));
  if (t.system !== undefined) parts.push(frag(`${a}.system = ?`, eqKey(t.system)));
  else if (t.hasBar) parts.push(frag(`${a}.system is null`));
  return { sql: parts.map((p) => p.sql).join(' and '), bindings: parts.flatMap((p) => p.bindings) };
}

/** :text: starts-with on the normalised display text (search.html#modifiers). */
export function tokenTextCondition(a: string, raw: string, code: string): SqlFragment {
  const n = normalise(raw);
  if (n === '') throw new FhirError('invalid-search', `parameter ${code} has an empty value`);
  return frag(`${a}.text_norm like ?`, `${escapeLike(n)}%`);
}

/** :of-type: `typeSystem|typeCode|value`, all three required (search.html#modifiers). */
export function tokenOfTypeCondition(a: string, raw: string, code: string): SqlFragment {
  const parts = splitUnescaped(raw, '|').map(unescapeValue);
  if (parts.length !== 3 || parts.some((p) => p === '')) throw new FhirError('invalid-search', `parameter ${code}:of-type needs system|code|value`);
  return frag(`${a}.system = ? and ${a}.code = ?`, eqKey(parts[0]), eqKey(`${parts[1]}|${parts[2]}`));
}
