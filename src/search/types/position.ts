// Location `near` (https://hl7.org/fhir/R4/location.html#positional, search.html#special):
// `near=latitude|longitude|distance|units` (WGS84 degrees) matches the Locations whose position lies
// within the distance along the great circle (haversine, mean Earth radius), computed in SQL over the
// positions indexed at write time (idx_position, migration 0005).
import { FhirError } from '../../fhir/errors.js';
import type { PositionRow } from '../index-rows.js';
import { splitUnescaped, unescapeValue } from '../escape.js';
import { frag, type SqlFragment } from '../sql.js';

/** Mean Earth radius (IUGG) in km: the haversine error against WGS84 stays below 0.5%. */
export const EARTH_RADIUS_KM = 6371.0088;

/** The distance a `near` value without one means: a server choice (location.html#positional). */
export const DEFAULT_NEAR_KM = 5;

/** Distance units, as UCUM codes and the plain abbreviations the spec's prose uses, in km. */
const UNITS: Readonly<Record<string, number>> = { km: 1, m: 0.001, mi: 1.609344, '[mi_i]': 1.609344 };

/** CapabilityStatement documentation of `near`: what Vesta serves. */
export const NEAR_DOCUMENTATION =
  `Locations whose position lies within a distance of latitude|longitude (WGS84 degrees), as latitude|longitude|distance|units: ` +
  `great-circle (haversine) distance, inclusive; units km (the default), m, mi or [mi_i]; without a distance, ${DEFAULT_NEAR_KM} km. ` +
  'Results are not ordered by distance.';

const DECIMAL = /^[+-]?\d+(\.\d+)?$/;

function finite(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/** Index rows for one value of a position parameter (Location.position: latitude and longitude in degrees). */
export function extractPosition(param: string, value: unknown, grp: number | null, out: PositionRow[]): void {
  if (!value || typeof value !== 'object') return;
  const o = value as Record<string, unknown>;
  const latitude = finite(o.latitude);
  const longitude = finite(o.longitude);
  if (latitude === undefined || longitude === undefined || Math.abs(latitude) > 90 || Math.abs(longitude) > 180) return;
  out.push({ param, ...(grp !== null ? { grp } : {}), latitude, longitude });
}

export interface NearQuery {
  latitude: number;
  longitude: number;
  /** Search radius in km. */
  km: number;
}

/** Parses `latitude|longitude[|distance[|units]]`; a malformed value is a 400 that does not echo it. */
export function parseNearQuery(raw: string, code: string): NearQuery {
  const parts = splitUnescaped(raw, '|').map((p) => unescapeValue(p).trim());
  const bad = (why: string) => new FhirError('invalid-search', `parameter ${code} takes latitude|longitude|distance|units: ${why}`);
  if (parts.length < 2 || parts.length > 4) throw bad('two to four parts separated by |');
  const [lat, lon, dist = '', units = ''] = parts;
  if (!DECIMAL.test(lat) || !DECIMAL.test(lon)) throw bad('latitude and longitude are decimal degrees');
  const latitude = Number(lat);
  const longitude = Number(lon);
  if (Math.abs(latitude) > 90 || Math.abs(longitude) > 180) throw bad('latitude lies within [-90, 90] and longitude within [-180, 180]');
  if (dist === '') return { latitude, longitude, km: DEFAULT_NEAR_KM };
  if (!DECIMAL.test(dist) || dist.startsWith('-')) throw bad('the distance is a non-negative decimal');
  const unit = units === '' ? 'km' : units;
  if (!Object.hasOwn(UNITS, unit)) throw bad('units are km, m, mi or [mi_i]');
  return { latitude, longitude, km: Number(dist) * UNITS[unit] };
}

/**
 * The positions (alias `a`, columns latitude and longitude) within the query's distance. A latitude
 * band (one degree of latitude is the same length everywhere) lets the B-tree narrow the rows; the
 * haversine distance decides. Every number is bound.
 */
export function nearCondition(a: string, q: NearQuery): SqlFragment {
  const band = (q.km / ((Math.PI * EARTH_RADIUS_KM) / 180)) * 1.0001;
  const rad = (x: string) => `radians(${x})`;
  const hav =
    `power(sin(${rad(`${a}.latitude - cast(? as double precision)`)} / 2), 2) + ` +
    `cos(${rad('cast(? as double precision)')}) * cos(${rad(`${a}.latitude`)}) * power(sin(${rad(`${a}.longitude - cast(? as double precision)`)} / 2), 2)`;
  return frag(
    `${a}.latitude between cast(? as double precision) and cast(? as double precision) and ` +
      `2 * cast(? as double precision) * asin(least(1, sqrt(${hav}))) <= cast(? as double precision)`,
    q.latitude - band,
    q.latitude + band,
    EARTH_RADIUS_KM,
    q.latitude,
    q.latitude,
    q.longitude,
    q.km,
  );
}
