// Location near (https://hl7.org/fhir/R4/location.html#positional, search.html#special) on every
// available backend: great-circle distance within a radius in km, m or miles, the default distance,
// the antimeridian, OR values, chains, _has, :missing, updates and deletes, malformed values, the
// backfill of migration 0005 and the CapabilityStatement entry.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { up as positionMigration } from '../../migrations/0005_position_index.js';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const q = encodeURIComponent;
const BOSTON = '42.3601|-71.0589';
const at = (latitude: number, longitude: number) => ({ resourceType: 'Location', status: 'active', position: { latitude, longitude } });

describe.each(backends())('Location near on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  const tag = randomUUID();
  const ids: Record<string, string> = {};
  const label = (id: string) => Object.entries(ids).find(([, v]) => v === id)?.[0] ?? id;
  const post = async (l: string, r: Record<string, unknown>) => {
    ids[l] = (await api.post(`/${r.resourceType}`).set('Content-Type', FHIR).send({ ...r, meta: { tag: [{ system: 'urn:vesta:test', code: tag }] } }).expect(201)).body.id;
  };
  const find = async (type: string, query: string): Promise<string[]> => {
    const res = await api.get(`/${type}?${query}&_tag=${q(`urn:vesta:test|${tag}`)}&_count=100`).set('Prefer', 'handling=strict');
    if (res.status !== 200) throw new Error(`${type}?${query}: ${res.status} ${JSON.stringify(res.body.issue)}`);
    return (res.body.entry ?? []).filter((e: { search: { mode: string } }) => e.search.mode === 'match').map((e: { resource: { id: string } }) => label(e.resource.id)).sort();
  };

  beforeAll(async () => {
    t = await startTestServer(backend);
    api = authed(t);
    await post('boston', at(42.3601, -71.0589));
    await post('cambridge', at(42.3736, -71.1097)); // about 4.4 km from Boston
    await post('worcester', at(42.2626, -71.8023)); // about 62 km
    await post('newyork', at(40.7128, -74.006)); // about 306 km (190 miles)
    await post('suva', at(-18.1416, 178.4419)); // Fiji, near the antimeridian
    await post('nowhere', { resourceType: 'Location', status: 'active', name: 'no position' });
    await post('enc', { resourceType: 'Encounter', status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, location: [{ location: { reference: `Location/${ids.cambridge}` } }] });
  });
  afterAll(async () => {
    await t.close();
  });

  test('within a distance in km, m, mi and [mi_i]; inclusive; the default distance is 5 km', async () => {
    expect(await find('Location', `near=${q(`${BOSTON}|10|km`)}`)).toEqual(['boston', 'cambridge']);
    expect(await find('Location', `near=${q(`${BOSTON}|10`)}`)).toEqual(['boston', 'cambridge']); // km when no units
    expect(await find('Location', `near=${q(`${BOSTON}|5000|m`)}`)).toEqual(['boston', 'cambridge']);
    expect(await find('Location', `near=${q(`${BOSTON}|4000|m`)}`)).toEqual(['boston']);
    expect(await find('Location', `near=${q(`${BOSTON}|100|km`)}`)).toEqual(['boston', 'cambridge', 'worcester']);
    expect(await find('Location', `near=${q(`${BOSTON}|150|mi`)}`)).toEqual(['boston', 'cambridge', 'worcester']);
    expect(await find('Location', `near=${q(`${BOSTON}|200|mi`)}`)).toEqual(['boston', 'cambridge', 'newyork', 'worcester']);
    expect(await find('Location', `near=${q(`${BOSTON}|200|[mi_i]`)}`)).toEqual(['boston', 'cambridge', 'newyork', 'worcester']);
    expect(await find('Location', `near=${q(`${BOSTON}|0`)}`)).toEqual(['boston']);
    expect(await find('Location', `near=${q(BOSTON)}`)).toEqual(['boston', 'cambridge']);
    expect(await find('Location', `near=${q('42.3601|-71.0589||km')}`)).toEqual(['boston', 'cambridge']);
    expect(await find('Location', `near=${q('42.3601|-71.0000|3')}`)).toEqual([]); // 4.8 km east of Boston
  });

  test('great-circle across the antimeridian; OR values; :missing; chains and _has', async () => {
    expect(await find('Location', `near=${q('-18.1416|-179.9|200|km')}`)).toEqual(['suva']); // about 175 km, across 180°
    expect(await find('Location', `near=${q('-18.1416|-179.9|150|km')}`)).toEqual([]);
    expect(await find('Location', `near=${q(`${BOSTON}|1`)},${q('40.7128|-74.006|1')}`)).toEqual(['boston', 'newyork']);
    expect(await find('Location', 'near:missing=true')).toEqual(['nowhere']);
    expect(await find('Encounter', `location.near=${q(`${BOSTON}|10`)}`)).toEqual(['enc']);
    expect(await find('Encounter', `location.near=${q(`${BOSTON}|1`)}`)).toEqual([]);
    expect(await find('Location', `_has:Encounter:location:status=finished&near=${q(`${BOSTON}|10`)}`)).toEqual(['cambridge']);
  });

  test('positions follow updates and deletes', async () => {
    const id = ids.worcester;
    await api.put(`/Location/${id}`).set('Content-Type', FHIR).send({ ...at(42.36, -71.06), id, meta: { tag: [{ system: 'urn:vesta:test', code: tag }] } }).expect(200);
    expect(await find('Location', `near=${q(`${BOSTON}|1`)}`)).toEqual(['boston', 'worcester']);
    await api.delete(`/Location/${id}`).expect(204);
    expect(await find('Location', `near=${q(`${BOSTON}|1`)}`)).toEqual(['boston']);
    const rows = (await t.svc.db.knex.raw("select count(*)::int as n from idx_position where resource_type = 'Location' and resource_id = ?", [id])) as { rows: { n: number }[] };
    expect(rows.rows[0].n).toBe(0);
  });

  test.each([
    ['one part', '42.3601'],
    ['not a number', 'north|-71.0589'],
    ['latitude out of range', '91.5|-71.0589'],
    ['longitude out of range', '42|181'],
    ['negative distance', '42|-71|-3'],
    ['unknown units', '42|-71|3|furlong'],
    ['too many parts', '42|-71|3|km|x'],
  ])('%s is a 400 that does not echo the value', async (_what, value) => {
    const res = await api.get(`/Location?near=${q(value)}`).expect(400);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(res.text).not.toMatch(/north|furlong|91\.5/);
  });

  test('_sort on near is not served; the CapabilityStatement lists near with what is served', async () => {
    await api.get(`/Location?near=${q(BOSTON)}&_sort=near`).set('Prefer', 'handling=strict').expect(400);
    const cs = await api.get('/metadata').expect(200);
    const loc = cs.body.rest[0].resource.find((r: { type: string }) => r.type === 'Location');
    const near = loc.searchParam.find((p: { name: string }) => p.name === 'near');
    expect(near).toMatchObject({ type: 'special', definition: 'http://hl7.org/fhir/SearchParameter/Location-near' });
    expect(near.documentation).toMatch(/haversine.*5 km/);
  });

  test('migration 0005 indexes the Locations stored before it', async () => {
    const knex = t.svc.db.knex;
    await knex.raw('drop table idx_position');
    await positionMigration(knex);
    expect(await find('Location', `near=${q(`${BOSTON}|10`)}`)).toEqual(['boston', 'cambridge']);
    expect(await find('Location', `near=${q('-18.1416|-179.9|200|km')}`)).toEqual(['suva']);
  });
});
