// FHIR date/dateTime/instant parameters (https://hl7.org/fhir/R4/datatypes.html#dateTime) as
// instants and as the range their precision implies (https://hl7.org/fhir/R4/search.html#date).
import { FhirError } from '../fhir/errors.js';

const DATE_RE = /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

/** The half-open range [start, end) a date value covers at its precision. */
export function parseDateRange(raw: string, name: string): { start: Date; end: Date } {
  const m = DATE_RE.exec(raw);
  const bad = () => new FhirError('invalid-request', `${name} must be a FHIR date or dateTime`);
  if (!m) throw bad();
  const [, y, mo, d, hh, mi, ss, frac, tz] = m;
  if (hh !== undefined && tz === undefined) {
    // A time without a zone is ambiguous for a server; FHIR requires one when a time is given.
    throw new FhirError('invalid-request', `${name} gives a time without a time zone`);
  }
  const year = Number(y);
  const month = mo ? Number(mo) - 1 : 0;
  const day = d ? Number(d) : 1;
  if (month > 11 || day < 1 || day > 31) throw bad();
  if (hh === undefined) {
    const start = new Date(Date.UTC(year, month, day));
    if (start.getUTCMonth() !== month) throw bad();
    const end = new Date(start);
    if (!mo) end.setUTCFullYear(year + 1);
    else if (!d) end.setUTCMonth(month + 1);
    else end.setUTCDate(day + 1);
    return { start, end };
  }
  const iso = `${y}-${mo}-${d}T${hh}:${mi}:${ss ?? '00'}${frac ?? ''}${tz === 'Z' ? 'Z' : tz}`;
  const start = new Date(iso);
  if (Number.isNaN(start.getTime())) throw bad();
  const unit = ss === undefined ? 60000 : frac === undefined ? 1000 : 1;
  return { start, end: new Date(start.getTime() + unit) };
}

/** An instant for _since: the start of the value's range. */
export function parseInstant(raw: string, name: string): Date {
  return parseDateRange(raw, name).start;
}
