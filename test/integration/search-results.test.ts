// Search results (https://hl7.org/fhir/R4/search.html#sort, #count, #total, #summary, #elements and
// http.html#paging): _sort with several keys and directions, keyset paging that stays exact under
// concurrent writes, _total, _summary, _elements, and how unsupported parameters are reported.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const q = encodeURIComponent;

interface Bundle {
  total?: number;
  link: { relation: string; url: string }[];
  entry?: { search: { mode: string }; resource: Record<string, unknown> & { id: string; meta?: { tag?: { code: string }[] }; issue?: { diagnostics: string }[] } }[];
}

describe.each(backends())('search results on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  beforeAll(async () => {
    t = await startTestServer(backend, { PHI_ENCRYPTION: 'off' });
    api = authed(t);
  });
  afterAll(async () => {
    await t.close();
  });

  async function patients(specs: [string, string | undefined, string][]) {
    const tag = randomUUID();
    const ids: Record<string, string> = {};
    for (const [label, birthDate, family] of specs) {
      const body = { resourceType: 'Patient', meta: { tag: [{ system: 'urn:vesta:test', code: tag }] }, name: [{ family }], ...(birthDate ? { birthDate } : {}), text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">x</div>' } };
      ids[label] = (await api.post('/Patient').set('Content-Type', FHIR).send(body).expect(201)).body.id;
    }
    return { ids, label: Object.fromEntries(Object.entries(ids).map(([k, v]) => [v, k])), tagQuery: `_tag=${q(`urn:vesta:test|${tag}`)}`, tag };
  }

  /** Follows next links from a first URL; returns the labels in order and the pages seen. */
  async function walk(first: string, label: Record<string, string>, between?: (page: number) => Promise<void>) {
    const out: string[] = [];
    let url: string | undefined = first;
    let pages = 0;
    while (url) {
      const res: request.Response = await api.get(url).expect(200);
      pages++;
      const b = res.body as Bundle;
      for (const e of b.entry ?? []) if (e.search.mode === 'match') out.push(label[e.resource.id] ?? 'other');
      const next = b.link.find((l) => l.relation === 'next');
      url = next ? next.url.slice(t.url.length) : undefined;
      if (between) await between(pages);
    }
    return { out, pages };
  }

  test('_sort: several keys, descending, values missing last; keyset paging stays exact under writes', async () => {
    const { ids, label, tagQuery, tag } = await patients([
      ['a', '1980-05-01', 'Young'],
      ['b', '1970-01-01', 'Adams'],
      ['c', '1990', 'Baker'],
      ['d', '1970-01-01', 'Zed'],
      ['e', undefined, 'Moss'],
      ['f', '1985-07-07', 'Adams'],
    ]);
    const all = async (sort: string) => (await walk(`/Patient?${tagQuery}&_sort=${sort}&_count=100`, label)).out;
    expect(await all('birthdate,family')).toEqual(['b', 'd', 'a', 'f', 'c', 'e']);
    expect(await all('-birthdate,family')).toEqual(['c', 'f', 'a', 'b', 'd', 'e']);
    expect(await all('family,-birthdate')).toEqual(['f', 'b', 'c', 'e', 'a', 'd']);
    expect(await all('_id')).toEqual(Object.entries(ids).sort((x, y) => (x[1] < y[1] ? -1 : 1)).map(([l]) => l));
    expect(await all('-_lastUpdated')).toEqual(['f', 'e', 'd', 'c', 'b', 'a']);
    expect(await all('_lastUpdated')).toEqual(['a', 'b', 'c', 'd', 'e', 'f']);

    // Pages of two: a write between pages that sorts before the cursor neither repeats nor skips a match.
    const paged = await walk(`/Patient?${tagQuery}&_sort=-birthdate,family&_count=2`, label, async (page) => {
      if (page === 1) {
        const body = { resourceType: 'Patient', meta: { tag: [{ system: 'urn:vesta:test', code: tag }] }, name: [{ family: 'Early' }], birthDate: '2001' };
        await api.post('/Patient').set('Content-Type', FHIR).send(body).expect(201);
      }
    });
    expect(paged.pages).toBe(3);
    expect(paged.out).toEqual(['c', 'f', 'a', 'b', 'd', 'e']);

    const first = (await api.get(`/Patient?${tagQuery}&_sort=family&_count=2`).expect(200)).body as Bundle;
    const next = first.link.find((l) => l.relation === 'next')!.url.slice(t.url.length);
    await api.get(next.replace('_sort=family', '_sort=-family')).expect(400); // a cursor belongs to its sort
    await api.get(next.replace(/_page=([^&.]+)/, '_page=$1x')).expect(400);
    const unknown = (await api.get(`/Patient?${tagQuery}&_sort=nonsense`).expect(200)).body as Bundle;
    expect(unknown.entry!.find((e) => e.search.mode === 'outcome')!.resource.issue![0].diagnostics).toMatch(/_sort/);
    await api.get(`/Patient?${tagQuery}&_sort=nonsense`).set('Prefer', 'handling=strict').expect(400);
  });

  test('_total, _count=0 and _summary=count', async () => {
    const { tagQuery } = await patients([['a', '1980', 'A'], ['b', '1981', 'B'], ['c', '1982', 'C']]);
    const get = async (extra: string) => (await api.get(`/Patient?${tagQuery}&${extra}`).expect(200)).body as Bundle;
    expect((await get('_count=2')).total).toBe(3);
    expect((await get('_count=2&_total=accurate')).total).toBe(3);
    expect((await get('_count=2&_total=none')).total).toBeUndefined();
    expect((await get('_count=10&_total=none')).total).toBeUndefined();
    expect(typeof (await get('_count=2&_total=estimate')).total).toBe('number');
    expect((await get('_count=10&_total=estimate')).total).toBe(3); // a complete first page knows its total
    const zero = await get('_count=0');
    expect(zero.total).toBe(3);
    expect(zero.entry ?? []).toEqual([]);
    const count = await get('_summary=count');
    expect(count.total).toBe(3);
    expect((count.entry ?? []).filter((e) => e.search.mode === 'match')).toEqual([]);
    await api.get(`/Patient?${tagQuery}&_total=maybe`).expect(400);
  });

  test('_elements and _summary=data|true|text return SUBSETTED resources', async () => {
    const { tagQuery } = await patients([['a', '1980-01-02', 'Elemental']]);
    const el = ((await api.get(`/Patient?${tagQuery}&_elements=birthDate`).expect(200)).body as Bundle).entry![0].resource;
    expect(Object.keys(el).sort()).toEqual(['birthDate', 'id', 'meta', 'resourceType']);
    expect(el.meta!.tag!.map((x) => x.code)).toContain('SUBSETTED');
    const data = ((await api.get(`/Patient?${tagQuery}&_summary=data`).expect(200)).body as Bundle).entry![0].resource;
    expect(data.text).toBeUndefined();
    expect(data.name).toBeDefined();
    const summary = (await api.get(`/Patient?${tagQuery}&_summary=true`).set('Prefer', 'handling=strict').expect(200)).body as Bundle;
    expect(summary.entry!.map((e) => e.search.mode)).toEqual(['match']);
    expect(Object.keys(summary.entry![0].resource).sort()).toEqual(['birthDate', 'id', 'meta', 'name', 'resourceType']); // no text
    const text = ((await api.get(`/Patient?${tagQuery}&_summary=text`).expect(200)).body as Bundle).entry![0].resource;
    expect(Object.keys(text).sort()).toEqual(['id', 'meta', 'resourceType', 'text']);
    expect(text.meta!.tag!.map((x) => x.code)).toContain('SUBSETTED');
    await api.get(`/Patient?${tagQuery}&_elements=${q('a.b')}`).expect(400);
  });

  test('POST _search, links that reproduce the search, conditional create on any parameter', async () => {
    const { ids, tagQuery, tag } = await patients([['a', '1980-01-02', 'Poster'], ['b', '1981-01-02', 'Poster']]);
    const post = (await api.post('/Patient/_search').type('form').send(`family=poster&birthdate=1980&${tagQuery}`).expect(200)).body as Bundle;
    expect(post.entry!.map((e) => e.resource.id)).toEqual([ids.a]);
    const self = post.link.find((l) => l.relation === 'self')!.url.slice(t.url.length);
    const again = (await api.get(self).expect(200)).body as Bundle;
    expect(again.entry!.map((e) => e.resource.id)).toEqual([ids.a]);

    const obs = { resourceType: 'Observation', status: 'final', meta: { tag: [{ system: 'urn:vesta:test', code: tag }] }, code: { coding: [{ system: 'http://loinc.org', code: '7777-7' }] }, effectiveDateTime: '2020-02-02' };
    const crit = `code=${q('http://loinc.org|7777-7')}&date=2020-02-02&_tag=${q(`urn:vesta:test|${tag}`)}`;
    const c1 = await api.post('/Observation').set('Content-Type', FHIR).set('If-None-Exist', crit).send(obs).expect(201);
    const c2 = await api.post('/Observation').set('Content-Type', FHIR).set('If-None-Exist', crit).send(obs).expect(200);
    expect(c2.body.id).toBe(c1.body.id);
    await api.post('/Observation').set('Content-Type', FHIR).set('If-None-Exist', 'code:in=http://x/vs').send(obs).expect(400);
  });
});
