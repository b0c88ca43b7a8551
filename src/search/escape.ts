// Search value escaping (https://hl7.org/fhir/R4/search.html#escaping): `\,` `\|` `\$` and `\\` stand
// for the literal characters; unescaped `,` separates OR values, `|` token parts, `$` composite parts.

/** Splits at every unescaped `sep`, keeping escapes in the parts (unescape each part once at the end). */
export function splitUnescaped(raw: string, sep: ',' | '|' | '$', limit = Infinity): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < raw.length; i++) {
    const ch = raw[i];
    if (ch === '\\' && i + 1 < raw.length) {
      cur += ch + raw[i + 1];
      i++;
    } else if (ch === sep && out.length + 1 < limit) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  out.push(cur);
  return out;
}

/** Removes the search escapes. */
export function unescapeValue(s: string): string {
  return s.replace(/\\([\\,|$])/g, '$1');
}

/** Escapes a literal value for a search URL (the inverse of unescapeValue). */
export function escapeValue(s: string): string {
  return s.replace(/[\\,|$]/g, (c) => `\\${c}`);
}
