// Search scopes (https://hl7.org/fhir/R4/http.html#search, search.html#all, compartmentdefinition.html)
// and paging links (http.html#paging): system search with and without _type, POST _search at system
// level, compartment search from the official CompartmentDefinitions (including `*`), previous links
// that walk back exactly, and the CapabilityStatement listing what search serves.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const q = encodeURIComponent;

interface Bundle {
  total?: number;
  link: { relation: string; url: string }[];
  entry?: { fullUrl?: string; search: { mode: string }; resource: Record<string, unknown> & { resourceType: string; id: string; issue?: { diagnostics: string }[] } }[];
}

describe.each(backends())('search scopes on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  beforeAll(async () => {
    t = await startTestServer(backend, { PHI_ENCRYPTION: 'off' });
    api = authed(t);
  });
  afterAll(async () => {
    await t.close();
  });

  const post = async (r: Record<string, unknown>): Promise<string> => (await api.post(`/${String(r.resourceType)}`).set('Content-Type', FHIR).send(r).expect(201)).body.id as string;
  const matches = (b: Bundle) => (b.entry ?? []).filter((e) => e.search.mode === 'match').map((e) => `${e.resource.resourceType}/${e.resource.id}`);

  /** A patient with two observations, a condition and an encounter; another patient with one observation. */
  async function world() {
    const tag = { system: 'urn:vesta:scope', code: randomUUID() };
    const meta = { tag: [tag] };
    const p1 = await post({ resourceType: 'Patient', meta, gender: 'female' });
    const p2 = await post({ resourceType: 'Patient', meta, gender: 'male' });
    const enc = await post({ resourceType: 'Encounter', meta, status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, subject: { reference: `Patient/${p1}` } });
    const code = { coding: [{ system: 'http://loinc.org', code: '8867-4' }] };
    const o1 = await post({ resourceType: 'Observation', meta, status: 'final', code, subject: { reference: `Patient/${p1}` }, encounter: { reference: `Encounter/${enc}` } });
    const o2 = await post({ resourceType: 'Observation', meta, status: 'final', code, subject: { reference: `Patient/${p1}` } });
    const o3 = await post({ resourceType: 'Observation', meta, status: 'final', code, subject: { reference: `Patient/${p2}` } });
    // Performer is a Patient-compartment parameter of Observation too.
    const o4 = await post({ resourceType: 'Observation', meta, status: 'final', code, subject: { reference: `Patient/${p2}` }, performer: [{ reference: `Patient/${p1}` }] });
    const c1 = await post({ resourceType: 'Condition', meta, subject: { reference: `Patient/${p1}` } });
    return { tagQuery: `_tag=${q(`${tag.system}|${tag.code}`)}`, p1, p2, enc, o1, o2, o3, o4, c1 };
  }

  test('system search: _type restricts types, common parameters apply to all, others are reported', async () => {
    const w = await world();
    const all = (await api.get(`/?${w.tagQuery}&_count=100`).expect(200)).body as Bundle;
    expect(all.total).toBe(8);
    expect(new Set(matches(all))).toEqual(new Set([`Patient/${w.p1}`, `Patient/${w.p2}`, `Encounter/${w.enc}`, `Observation/${w.o1}`, `Observation/${w.o2}`, `Observation/${w.o3}`, `Observation/${w.o4}`, `Condition/${w.c1}`]));
    const some = (await api.get(`/?_type=Patient,Condition&${w.tagQuery}`).expect(200)).body as Bundle;
    expect(new Set(matches(some))).toEqual(new Set([`Patient/${w.p1}`, `Patient/${w.p2}`, `Condition/${w.c1}`]));
    // `patient` means the same (a reference) on Observation and Condition.
    const shared = (await api.get(`/?_type=Observation,Condition&patient=Patient/${w.p1}&${w.tagQuery}`).expect(200)).body as Bundle;
    expect(new Set(matches(shared))).toEqual(new Set([`Observation/${w.o1}`, `Observation/${w.o2}`, `Condition/${w.c1}`]));
    // gender is not a parameter of every type: ignored and reported, or 400 when strict.
    const lenient = (await api.get(`/?gender=male&${w.tagQuery}`).expect(200)).body as Bundle;
    expect(lenient.total).toBe(8);
    expect(lenient.entry?.find((e) => e.search.mode === 'outcome')?.resource.issue?.[0].diagnostics).toMatch(/common to all resource types/);
    await api.get(`/?gender=male&${w.tagQuery}`).set('Prefer', 'handling=strict').expect(400);
    await api.get('/?_type=Patient,NotAType').expect(400);
    // POST [base]/_search with a form body gives the same answer as GET.
    const form = (await api.post('/_search').type('form').send(`_type=Patient,Condition&${w.tagQuery}`).expect(200)).body as Bundle;
    expect(new Set(matches(form))).toEqual(new Set(matches(some)));
    // Links of a system search stay at the base and keep _type.
    expect(some.link.find((l) => l.relation === 'self')?.url).toMatch(new RegExp(`^${t.url}/?\\?_type=Patient%2CCondition`));
  });

  test('system search pages across types with next and previous links', async () => {
    const w = await world();
    const seen: string[] = [];
    let url: string | undefined = `/?${w.tagQuery}&_count=3`;
    const pages: Bundle[] = [];
    while (url) {
      const b = (await api.get(url).expect(200)).body as Bundle;
      pages.push(b);
      seen.push(...matches(b));
      const next = b.link.find((l) => l.relation === 'next');
      url = next ? next.url.slice(t.url.length) : undefined;
    }
    expect(seen).toHaveLength(8);
    expect(new Set(seen).size).toBe(8);
    expect(pages).toHaveLength(3);
    expect(pages[0].link.find((l) => l.relation === 'previous')).toBeUndefined();
    // Walking back from the last page gives the earlier pages exactly.
    const back: string[][] = [];
    let prev: string | undefined = pages[2].link.find((l) => l.relation === 'previous')?.url.slice(t.url.length);
    while (prev) {
      const b = (await api.get(prev).expect(200)).body as Bundle;
      back.unshift(matches(b));
      prev = b.link.find((l) => l.relation === 'previous')?.url.slice(t.url.length);
    }
    expect(back).toEqual([matches(pages[0]), matches(pages[1])]);
  });

  test('compartment search: membership from the CompartmentDefinition, with parameters, and *', async () => {
    const w = await world();
    const obs = (await api.get(`/Patient/${w.p1}/Observation?_count=50`).expect(200)).body as Bundle;
    // o1, o2 by subject and o4 by performer; o3 belongs to the other patient only.
    expect(new Set(matches(obs))).toEqual(new Set([`Observation/${w.o1}`, `Observation/${w.o2}`, `Observation/${w.o4}`]));
    const narrowed = (await api.get(`/Patient/${w.p1}/Observation?encounter=Encounter/${w.enc}`).expect(200)).body as Bundle;
    expect(matches(narrowed)).toEqual([`Observation/${w.o1}`]);
    expect(narrowed.link.find((l) => l.relation === 'self')?.url).toContain(`/Patient/${w.p1}/Observation?`);
    // The official Patient compartment lists Patient by `link` only: Patient/x/Patient is Patient?link=x,
    // so the compartment's own resource is not returned (strict reading of the CompartmentDefinition).
    const linker = await post({ resourceType: 'Patient', link: [{ other: { reference: `Patient/${w.p1}` }, type: 'seealso' }] });
    expect(matches((await api.get(`/Patient/${w.p1}/Patient`).expect(200)).body as Bundle)).toEqual([`Patient/${linker}`]);
    // Encounter, Practitioner, RelatedPerson compartments name their own resource ({def}).
    expect(matches((await api.get(`/Encounter/${w.enc}/Encounter`).expect(200)).body as Bundle)).toEqual([`Encounter/${w.enc}`]);
    const every = (await api.get(`/Patient/${w.p1}/*?_count=50`).expect(200)).body as Bundle;
    expect(new Set(matches(every))).toEqual(new Set([`Patient/${linker}`, `Encounter/${w.enc}`, `Observation/${w.o1}`, `Observation/${w.o2}`, `Observation/${w.o4}`, `Condition/${w.c1}`]));
    // Encounter compartment: Observations whose encounter is this one.
    expect(matches((await api.get(`/Encounter/${w.enc}/Observation`).expect(200)).body as Bundle)).toEqual([`Observation/${w.o1}`]);
    // Not a member type, not a compartment, not a type.
    await api.get(`/Patient/${w.p1}/Organization`).expect(400);
    await api.get(`/Observation/${w.o1}/Patient`).expect(404);
    await api.get(`/Patient/${w.p1}/NotAType`).expect(404);
    await api.delete(`/Patient/${w.p1}/Observation`).expect(405);
  });

  test('previous links walk back exactly under _sort, and are refused when tampered', async () => {
    const tag = randomUUID();
    const ids: string[] = [];
    for (let i = 0; i < 7; i++) {
      ids.push(await post({ resourceType: 'Patient', meta: { tag: [{ system: 'urn:vesta:prev', code: tag }] }, ...(i % 3 ? { birthDate: `19${50 + i}-01-01` } : {}) }));
    }
    const first = `/Patient?_tag=${q(`urn:vesta:prev|${tag}`)}&_sort=-birthdate&_count=2`;
    const pages: string[][] = [];
    let url: string | undefined = first;
    let last: Bundle | undefined;
    while (url) {
      last = (await api.get(url).expect(200)).body as Bundle;
      pages.push(matches(last));
      url = last.link.find((l) => l.relation === 'next')?.url.slice(t.url.length);
    }
    expect(pages.flat()).toHaveLength(7);
    const back: string[][] = [pages[pages.length - 1]];
    let prev = last!.link.find((l) => l.relation === 'previous')?.url.slice(t.url.length);
    while (prev) {
      const b = (await api.get(prev).expect(200)).body as Bundle;
      back.unshift(matches(b));
      // A page reached backwards links forward again to the page after it.
      expect(b.link.find((l) => l.relation === 'next')).toBeDefined();
      prev = b.link.find((l) => l.relation === 'previous')?.url.slice(t.url.length);
    }
    expect(back).toEqual(pages);
    const tampered = pages.length && last!.link.find((l) => l.relation === 'previous')!.url.slice(t.url.length).replace(/_page=([^&]{4})/, '_page=AAAA');
    await api.get(String(tampered)).expect(400);
  });

  test('the CapabilityStatement lists served parameters with documentation, includes, system search and compartments', async () => {
    const cs = (await api.get('/metadata').expect(200)).body as {
      rest: { interaction: { code: string }[]; compartment: string[]; searchParam: { name: string }[]; resource: { type: string; searchParam: { name: string; type: string; documentation: string }[]; searchInclude: string[]; searchRevInclude?: string[] }[] }[];
    };
    const rest = cs.rest[0];
    expect(rest.interaction.map((i) => i.code)).toContain('search-system');
    expect(rest.compartment).toContain('http://hl7.org/fhir/CompartmentDefinition/patient');
    expect(rest.searchParam.map((p) => p.name)).toEqual(expect.arrayContaining(['_id', '_lastUpdated', '_tag', '_profile', '_security', '_source']));
    const obs = rest.resource.find((r) => r.type === 'Observation')!;
    const names = obs.searchParam.map((p) => p.name);
    expect(names).toEqual(expect.arrayContaining(['_id', '_lastUpdated', 'code', 'date', 'patient', 'subject', 'value-quantity', 'code-value-quantity', 'combo-code']));
    expect(obs.searchParam.find((p) => p.name === 'code-value-quantity')?.type).toBe('composite');
    expect(obs.searchParam.every((p) => p.documentation.length > 0)).toBe(true);
    expect(obs.searchInclude).toEqual(expect.arrayContaining(['*', 'Observation:patient', 'Observation:subject']));
    expect(rest.resource.find((r) => r.type === 'Patient')!.searchRevInclude).toEqual(expect.arrayContaining(['Observation:patient', 'Encounter:subject']));
    // Not served, so not listed: _filter and _query. Full text is served (without sealing, _text too).
    expect(names).not.toContain('_filter');
    expect(names).not.toContain('_query');
    expect(names).toEqual(expect.arrayContaining(['_text', '_content']));
    expect(rest.searchParam.map((p) => p.name)).toContain('_content');
  });
});
