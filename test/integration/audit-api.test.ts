// /AuditEvent over the audit ledger (issue 16 item 7; src/interactions/audit-events.ts): read, vread
// and search with the R4 parameters, paging, _total, reach by scope, and PHI sealed at rest.
//
// Six BALP-shaped events are appended straight to the ledger (sealed as the server seals its own),
// each with source.observer = a Device unique to this run, so that every search can be confined to
// them with `source=` (the requests of the test leave their own records in the same ledger). Then
// records made by requests are found through the API.
//
//   #  recorded           action outcome subtype      client   user               entities                              patients
//   0  2026-03-01T10:00Z  R      0       read         app-a    Practitioner/dr1   Observation/o1/_history/2             p1
//   1  2026-03-02T10:00Z  C      0       create       app-a                       Observation/o2/_history/1             p1
//   2  2026-03-03T10:00Z  U      4       update       app-b    Practitioner/dr2   Observation/o1/_history/3             p1
//   3  2026-03-04T10:00Z  D      8       delete       app-b                       Condition/c1/_history/2               p2
//   4  2026-03-05T10:00Z  R      0       search-type  app-a                       query Patient?name=<secret>           p2
//   5  2026-03-06T10:00Z  E      0       auth:login   app-c                       (none)                                -
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import type { AuditEvent } from 'fhir/r4.js';
import request from 'supertest';
import { buildAuditEvent, VESTA_AUDIT, type AuditFacts } from '../../src/audit/balp.js';
import { canonicalBytes, canonicalDigest } from '../../src/audit/chain.js';
import { appendEvents } from '../../src/audit/ledger.js';
import { countEvents, searchEvents } from '../../src/storage/audit-store.js';
import { MIGRATIONS } from '../../migrations/index.js';
import { authed, backends, openTestDatabase, startTestServer, tokenFor, type TestServer } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const EVENT_TYPE = 'http://terminology.hl7.org/CodeSystem/audit-event-type';
const RESTFUL = 'http://hl7.org/fhir/restful-interaction';
const q = encodeURIComponent;

interface Bundle {
  total?: number;
  link: { relation: string; url: string }[];
  entry?: { fullUrl?: string; search: { mode: string }; resource: Record<string, unknown> & { resourceType: string; id: string } }[];
}

describe.each(backends())('AuditEvent API on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request.agent>;
  let base: string;
  const run = randomUUID().slice(0, 8);
  const device = `Device/src-${run}`;
  const secret = `Smithersonian${run}`;
  const ids = Array.from({ length: 6 }, (_, i) => `ae-${run}-${i}`);
  const client = (c: string) => `${c}-${run}`;

  beforeAll(async () => {
    t = await startTestServer(backend);
    api = authed(t);
    base = t.svc.config.baseUrl;
    const day = (d: number) => new Date(`2026-03-0${d}T10:00:00Z`);
    const facts: Partial<AuditFacts>[] = [
      { interaction: 'read', recorded: day(1), client: client('app-a'), user: 'u1', fhirUser: 'Practitioner/dr1', resources: [{ type: 'Observation', id: 'o1', version: '2' }], patients: ['p1'] },
      { interaction: 'create', status: 201, recorded: day(2), client: client('app-a'), resources: [{ type: 'Observation', id: 'o2', version: '1' }], patients: ['p1'] },
      { interaction: 'update', status: 422, recorded: day(3), client: client('app-b'), user: 'u2', fhirUser: 'Practitioner/dr2', resources: [{ type: 'Observation', id: 'o1', version: '3' }], patients: ['p1'] },
      { interaction: 'delete', status: 500, recorded: day(4), client: client('app-b'), resources: [{ type: 'Condition', id: 'c1', version: '2' }], patients: ['p2'] },
      { interaction: 'search-type', recorded: day(5), client: client('app-a'), query: { type: 'Patient', parameters: ['name'], text: `name=${secret}` }, patients: ['p2'] },
      { interaction: 'auth:login', recorded: day(6), client: client('app-c') },
    ];
    const events = facts.map((f, i) => {
      const e = buildAuditEvent({ status: 200, requestId: `req-${run}-${i}`, server: base, ...f } as AuditFacts);
      return { ...e, id: ids[i], source: { ...(e.source as object), observer: { reference: device, display: 'test source' } } } as unknown as AuditEvent;
    });
    await appendEvents(t.svc.db.knex, await Promise.all(events.map((e) => t.svc.audit.seal(e))), { baseUrl: base });
  }, 120_000);

  afterAll(async () => {
    await t?.close();
  });

  /** The seeded events (by number) a search finds, in the order returned. */
  async function found(query: string, token?: string, path = '/AuditEvent'): Promise<number[]> {
    const agent = token ? authed(t, token) : api;
    const res = await agent.get(`${path}?source=${q(device)}&_count=100${query ? `&${query}` : ''}`);
    expect(res.status).toBe(200);
    const b = res.body as Bundle;
    return (b.entry ?? []).filter((e) => e.search.mode === 'match').map((e) => ids.indexOf(e.resource.id));
  }
  const sorted = async (query: string, token?: string, path?: string) => (await found(query, token, path)).sort((a, b) => a - b);

  test('read: the unsealed event, version 1, lastUpdated its recorded; 404 for an unknown id', async () => {
    const res = await api.get(`/AuditEvent/${ids[4]}`).expect(200);
    const e = res.body as AuditEvent;
    expect(e.meta).toEqual({ versionId: '1', lastUpdated: '2026-03-05T10:00:00.000Z' });
    expect(res.headers.etag).toBe('W/"1"');
    expect(e.extension ?? []).toEqual([]);
    const query = e.entity?.find((x) => x.query)?.query;
    expect(Buffer.from(query!, 'base64').toString('utf8')).toBe(`name=${secret}`);
    expect(e.subtype?.[0]).toEqual({ system: RESTFUL, code: 'search-type' });
    await api.get(`/AuditEvent/ae-${run}-unknown`).expect(404);
    await api.get(`/AuditEvent/${ids[4]}`).set('If-None-Match', 'W/"1"').expect(304);
    const shaped = (await api.get(`/AuditEvent/${ids[4]}?_elements=action`).expect(200)).body as Record<string, unknown>;
    expect(Object.keys(shaped).sort()).toEqual(['action', 'id', 'meta', 'resourceType']);
  });

  test('vread: version 1 is the event; no other version exists', async () => {
    const v1 = (await api.get(`/AuditEvent/${ids[0]}/_history/1`).expect(200)).body as AuditEvent;
    expect(v1.id).toBe(ids[0]);
    expect(v1.action).toBe('R');
    await api.get(`/AuditEvent/${ids[0]}/_history/2`).expect(404);
    await api.get(`/AuditEvent/ae-${run}-unknown/_history/1`).expect(404);
  });

  test('search without criteria: newest first, each entry a match with its fullUrl', async () => {
    const res = await api.get(`/AuditEvent?source=${q(device)}`).expect(200);
    const b = res.body as Bundle;
    expect(b.total).toBe(6);
    expect(b.entry!.map((e) => e.resource.id)).toEqual([...ids].reverse());
    expect(b.entry![0].fullUrl).toBe(`${base}/AuditEvent/${ids[5]}`);
    expect(b.entry!.every((e) => e.search.mode === 'match')).toBe(true);
    expect(await found('_sort=date')).toEqual([0, 1, 2, 3, 4, 5]);
    expect(await found('_sort=-date')).toEqual([5, 4, 3, 2, 1, 0]);
    // Another source: none of them.
    expect(await sorted(`source=${q(`Device/other-${run}`)}`)).toEqual([]);
  });

  test('date: every prefix, OR with commas, AND by repetition', async () => {
    expect(await sorted('date=2026-03-02')).toEqual([1]);
    expect(await sorted('date=eq2026-03-02')).toEqual([1]);
    expect(await sorted('date=ne2026-03-01')).toEqual([1, 2, 3, 4, 5]);
    expect(await sorted('date=lt2026-03-02')).toEqual([0]);
    expect(await sorted('date=le2026-03-02')).toEqual([0, 1]);
    expect(await sorted('date=gt2026-03-05')).toEqual([5]);
    expect(await sorted('date=ge2026-03-05')).toEqual([4, 5]);
    expect(await sorted('date=sa2026-03-04')).toEqual([4, 5]);
    expect(await sorted('date=eb2026-03-02')).toEqual([0]);
    expect(await sorted(`date=${q('2026-03-03T10:00:00Z')}`)).toEqual([2]);
    expect(await sorted(`date=${q('gt2026-03-05T09:59:59Z')}`)).toEqual([4, 5]);
    expect(await sorted('date=ap2026-03-03')).toEqual(expect.arrayContaining([2]));
    expect(await sorted('date=2026-03-01,2026-03-06')).toEqual([0, 5]);
    expect(await sorted('date=ge2026-03-02&date=le2026-03-03')).toEqual([1, 2]);
    expect(await sorted('date=2025')).toEqual([]);
    await api.get(`/AuditEvent?date=yesterday`).expect(400);
  });

  test('action and outcome: codes, system|code, OR and AND', async () => {
    expect(await sorted('action=R')).toEqual([0, 4]);
    expect(await sorted('action=R,D')).toEqual([0, 3, 4]);
    expect(await sorted(`action=${q('http://hl7.org/fhir/audit-event-action|C')}`)).toEqual([1]);
    expect(await sorted(`action=${q('|C')}`)).toEqual([1]);
    expect(await sorted(`action=${q('http://other.example|C')}`)).toEqual([]);
    expect(await sorted('action=Q')).toEqual([]);
    expect(await sorted('action=R&action=D')).toEqual([]);
    expect(await sorted('outcome=4')).toEqual([2]);
    expect(await sorted('outcome=4,8')).toEqual([2, 3]);
    expect(await sorted('outcome=0')).toEqual([0, 1, 4, 5]);
    expect(await sorted('outcome=12')).toEqual([]);
    expect(await sorted(`outcome=${q('http://hl7.org/fhir/audit-event-outcome|')}`)).toEqual([0, 1, 2, 3, 4, 5]);
    await api.get('/AuditEvent?action=').expect(400);
  });

  test('type and subtype: code, system|code, |code, system|', async () => {
    expect(await sorted('type=rest')).toEqual([0, 1, 2, 3, 4]);
    expect(await sorted(`type=${q(`${EVENT_TYPE}|rest`)}`)).toEqual([0, 1, 2, 3, 4]);
    expect(await sorted(`type=${q('|rest')}`)).toEqual([]);
    expect(await sorted(`type=${q(`${VESTA_AUDIT}|`)}`)).toEqual([5]);
    expect(await sorted('type=auth')).toEqual([5]);
    expect(await sorted(`type=${q(`${VESTA_AUDIT}|rest`)}`)).toEqual([]);
    expect(await sorted('subtype=read')).toEqual([0]);
    expect(await sorted(`subtype=${q(`${RESTFUL}|create,${RESTFUL}|update`)}`)).toEqual([1, 2]);
    expect(await sorted('subtype=search-type')).toEqual([4]);
    expect(await sorted(`subtype=${q('auth:login')}`)).toEqual([5]);
    expect(await sorted('subtype=history-type')).toEqual([]);
    expect(await sorted('type=rest&subtype=read,delete')).toEqual([0, 3]);
  });

  test('agent: references in every form, :type, :identifier', async () => {
    expect(await sorted(`agent=${q('Practitioner/dr1')}`)).toEqual([0]);
    expect(await sorted('agent=dr2')).toEqual([2]);
    expect(await sorted('agent:Practitioner=dr1')).toEqual([0]);
    expect(await sorted('agent:Device=dr1')).toEqual([]);
    expect(await sorted(`agent=${q(`${base}/Practitioner/dr1`)}`)).toEqual([0]);
    expect(await sorted(`agent=${q('Practitioner/dr1,Practitioner/dr2')}`)).toEqual([0, 2]);
    expect(await sorted(`agent=${q('Practitioner/nobody')}`)).toEqual([]);
    expect(await sorted(`agent:identifier=${q(`${base}/auth/clients|${client('app-a')}`)}`)).toEqual([0, 1, 4]);
    expect(await sorted(`agent:identifier=${q(client('app-b'))}`)).toEqual([2, 3]);
    expect(await sorted(`agent:identifier=${q(`http://elsewhere|${client('app-b')}`)}`)).toEqual([]);
    expect(await sorted(`agent:identifier=${q(client('app-a'))}&agent=${q('Practitioner/dr1')}`)).toEqual([0]);
  });

  test('entity: references (versioned too), bare id, :identifier', async () => {
    expect(await sorted(`entity=${q('Observation/o1')}`)).toEqual([0, 2]);
    expect(await sorted(`entity=${q('Observation/o1/_history/3')}`)).toEqual([2]);
    expect(await sorted(`entity=${q('Observation/o1/_history/9')}`)).toEqual([]);
    expect(await sorted(`entity=${q('Condition/c1')}`)).toEqual([3]);
    expect(await sorted('entity=o2')).toEqual([1]);
    expect(await sorted('entity:Condition=o2')).toEqual([]);
    expect(await sorted(`entity=${q(`${base}/Observation/o2`)}`)).toEqual([1]);
    expect(await sorted(`entity=${q('Patient/p2')}`)).toEqual([3, 4]);
    expect(await sorted(`entity:identifier=${q(`req-${run}-3`)}`)).toEqual([3]);
    expect(await sorted(`entity:identifier=${q(`|req-${run}-3`)}`)).toEqual([3]);
    expect(await sorted(`entity=${q('Observation/zzz')}`)).toEqual([]);
    // entity takes no :missing (or anything but :identifier and a type): ignored and reported, or 400 when strict.
    await api.get(`/AuditEvent?entity:missing=true`).set('Prefer', 'handling=strict').expect(400);
  });

  test('patient: id, Patient/id, absolute, OR, AND, and the compartment search', async () => {
    expect(await sorted('patient=p1')).toEqual([0, 1, 2]);
    expect(await sorted(`patient=${q('Patient/p2')}`)).toEqual([3, 4]);
    expect(await sorted(`patient=${q(`${base}/Patient/p1`)}`)).toEqual([0, 1, 2]);
    expect(await sorted('patient=p1,p2')).toEqual([0, 1, 2, 3, 4]);
    expect(await sorted('patient=p1&patient=p2')).toEqual([]);
    expect(await sorted('patient=p9')).toEqual([]);
    expect(await sorted('patient:Patient=p2')).toEqual([3, 4]);
    await api.get(`/AuditEvent?patient=${q('Observation/o1')}`).expect(400);
    expect(await sorted('', undefined, '/Patient/p1/AuditEvent')).toEqual([0, 1, 2]);
    expect(await sorted('action=U', undefined, '/Patient/p1/AuditEvent')).toEqual([2]);
    expect(await sorted('', undefined, '/Patient/p9/AuditEvent')).toEqual([]);
  });

  test('_id, and several parameters together', async () => {
    expect(await sorted(`_id=${ids[0]},${ids[3]}`)).toEqual([0, 3]);
    expect(await sorted(`_id=ae-${run}-none`)).toEqual([]);
    expect(await sorted('action=R&patient=p2')).toEqual([4]);
    expect(await sorted(`date=ge2026-03-02&outcome=0&agent:identifier=${q(client('app-a'))}`)).toEqual([1, 4]);
  });

  test('paging: three pages forward through next, back through previous, the total on each', async () => {
    const first = (await api.get(`/AuditEvent?source=${q(device)}&_count=2`).expect(200)).body as Bundle;
    const pages: string[][] = [];
    let page: Bundle = first;
    const link = (b: Bundle, rel: string) => b.link.find((l) => l.relation === rel)?.url;
    for (;;) {
      expect(page.total).toBe(6);
      pages.push(page.entry!.map((e) => e.resource.id));
      const next = link(page, 'next');
      if (!next) break;
      expect(next.startsWith(`${base}/AuditEvent?`)).toBe(true);
      page = (await api.get(next.slice(base.length)).expect(200)).body as Bundle;
    }
    expect(pages).toEqual([
      [ids[5], ids[4]],
      [ids[3], ids[2]],
      [ids[1], ids[0]],
    ]);
    expect(link(first, 'previous')).toBeUndefined();
    const back = (await api.get(link(page, 'previous')!.slice(base.length)).expect(200)).body as Bundle;
    expect(back.entry!.map((e) => e.resource.id)).toEqual([ids[3], ids[2]]);
    const backFirst = (await api.get(link(back, 'previous')!.slice(base.length)).expect(200)).body as Bundle;
    expect(backFirst.entry!.map((e) => e.resource.id)).toEqual([ids[5], ids[4]]);
    // Ascending order pages the same way.
    const asc = (await api.get(`/AuditEvent?source=${q(device)}&_count=4&_sort=date`).expect(200)).body as Bundle;
    expect(asc.entry!.map((e) => e.resource.id)).toEqual(ids.slice(0, 4));
    const asc2 = (await api.get(link(asc, 'next')!.slice(base.length)).expect(200)).body as Bundle;
    expect(asc2.entry!.map((e) => e.resource.id)).toEqual(ids.slice(4));
    expect(link(asc2, 'next')).toBeUndefined();
    // A paging token belongs to its query.
    const token = new URL(link(first, 'next')!).searchParams.get('_page')!;
    await api.get(`/AuditEvent?source=${q(device)}&action=R&_count=2&_page=${q(token)}`).expect(400);
  });

  test('_total, _summary=count, _count=0, _elements on entries', async () => {
    const none = (await api.get(`/AuditEvent?source=${q(device)}&_count=2&_total=none`).expect(200)).body as Bundle;
    expect(none.total).toBeUndefined();
    const est = (await api.get(`/AuditEvent?source=${q(device)}&_count=2&_total=estimate`).expect(200)).body as Bundle;
    expect(typeof est.total).toBe('number');
    const acc = (await api.get(`/AuditEvent?source=${q(device)}&_count=2&_total=accurate`).expect(200)).body as Bundle;
    expect(acc.total).toBe(6);
    const count = (await api.get(`/AuditEvent?source=${q(device)}&action=R&_summary=count`).expect(200)).body as Bundle;
    expect(count.total).toBe(2);
    expect(count.entry ?? []).toEqual([]);
    const zero = (await api.get(`/AuditEvent?source=${q(device)}&_count=0`).expect(200)).body as Bundle;
    expect([zero.total, zero.entry ?? []]).toEqual([6, []]);
    const shaped = (await api.get(`/AuditEvent?source=${q(device)}&_elements=outcome&_count=1`).expect(200)).body as Bundle;
    expect(Object.keys(shaped.entry![0].resource).sort()).toEqual(['id', 'meta', 'outcome', 'resourceType']);
    await api.get(`/AuditEvent?_total=some`).expect(400);
    await api.get(`/AuditEvent?_count=x`).expect(400);
  });

  test('unknown parameters: ignored and reported, 400 with handling=strict; _include, _revinclude, chains and _has: 400', async () => {
    const res = (await api.get(`/AuditEvent?source=${q(device)}&foo=bar&address=10.0.0.1`).expect(200)).body as Bundle;
    expect(res.total).toBe(6);
    const outcome = res.entry!.find((e) => e.search.mode === 'outcome')!.resource as unknown as { issue: { diagnostics: string }[] };
    expect(outcome.issue.map((i) => i.diagnostics)).toEqual([expect.stringContaining('foo'), expect.stringContaining('address')]);
    await api.get(`/AuditEvent?foo=bar`).set('Prefer', 'handling=strict').expect(400);
    await api.get(`/AuditEvent?address=10.0.0.1`).set('Prefer', 'handling=strict').expect(400);
    await api.get(`/AuditEvent?_sort=outcome`).set('Prefer', 'handling=strict').expect(400);
    for (const bad of ['_include=AuditEvent:agent', '_revinclude=Provenance:target', '_include:iterate=AuditEvent:entity', 'agent.name=x', 'agent:Practitioner.name=x', '_has:Provenance:target:agent=x']) {
      const r = await api.get(`/AuditEvent?${bad}`).expect(400);
      expect(JSON.stringify(r.body)).toMatch(/not supported for AuditEvent/);
    }
  });

  test('scopes: patient/ sees its patient only, constraints reach nothing, no scope is a 403', async () => {
    const patientToken = await tokenFor(base, { scope: 'patient/AuditEvent.rs', patient: 'p1' });
    expect(await sorted('', patientToken)).toEqual([0, 1, 2]);
    expect(await sorted('patient=p2', patientToken)).toEqual([]);
    expect(await sorted('action=R', patientToken)).toEqual([0]);
    expect(await sorted('', patientToken, '/Patient/p2/AuditEvent')).toEqual([]);
    await authed(t, patientToken).get(`/AuditEvent/${ids[0]}`).expect(200);
    await authed(t, patientToken).get(`/AuditEvent/${ids[3]}`).expect(404);
    await authed(t, patientToken).get(`/AuditEvent/${ids[5]}/_history/1`).expect(404);
    // Paging keeps the reach: every page is narrowed again.
    const p1 = (await authed(t, patientToken).get(`/AuditEvent?source=${q(device)}&_count=2`).expect(200)).body as Bundle;
    expect(p1.total).toBe(3);
    const next = p1.link.find((l) => l.relation === 'next')!.url;
    const p2 = (await authed(t, patientToken).get(next.slice(base.length)).expect(200)).body as Bundle;
    expect(p2.entry!.map((e) => e.resource.id)).toEqual([ids[0]]);

    const userToken = await tokenFor(base, { scope: 'user/AuditEvent.rs' });
    expect(await sorted('', userToken)).toEqual([0, 1, 2, 3, 4, 5]);
    const readOnly = await tokenFor(base, { scope: 'user/AuditEvent.r' });
    await authed(t, readOnly).get(`/AuditEvent/${ids[3]}`).expect(200);
    await authed(t, readOnly).get(`/AuditEvent?source=${q(device)}`).expect(403);

    const constrained = await tokenFor(base, { scope: 'user/AuditEvent.rs?action=R' });
    const denied = await authed(t, constrained).get(`/AuditEvent?source=${q(device)}`).expect(403);
    expect(JSON.stringify(denied.body)).toMatch(/reach no AuditEvent/);
    await authed(t, constrained).get(`/AuditEvent/${ids[0]}`).expect(404);

    const other = await tokenFor(base, { scope: 'patient/Observation.rs', patient: 'p1' });
    const noScope = await authed(t, other).get(`/AuditEvent?source=${q(device)}`).expect(403);
    expect(JSON.stringify(noScope.body)).toMatch(/AuditEvent\.s/);
    await authed(t, other).get(`/AuditEvent/${ids[0]}`).expect(403);
    // patient/ scopes without a patient in context reach nothing: 403 (the scope cannot be used).
    await authed(t, await tokenFor(base, { scope: 'patient/AuditEvent.rs' })).get(`/AuditEvent/${ids[0]}`).expect(403);
  });

  test('PHI is sealed at rest: the stored entry holds no query value that the read returns', async () => {
    const stored = (await t.svc.db.knex.raw("select canonical from audit_ledger where ((canonical::jsonb) ->> 'id') = ?", [ids[4]])) as { rows: { canonical: string }[] };
    const canonical = stored.rows[0].canonical;
    const b64 = Buffer.from(`name=${secret}`, 'utf8').toString('base64');
    expect(canonical).not.toContain(secret);
    expect(canonical).not.toContain(b64);
    expect(canonical).toContain('sealed-elements');
    const read = (await api.get(`/AuditEvent/${ids[4]}`).expect(200)).body as AuditEvent;
    expect(read.entity!.some((e) => e.query === b64)).toBe(true);
    // Found by search too, and unsealed there as well.
    const hit = (await api.get(`/AuditEvent?_id=${ids[4]}`).expect(200)).body as Bundle;
    expect(JSON.stringify(hit.entry![0].resource)).toContain(b64);
  });

  test('records made by requests are found by what they touched, who made them and when', async () => {
    // Records carry the server's clock (this process's): from now on, only this test's requests.
    const start = new Date().toISOString();
    const name = `Qwertyson${run}`;
    const created = (await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', name: [{ family: name }] }).expect(201)).body as { id: string };
    await api.get(`/Patient/${created.id}`).expect(200);
    await api.get(`/Patient?family=${name}`).expect(200);
    const since = `date=${q(`ge${start}`)}`;
    const get = async (query: string) => ((await api.get(`/AuditEvent?${since}&${query}&_sort=date&_count=100`).expect(200)).body as Bundle).entry!.filter((e) => e.search.mode === 'match').map((e) => e.resource as unknown as AuditEvent);
    // (A search's record may list what it returned; only the create and the read are asked about here.)
    const touching = (await get(`entity=${q(`Patient/${created.id}`)}`)).filter((e) => e.subtype?.[0].code !== 'search-type');
    expect(touching.map((e) => [e.action, e.subtype?.[0].code, e.outcome])).toEqual([
      ['C', 'create', '0'],
      ['R', 'read', '0'],
    ]);
    expect(await get(`patient=${created.id}&action=C`)).toHaveLength(1);
    const mine = await get(`agent:identifier=${q(`${base}/auth/clients|test-client`)}&subtype=search-type`);
    const search = mine.find((e) => e.entity?.some((x) => x.query && Buffer.from(x.query, 'base64').toString('utf8').includes(name)));
    expect(search).toBeDefined();
    const stored = (await t.svc.db.knex.raw("select canonical from audit_ledger where ((canonical::jsonb) ->> 'id') = ?", [search!.id!])) as { rows: { canonical: string }[] };
    expect(stored.rows[0].canonical).not.toContain(name);
    // Reading the ledger is itself recorded: the read of an AuditEvent names it.
    await api.get(`/AuditEvent/${ids[0]}`).expect(200);
    expect((await get(`entity=${q(`AuditEvent/${ids[0]}`)}&subtype=read`)).length).toBeGreaterThanOrEqual(1);
  });

  test('the CapabilityStatement lists what /AuditEvent serves, and nothing more', async () => {
    const cs = (await request(t.url).get('/metadata').expect(200)).body as { rest: { resource: { type: string; interaction: { code: string }[]; searchParam?: { name: string }[]; searchInclude?: string[]; searchRevInclude?: string[] }[] }[] };
    const ae = cs.rest[0].resource.find((r) => r.type === 'AuditEvent')!;
    expect(ae.interaction.map((i) => i.code).sort()).toEqual(['create', 'read', 'search-type', 'vread']);
    expect(ae.searchParam!.map((p) => p.name).sort()).toEqual(['_id', 'action', 'agent', 'date', 'entity', 'outcome', 'patient', 'source', 'subtype', 'type']);
    expect(ae.searchInclude ?? []).toEqual([]);
    expect(ae.searchRevInclude ?? []).toEqual([]);
    const patient = cs.rest[0].resource.find((r) => r.type === 'Patient')!;
    expect((patient.searchRevInclude ?? []).filter((s) => s.startsWith('AuditEvent:'))).toEqual([]);
  });
});

describe.each(backends())('migration 0012 on %s PostgreSQL', (backend) => {
  test('entries appended before it become searchable; a tampered one (not an object) is skipped', async () => {
    const { db, drop } = await openTestDatabase(backend);
    try {
      const upTo = MIGRATIONS.findIndex((m) => m.name === '0012_audit_search');
      for (const m of MIGRATIONS.slice(0, upTo)) await m.up(db.knex);
      const events = ['read', 'create', 'delete'].map((interaction, i) =>
        buildAuditEvent({ interaction, status: 200, recorded: new Date(Date.UTC(2026, 0, i + 1)), requestId: `m-${i}`, client: 'app', server: 'http://x', resources: [{ type: 'Observation', id: `o${i}` }], patients: [`p${i % 2}`] }),
      );
      // As 0011's ledger stored them: canonical text and digest only.
      for (const e of events) {
        const canonical = canonicalBytes(e).toString('utf8');
        await db.knex.raw('insert into audit_ledger (canonical, digest) values (?, ?)', [canonical, canonicalDigest(canonical)]);
      }
      await db.knex.raw("insert into audit_ledger (canonical, digest) values ('[1]', ?)", [Buffer.alloc(32)]);
      await MIGRATIONS[upTo].up(db.knex);
      expect(await countEvents(db.knex, [])).toBe(3);
      const p0 = await searchEvents(db.knex, [{ kind: 'keys', column: 'patient', keys: ['Patient/p0'] }], { order: 'asc', limit: 10 });
      expect(p0.map((r) => JSON.parse(r.canonical).id)).toEqual([events[0].id, events[2].id]);
      const deletes = await searchEvents(db.knex, [{ kind: 'code', column: 'action', codes: ['D'] }], { order: 'desc', limit: 10 });
      expect(deletes.map((r) => r.recorded?.toISOString())).toEqual(['2026-01-03T00:00:00.000Z']);
    } finally {
      await db.close();
      await drop?.();
    }
  }, 120_000);
});
