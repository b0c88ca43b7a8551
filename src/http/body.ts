// Request bodies: media types (https://hl7.org/fhir/R4/http.html#mime-type) and safe JSON parsing
// (bounded depth, no prototype-polluting keys). Error messages never echo the body.
import { FhirError } from '../fhir/errors.js';
import { badCharacter, nameForPath, step } from '../fhir/strings.js';
import { drainPaced, drainSync } from '../fhir/pacer.js';

export const MAX_JSON_DEPTH = 100;
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

export type BodyKind = 'fhir-json' | 'json-patch' | 'form' | 'none';

/** Classifies the Content-Type of a request with a body; throws 415 for what Vesta does not read. */
export function bodyKind(contentType: string | undefined, accepts: BodyKind[]): BodyKind {
  if (!contentType) throw new FhirError('unsupported-media-type', 'the request has a body but no Content-Type; use application/fhir+json');
  const [mime, ...paramParts] = contentType.toLowerCase().split(';').map((s) => s.trim());
  const params = Object.fromEntries(paramParts.map((p) => p.split('=').map((s) => s.trim().replace(/^"|"$/g, ''))));
  if (params.charset && params.charset !== 'utf-8' && params.charset !== 'utf8') {
    throw new FhirError('unsupported-media-type', 'only UTF-8 bodies are accepted');
  }
  if (params.fhirversion && !['4.0', '4.0.1'].includes(params.fhirversion)) {
    throw new FhirError('unsupported-media-type', `fhirVersion ${params.fhirversion.slice(0, 10)} is not served here (R4 4.0)`);
  }
  let kind: BodyKind | undefined;
  // application/json+fhir: the DSTU2 name, still sent by older clients.
  if (mime === 'application/fhir+json' || mime === 'application/json+fhir' || mime === 'application/json') kind = 'fhir-json';
  else if (mime === 'application/json-patch+json') kind = 'json-patch';
  else if (mime === 'application/x-www-form-urlencoded') kind = 'form';
  else if (/(^|\/|\+)xml$/.test(mime)) {
    throw new FhirError('unsupported-media-type', 'XML is not supported by this server; send application/fhir+json');
  }
  if (!kind || !accepts.includes(kind)) {
    throw new FhirError('unsupported-media-type', `Content-Type ${mime.slice(0, 60)} is not accepted here; use ${accepts.map(mimeOf).join(' or ')}`);
  }
  return kind;
}

function mimeOf(k: BodyKind): string {
  return k === 'fhir-json' ? 'application/fhir+json' : k === 'json-patch' ? 'application/json-patch+json' : 'application/x-www-form-urlencoded';
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/** The offset of the first byte that is not well-formed UTF-8 (RFC 3629 §4), or -1. */
export function invalidUtf8Offset(buf: Uint8Array): number {
  let i = 0;
  while (i < buf.length) {
    const b = buf[i];
    if (b < 0x80) {
      i++;
      continue;
    }
    let need: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) need = 1;
    else if (b >= 0xe0 && b <= 0xef) {
      need = 2;
      if (b === 0xe0) lo = 0xa0; // overlong
      if (b === 0xed) hi = 0x9f; // surrogates
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3;
      if (b === 0xf0) lo = 0x90; // overlong
      if (b === 0xf4) hi = 0x8f; // above U+10FFFF
    } else return i;
    for (let k = 1; k <= need; k++) {
      const c = buf[i + k];
      if (c === undefined || c < (k === 1 ? lo : 0x80) || c > (k === 1 ? hi : 0xbf)) return i;
    }
    i += need + 1;
  }
  return -1;
}

/** Decodes a UTF-8 body strictly: malformed bytes are a 400 naming the offset, never U+FFFD. */
export function decodeUtf8(buf: Buffer): string {
  try {
    return UTF8.decode(buf);
  } catch {
    const at = invalidUtf8Offset(buf);
    throw new FhirError('invalid-json', `the request body is not valid UTF-8 (malformed byte sequence at byte offset ${at < 0 ? 'unknown' : at})`);
  }
}

/** Whether the 4 hex digits at `at` are 0000 or a surrogate half (D800-DFFF). */
function suspectEscape(text: string, at: number): boolean {
  const h0 = text.charCodeAt(at) | 0x20;
  if (h0 === 0x64) {
    const h1 = text.charCodeAt(at + 1) | 0x20;
    return (h1 >= 0x38 && h1 <= 0x39) || (h1 >= 0x61 && h1 <= 0x66);
  }
  return text.startsWith('000', at + 1) && h0 === 0x30;
}

interface Frame {
  object: boolean;
  /** Member names seen so far (objects only): a list while short, a Set once long, so both stay cheap. */
  names?: string[] | Set<string>;
  expectName: boolean;
  name: string;
  index: number;
}

function pathOf(root: string, frames: Frame[], upTo = frames.length): string {
  let path = root;
  for (let k = 0; k < upTo; k++) path = frames[k].object ? step(path, frames[k].name) : step(path, frames[k].index);
  return path;
}

/**
 * One linear pass over JSON text that JSON.parse has already accepted: nesting depth, forbidden and
 * duplicate member names (JSON.parse keeps the last silently), and NUL or lone surrogates in strings
 * and names. Only escaped strings can hold those: the grammar forbids a raw U+0000 and strict UTF-8
 * cannot carry a surrogate. An explicit stack, so deep input cannot overflow the call stack.
 */
function scan(text: string, root: string): void {
  const frames: Frame[] = [];
  const n = text.length;
  let i = 0;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      let j = i + 1;
      let escaped = false;
      // Only \u0000 and \uD800-\uDFFF escapes can yield what PostgreSQL refuses; other strings are not decoded.
      let suspect = false;
      for (;;) {
        const d = text.charCodeAt(j);
        if (d === 0x5c) {
          escaped = true;
          if (text.charCodeAt(j + 1) === 0x75 && !suspect) suspect = suspectEscape(text, j + 2);
          j += 2;
        } else if (d === 0x22) break;
        else j++;
      }
      const top = frames[frames.length - 1];
      const isName = top?.object === true && top.expectName;
      const s = escaped && (isName || suspect) ? (JSON.parse(text.slice(i, j + 1)) as string) : text.slice(i + 1, j);
      if (isName) {
        const at = () => pathOf(root, frames, frames.length - 1);
        if (FORBIDDEN_KEYS.has(s)) throw new FhirError('invalid-json', `the JSON contains the forbidden member name "${s}" at ${at()}`);
        if (escaped) {
          const problem = badCharacter(s);
          if (problem) throw new FhirError('invalid-json', `a member name at ${at()} contains ${problem}, which cannot be stored`);
        }
        const names = top.names!;
        if (Array.isArray(names) ? names.includes(s) : names.has(s)) {
          throw new FhirError('invalid-json', `the member "${nameForPath(s)}" appears twice in the same object at ${at()}`);
        }
        if (!Array.isArray(names)) names.add(s);
        else if (names.length < 16) names.push(s);
        else top.names = new Set([...names, s]);
        top.name = s;
        top.expectName = false;
      } else if (suspect) {
        const problem = badCharacter(s);
        if (problem) throw new FhirError('invalid-json', `the string at ${pathOf(root, frames)} contains ${problem}, which cannot be stored`);
      }
      i = j + 1;
      continue;
    }
    if (c === 0x7b || c === 0x5b) {
      if (frames.length >= MAX_JSON_DEPTH) throw new FhirError('invalid-json', `the JSON nests deeper than ${MAX_JSON_DEPTH} levels`);
      frames.push(c === 0x7b ? { object: true, names: [], expectName: true, name: '', index: 0 } : { object: false, expectName: false, name: '', index: 0 });
    } else if (c === 0x7d || c === 0x5d) frames.pop();
    else if (c === 0x2c) {
      const top = frames[frames.length - 1];
      if (top.object) top.expectName = true;
      else top.index++;
    }
    i++;
  }
}

/**
 * Most JSON values (counted as countJsonValues does) one body may hold by default. JSON.parse runs as
 * one uninterrupted task whose cost follows the number of values more than the bytes: 30 MB of `{},`
 * (10 million objects) held the event loop for 12 s. A body at this limit parsed in 0.2-0.6 s on a
 * loaded 2-core machine; the largest Synthea transaction Bundle in the test data (3.9 MB) counts 66,795.
 */
export const MAX_BODY_VALUES = 1_000_000;

/**
 * About one per JSON value: the `{`, `[` and `,` outside strings, counted on the raw bytes (in UTF-8 a
 * `"` or `\` byte is never part of a longer character). Stops counting once above `stopAbove`.
 */
export function countJsonValues(buf: Uint8Array, stopAbove = Infinity): number {
  let n = 0;
  let inString = false;
  for (let i = 0; i < buf.length; i++) {
    const b = buf[i];
    if (inString) {
      if (b === 0x5c) i++;
      else if (b === 0x22) inString = false;
    } else if (b === 0x22) inString = true;
    else if (b === 0x7b || b === 0x5b || b === 0x2c) {
      if (++n > stopAbove) return n;
    }
  }
  return n;
}

/**
 * Parses a JSON body: strict UTF-8, bounded depth and number of values, no prototype-polluting,
 * duplicate or unstorable member names or strings. Linear in the body's size and without recursion.
 */
export function parseJson(buf: Buffer, maxValues = MAX_BODY_VALUES): unknown {
  return drainSync(parseSteps(buf, maxValues));
}

/**
 * parseJson for large bodies in a request: the same checks and answers, with the event loop given back
 * between counting, decoding, parsing and scanning (fhir/pacer.ts); each takes 0.1-0.3 s on 30 MB.
 */
export function parseJsonPaced(buf: Buffer, maxValues = MAX_BODY_VALUES): Promise<unknown> {
  return drainPaced(parseSteps(buf, maxValues));
}

function* parseSteps(buf: Buffer, maxValues: number): Generator<void, unknown, void> {
  if (buf.length === 0) throw new FhirError('invalid-json', 'the request body is empty');
  // Before JSON.parse, whose cost is the stall being bounded (413: the body is too large to process).
  if (countJsonValues(buf, maxValues) > maxValues) {
    throw new FhirError('too-large', `the request body holds more than ${maxValues} JSON values (MAX_BODY_VALUES)`);
  }
  yield;
  const text = decodeUtf8(buf);
  yield;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new FhirError('invalid-json', 'the request body is not valid JSON');
  }
  yield;
  const rt = (value as { resourceType?: unknown } | null)?.resourceType;
  scan(text, typeof rt === 'string' && /^[A-Z][A-Za-z]{0,63}$/.test(rt) ? rt : '$');
  return value;
}

/** Decodes an application/x-www-form-urlencoded body; names and values must be storable strings. */
export function parseForm(buf: Buffer): [string, string][] {
  const pairs = [...new URLSearchParams(decodeUtf8(buf))];
  for (const [k, v] of pairs) {
    const problem = badCharacter(k) ?? badCharacter(v);
    if (problem) throw new FhirError('invalid-request', `the form parameter ${nameForPath(k)} contains ${problem}`);
  }
  return pairs;
}
