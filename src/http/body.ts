// Request bodies: media types (https://hl7.org/fhir/R4/http.html#mime-type) and safe JSON parsing
// (bounded depth, no prototype-polluting keys). Error messages never echo the body.
import { FhirError } from '../fhir/errors.js';

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
  if (mime === 'application/fhir+json' || mime === 'application/json') kind = 'fhir-json';
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

/** Parses JSON and checks depth and keys without recursion (so deep input cannot overflow the stack). */
export function parseJson(buf: Buffer): unknown {
  if (buf.length === 0) throw new FhirError('invalid-json', 'the request body is empty');
  let value: unknown;
  try {
    value = JSON.parse(buf.toString('utf8'));
  } catch {
    throw new FhirError('invalid-json', 'the request body is not valid JSON');
  }
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length) {
    const [v, depth] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (depth > MAX_JSON_DEPTH) throw new FhirError('invalid-json', `the JSON nests deeper than ${MAX_JSON_DEPTH} levels`);
    if (Array.isArray(v)) {
      for (const x of v) if (x !== null && typeof x === 'object') stack.push([x, depth + 1]);
      continue;
    }
    for (const k of Object.keys(v)) {
      if (FORBIDDEN_KEYS.has(k)) throw new FhirError('invalid-json', `the JSON contains the forbidden member name "${k}"`);
      const x = (v as Record<string, unknown>)[k];
      if (x !== null && typeof x === 'object') stack.push([x, depth + 1]);
    }
  }
  return value;
}
