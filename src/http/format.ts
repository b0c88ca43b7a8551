// Response format negotiation: Accept and _format (https://hl7.org/fhir/R4/http.html#mime-type),
// and _pretty. JSON only; a client that accepts only XML gets 406.
import { FhirError } from '../fhir/errors.js';

export interface Format {
  mime: 'application/fhir+json' | 'application/json';
  pretty: boolean;
}

const XML = /^(application\/fhir\+xml|application\/xml|text\/xml|xml)$/;
const FORMAT_ALIASES: Record<string, Format['mime']> = {
  json: 'application/fhir+json',
  'application/fhir+json': 'application/fhir+json',
  'application/json': 'application/json',
};

export function negotiate(accept: string | undefined, formatParam: string | undefined, prettyParam: string | undefined): Format {
  const pretty = prettyParam === 'true';
  if (prettyParam !== undefined && prettyParam !== 'true' && prettyParam !== 'false') {
    throw new FhirError('invalid-request', '_pretty must be true or false');
  }
  if (formatParam !== undefined) {
    const f = formatParam.split(';')[0].trim().toLowerCase();
    if (XML.test(f)) throw new FhirError('not-acceptable', 'XML is not supported by this server; use _format=json');
    const mime = FORMAT_ALIASES[f];
    if (!mime) throw new FhirError('not-acceptable', `_format ${f.slice(0, 40)} is not supported; use json`);
    return { mime, pretty };
  }
  if (!accept) return { mime: 'application/fhir+json', pretty };
  const types = accept.split(',').map((s) => s.split(';')[0].trim().toLowerCase());
  if (types.some((t) => t === 'application/fhir+json' || t === '*/*' || t === 'application/*')) return { mime: 'application/fhir+json', pretty };
  if (types.includes('application/json') || types.includes('application/json-patch+json')) return { mime: 'application/json', pretty };
  if (types.some((t) => XML.test(t))) throw new FhirError('not-acceptable', 'XML is not supported by this server; accept application/fhir+json');
  throw new FhirError('not-acceptable', 'only application/fhir+json and application/json responses are available');
}
