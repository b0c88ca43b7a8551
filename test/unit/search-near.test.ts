// Location near (https://hl7.org/fhir/R4/location.html#positional): parsing of
// latitude|longitude|distance|units, extraction of Location.position, and SQL that binds every number.
import { describe, expect, test } from '@jest/globals';
import { FhirError } from '../../src/fhir/errors.js';
import { extractIndexRows } from '../../src/search/index-extract.js';
import { parseSearch } from '../../src/search/parse.js';
import { planWhere } from '../../src/search/plan.js';
import { paramsOf } from '../../src/search/registry.js';
import { DEFAULT_NEAR_KM, parseNearQuery } from '../../src/search/types/position.js';

describe('near', () => {
  test('units convert to km; the distance defaults to the documented server choice', () => {
    expect(parseNearQuery('42.36|-71.06|10|km', 'near')).toEqual({ latitude: 42.36, longitude: -71.06, km: 10 });
    expect(parseNearQuery('42.36|-71.06|10', 'near').km).toBe(10);
    expect(parseNearQuery('42.36|-71.06|2500|m', 'near').km).toBeCloseTo(2.5);
    expect(parseNearQuery('42.36|-71.06|1|mi', 'near').km).toBeCloseTo(1.609344);
    expect(parseNearQuery('42.36|-71.06|1|[mi_i]', 'near').km).toBeCloseTo(1.609344);
    expect(parseNearQuery('42.36|-71.06', 'near').km).toBe(DEFAULT_NEAR_KM);
    expect(DEFAULT_NEAR_KM).toBe(5);
    for (const bad of ['42.36', 'a|b', '90.1|0', '0|-180.5', '1|2|-1', '1|2|1e3', '1|2|3|constructor', '1|2|3|km|x', '1|2|3|KM']) {
      expect(() => parseNearQuery(bad, 'near')).toThrow(FhirError);
    }
  });

  test('Location near is served as a special parameter, indexed from Location.position', () => {
    const spec = paramsOf('Location').supported.get('near');
    expect(spec).toMatchObject({ kind: 'position', def: { type: 'special' } });
    const rows = extractIndexRows({ resourceType: 'Location', position: { latitude: 42.36, longitude: -71.06, altitude: 5 } } as never);
    expect(rows.position).toEqual([{ param: 'near', latitude: 42.36, longitude: -71.06 }]);
    const none = extractIndexRows({ resourceType: 'Location', position: { latitude: 95, longitude: 0 } } as never);
    expect(none.position).toEqual([]);
  });

  test('the SQL binds every number; the haversine decides within a latitude band', () => {
    const plan = planWhere(parseSearch('Location', [['near', '42.36|-71.06|10|km']], { strict: true, phi: { sealed: false } }));
    expect(plan.sql).toMatch(/idx_position/);
    expect(plan.sql).toMatch(/asin/);
    expect(plan.sql).not.toMatch(/42\.36|71\.06/);
    expect((plan.sql.match(/\?/g) ?? []).length).toBe(plan.bindings.length);
    expect(plan.bindings).toEqual(expect.arrayContaining([42.36, -71.06, 10]));
  });
});
