// Response format negotiation: Accept and _format (https://hl7.org/fhir/R4/http.html#mime-type),
// and _pretty. JSON only; a client that accepts only XML gets 406.
import { FhirError } from '../fhir/errors.js';

export interface Format {
  mime: 'application/fhir+json' | 'application/json';
  pretty: boolean;
}

const XML = /^(application\/fhir\+xml|application\/xml\+fhir|application\/xml|text\/xml|xml)$/;
/** application/json+fhir is the DSTU2 name that older clients still send; the answer uses the R4 name. */
const FORMAT_ALIASES: Record<string, Format['mime']> = {
  json: 'application/fhir+json',
  'application/fhir+json': 'application/fhir+json',
  'application/json+fhir': 'application/fhir+json',
  'application/json': 'application/json',
};
const FHIR_VERSIONS = new Set(['4.0', '4.0.1']);

interface MediaRange {
  type: string;
  q: number;
  fhirVersion?: string;
}

function mediaRange(s: string): MediaRange {
  const [type, ...params] = s.split(';').map((p) => p.trim());
  const r: MediaRange = { type: type.toLowerCase(), q: 1 };
  for (const p of params) {
    const eq = p.indexOf('=');
    if (eq < 0) continue;
    const k = p.slice(0, eq).trim().toLowerCase();
    const v = p.slice(eq + 1).trim().replace(/^"|"$/g, '');
    if (k === 'q') r.q = Number.isFinite(Number(v)) ? Number(v) : 1;
    else if (k === 'fhirversion') r.fhirVersion = v;
  }
  return r;
}

function notServed(version: string): FhirError {
  return new FhirError('not-acceptable', `fhirVersion ${version.slice(0, 10)} is not served here; this server speaks FHIR R4 (fhirVersion=4.0)`);
}

export function negotiate(accept: string | undefined, formatParam: string | undefined, prettyParam: string | undefined): Format {
  const pretty = prettyParam === 'true';
  if (prettyParam !== undefined && prettyParam !== 'true' && prettyParam !== 'false') {
    throw new FhirError('invalid-request', '_pretty must be true or false');
  }
  if (formatParam !== undefined) {
    const r = mediaRange(formatParam);
    const f = r.type;
    if (XML.test(f)) throw new FhirError('not-acceptable', 'XML is not supported by this server; use _format=json');
    const mime = FORMAT_ALIASES[f];
    if (!mime) throw new FhirError('not-acceptable', `_format ${f.slice(0, 40)} is not supported; use json`);
    if (r.fhirVersion !== undefined && !FHIR_VERSIONS.has(r.fhirVersion)) throw notServed(r.fhirVersion);
    return { mime, pretty };
  }
  if (!accept) return { mime: 'application/fhir+json', pretty };
  const ranges = accept.split(',').map(mediaRange).filter((r) => r.type !== '' && r.q > 0);
  // A range naming another FHIR version does not match this server's R4 representation.
  const usable = ranges.filter((r) => r.fhirVersion === undefined || FHIR_VERSIONS.has(r.fhirVersion));
  const types = usable.map((r) => r.type);
  if (types.some((t) => t === 'application/fhir+json' || t === 'application/json+fhir' || t === '*/*' || t === 'application/*')) return { mime: 'application/fhir+json', pretty };
  if (types.includes('application/json') || types.includes('application/json-patch+json')) return { mime: 'application/json', pretty };
  const other = ranges.find((r) => r.fhirVersion !== undefined && !FHIR_VERSIONS.has(r.fhirVersion));
  if (other) throw notServed(other.fhirVersion!);
  if (types.some((t) => XML.test(t))) throw new FhirError('not-acceptable', 'XML is not supported by this server; accept application/fhir+json');
  throw new FhirError('not-acceptable', 'only application/fhir+json and application/json responses are available');
}
