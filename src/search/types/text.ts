// Full-text search (https://hl7.org/fhir/R4/search.html#text, the common parameters `_text` and
// `_content`): `_text` searches the narrative (text.div), `_content` the whole resource. The spec leaves
// the matching to the server; Vesta uses PostgreSQL full text: the text of a version is reduced to a
// tsvector (English stemming, accents folded) in idx_text when the version is written (migration
// 0008), and a query value is read with websearch_to_tsquery, so `fever cough` needs both words,
// `fever or cough` either, `"chest pain"` the phrase and `-cough` its absence.
//
// Only the tsvector is stored, never the text itself. Text is extracted as pieces labelled with the
// element path they came from, so the PHI seam (search/phi-seam.ts) can leave out the elements the
// PHI policy seals before anything reaches the index.
import { FhirError } from '../../fhir/errors.js';
import type { TextRow } from '../index-rows.js';
import { frag, type SqlFragment } from '../sql.js';

/** The full-text common parameters (search.html#text). */
export const FULL_TEXT_PARAMS: ReadonlySet<string> = new Set(['_text', '_content']);

/** The PostgreSQL text search configuration of documents and queries (a constant, never client input). */
export const TEXT_SEARCH_CONFIG = 'english';

/** Characters of text indexed per resource and parameter; the rest is not searchable (a tsvector is capped at 1 MB). */
export const MAX_TEXT_CHARS = 100_000;

/** Characters one query value may have. */
export const MAX_QUERY_CHARS = 1_000;

export const TEXT_DOCUMENTATION =
  'Full text over the narrative (text.div, tags removed): PostgreSQL full text with English stemming, case and accents ignored. ' +
  'Words are all required; `or` between words, "quoted phrases" and -word (absence) are understood (websearch_to_tsquery). ' +
  'Comma-separated values are alternatives. No modifiers.';

export const CONTENT_DOCUMENTATION =
  "Full text over every string element of the resource itself (codes, displays, free text, the narrative's text; not id, meta, " +
  'base64 data, contained resources or Bundle entries): PostgreSQL full text with English stemming, case and accents ignored. ' +
  'Words are all required; `or` between words, "quoted phrases" and -word (absence) are understood. Comma-separated values are alternatives. No modifiers.';

/** Case is left to PostgreSQL; accents are folded here (no unaccent extension needed), for documents and queries alike. */
export function foldAccents(s: string): string {
  return s.normalize('NFD').replace(/\p{M}+/gu, '');
}

const ENTITIES: Readonly<Record<string, string>> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: ' ' };

/**
 * The text outside tags, each tag a space. A scan, not /<[^>]*>/: that regex is quadratic on a run of
 * unclosed '<' (every one rescans to the end); here each character is read at most twice.
 */
function stripTags(s: string): string {
  let out = '';
  let i = 0;
  while (i < s.length) {
    const lt = s.indexOf('<', i);
    if (lt < 0) return out + s.slice(i);
    out += `${s.slice(i, lt)} `;
    const gt = s.indexOf('>', lt + 1);
    if (gt < 0) return out; // an unclosed tag: nothing after it is text
    i = gt + 1;
  }
  return out;
}

/** The words of an XHTML narrative: tags dropped (each one a word break), entities decoded. Linear in the input. */
export function narrativeText(div: string): string {
  return stripTags(div).replace(/&(#x[0-9a-fA-F]{1,6}|#[0-9]{1,7}|[a-zA-Z]{2,8});/g, (m, e: string) => {
      if (e[0] !== '#') return ENTITIES[e] ?? ' ';
      const cp = e[1] === 'x' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10);
      return cp > 0 && cp <= 0x10ffff ? String.fromCodePoint(cp) : ' ';
    });
}

/** Elements whose strings are no words: identity and bookkeeping, base64 payloads. */
const SKIPPED_TOP = new Set(['resourceType', 'id', 'meta', 'implicitRules', 'contained']);

type Piece = [path: string, text: string];

function walk(node: unknown, path: string, out: Piece[], budget: { left: number }): void {
  if (budget.left <= 0) return;
  if (typeof node === 'string') {
    if (!node) return;
    const text = path === 'text.div' ? narrativeText(node) : node;
    out.push([path, text]);
    budget.left -= text.length;
    return;
  }
  if (Array.isArray(node)) {
    for (const item of node) walk(item, path, out, budget);
    return;
  }
  if (!node || typeof node !== 'object') return;
  const obj = node as Record<string, unknown>;
  if (path && typeof obj.resourceType === 'string') return; // a nested resource (Bundle entry, Parameters part) is not this one's content
  for (const [key, value] of Object.entries(obj)) {
    if (!path && SKIPPED_TOP.has(key)) continue;
    if (key === 'data' || key === 'url' || key === 'system' || key === 'reference') continue; // base64, and addresses rather than words
    // A primitive's extension sibling (_birthDate) belongs to the element for the PHI policy.
    const name = key.startsWith('_') ? key.slice(1) : key;
    walk(value, path ? `${path}.${name}` : name, out, budget);
  }
}

/**
 * The text rows of a resource: `_text` from its narrative, `_content` from every string it holds,
 * each as pieces with their element paths (array positions dropped, `_element` siblings under
 * their element). Rows exist only where there is text.
 */
export function extractText(resource: Record<string, unknown>, params: { text: boolean; content: boolean }): TextRow[] {
  const out: TextRow[] = [];
  const div = (resource.text as { div?: unknown } | undefined)?.div;
  if (params.text && typeof div === 'string') {
    const text = narrativeText(div);
    if (text.trim()) out.push({ param: '_text', pieces: [['text.div', text]] });
  }
  if (params.content) {
    const pieces: Piece[] = [];
    walk(resource, '', pieces, { left: MAX_TEXT_CHARS });
    if (pieces.some(([, t]) => t.trim())) out.push({ param: '_content', pieces });
  }
  return out;
}

/** Whether element path `path` lies at or under the policy path `sealed` (a `[x]` segment covers every choice variant). */
export function pathWithin(path: string, sealed: string): boolean {
  const p = path.split('.');
  const s = sealed.split('.');
  if (p.length < s.length) return false;
  return s.every((seg, i) => (seg.endsWith('[x]') ? p[i].startsWith(seg.slice(0, -3)) && /^[A-Z]/.test(p[i].slice(seg.length - 3)) : p[i] === seg));
}

/** The document a row becomes: its pieces but those under `sealed` paths, joined, accents folded, capped. */
export function textDocument(row: TextRow, sealed: readonly string[] = []): string | undefined {
  const kept = row.pieces.filter(([path]) => !sealed.some((s) => pathWithin(path, s))).map(([, t]) => t);
  const text = foldAccents(kept.join(' \n ')).slice(0, MAX_TEXT_CHARS);
  return text.trim() ? text : undefined;
}

/** The condition of one `_text` / `_content` value on index alias `a`. */
export function textCondition(a: string, value: string, code: string): SqlFragment {
  if (value.length > MAX_QUERY_CHARS) throw new FhirError('invalid-search', `a ${code} value may have at most ${MAX_QUERY_CHARS} characters`);
  if (!value.trim()) throw new FhirError('invalid-search', `${code} needs a value`);
  return frag(`${a}.doc @@ websearch_to_tsquery('${TEXT_SEARCH_CONFIG}', ?)`, foldAccents(value));
}
