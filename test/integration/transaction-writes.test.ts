// Transaction entries PUT [type]/[id] and DELETE [type]/[id] are locked, checked and written in
// batches (http.html#transaction): the same answers, versions, history and index rows as the
// one-entry-at-a-time path, in a handful of statements instead of several per entry.
import { AuditTrail } from '../../src/audit/trail.js';
import { OPEN } from '../../src/auth/principal.js';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { transactionOrBatch } from '../../src/interactions/transaction.js';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';
type Entry = { fullUrl?: string; resource?: Record<string, unknown>; request: Record<string, unknown> };
type RespEntry = { resource?: Record<string, unknown> & { meta?: Record<string, unknown> }; fullUrl?: string; request?: { method: string }; response: Record<string, unknown> & { outcome?: Record<string, unknown> } };
const bundle = (entry: Entry[], type = 'transaction') => ({ resourceType: 'Bundle', type, entry });
const basic = (id: string, text: string, sys = 'urn:tw') => ({ resourceType: 'Basic', id, code: { coding: [{ system: sys, code: text }] } });
const put = (id: string, text: string, sys?: string, ifMatch?: string): Entry => ({
  fullUrl: `Basic/${id}`,
  resource: basic(id, text, sys),
  request: { method: 'PUT', url: `Basic/${id}`, ...(ifMatch ? { ifMatch } : {}) },
});
const del = (id: string, ifMatch?: string): Entry => ({ request: { method: 'DELETE', url: `Basic/${id}`, ...(ifMatch ? { ifMatch } : {}) } });

describe.each(backends())('batched PUT and DELETE entries in transactions on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof request>;
  beforeAll(async () => {
    t = await startTestServer(backend);
    api = authed(t);
  });
  afterAll(async () => {
    await t.close();
  });

  const run = `${backend}-${Date.now()}`;
  const ids = (p: string, n: number) => Array.from({ length: n }, (_, i) => `${p}-${run}-${i}`);

  async function seed(id: string, versions: number, deleteAfter = false): Promise<void> {
    for (let v = 1; v <= versions; v++) await api.put(`/Basic/${id}`).set('Content-Type', FHIR).send(basic(id, `seed${v}`)).expect(v === 1 ? 201 : 200);
    if (deleteAfter) await api.delete(`/Basic/${id}`).expect(204);
  }

  async function versionOf(id: string): Promise<string | number> {
    const r = await api.get(`/Basic/${id}`);
    return r.status === 200 ? r.body.meta.versionId : r.status;
  }

  test('mixed new, existing and deleted targets: statuses, versions, history and index rows as the single path gives', async () => {
    const [fresh, existing, twice, gone, victim, missing, alreadyGone] = ids('mix', 7);
    await seed(existing, 1);
    await seed(twice, 2);
    await seed(gone, 1, true);
    await seed(victim, 1);
    await seed(alreadyGone, 1, true);
    const sys = `urn:mix:${run}`;
    const res = await api
      .post('/')
      .set('Content-Type', FHIR)
      .send(bundle([put(fresh, 'a', sys), put(existing, 'b', sys), del(victim), put(twice, 'c', sys, 'W/"2"'), del(missing), put(gone, 'd', sys), del(alreadyGone)]))
      .expect(200);
    const e = res.body.entry as RespEntry[];
    expect(e.map((x) => x.response.status)).toEqual(['201 Created', '200 OK', '204 No Content', '200 OK', '204 No Content', '201 Created', '204 No Content']);
    expect(e.map((x) => x.response.etag)).toEqual(['W/"1"', 'W/"2"', 'W/"2"', 'W/"3"', undefined, 'W/"3"', 'W/"2"']);
    expect(e[0].response.location).toBe(`Basic/${fresh}/_history/1`);
    expect(e[1].response.location).toBe(`Basic/${existing}/_history/2`);
    expect(e[5].response.location).toBe(`Basic/${gone}/_history/3`);
    expect(e[3].resource?.meta?.versionId).toBe('3');
    // lastModified comes from the Last-Modified header (whole seconds)
    expect(e[3].response.lastModified).toBe(String(e[3].resource?.meta?.lastUpdated).replace(/\.\d{3}Z$/, '.000Z'));
    expect(e[2].resource).toBeUndefined();
    // stored as answered
    expect([await versionOf(fresh), await versionOf(existing), await versionOf(twice), await versionOf(gone), await versionOf(victim), await versionOf(missing)]).toEqual(['1', '2', '3', '3', 410, 404]);
    const hist = await api.get(`/Basic/${gone}/_history`).expect(200);
    expect(hist.body.entry.map((x: RespEntry) => x.request?.method)).toEqual(['PUT', 'DELETE', 'PUT']);
    expect(hist.body.entry.map((x: RespEntry) => x.resource?.meta?.versionId ?? null)).toEqual(['3', null, '1']);
    // index rows: the new codes are found, the old ones of updated resources and the deleted one are not
    for (const [code, id] of [['a', fresh], ['b', existing], ['c', twice], ['d', gone]]) {
      const s = await api.get(`/Basic?code=${encodeURIComponent(`${sys}|${code}`)}`).expect(200);
      expect([code, s.body.entry?.map((x: RespEntry) => x.resource?.id)]).toEqual([code, [id]]);
    }
    for (const old of ['seed1', 'seed2']) {
      const s = await api.get(`/Basic?code=${encodeURIComponent(`urn:tw|${old}`)}`).expect(200);
      const found = (s.body.entry ?? []).map((x: RespEntry) => x.resource?.id);
      for (const id of [existing, twice, victim, gone]) expect(found).not.toContain(id);
    }
  });

  test('responses equal those of the one-by-one path (a batch Bundle runs entries singly), for every Prefer return', async () => {
    for (const prefer of ['representation', 'minimal', 'OperationOutcome']) {
      const answers: RespEntry[][] = [];
      for (const type of ['batch', 'transaction']) {
        const p = `eq-${prefer}-${type}`;
        const [n, x, d, v, m, a] = ids(p, 6);
        await seed(x, 1);
        await seed(d, 1, true);
        await seed(v, 2);
        await seed(a, 1, true);
        const r = await api
          .post('/')
          .set('Content-Type', FHIR)
          .set('Prefer', `return=${prefer}`)
          .send(bundle([put(n, 'n'), put(x, 'x', undefined, 'W/"1"'), put(d, 'd'), del(v), del(m), del(a)], type))
          .expect(200);
        // Normalise what differs by construction: the ids, the clock and the Bundle type.
        const text = JSON.stringify(r.body.entry).split(p).join('ID').replace(/\d{4}-\d\d-\d\dT[\d:.]+Z/g, 'TIME').replace(/[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} [\d:]+ GMT/g, 'TIME');
        answers.push(JSON.parse(text) as RespEntry[]);
      }
      expect([prefer, answers[1]]).toEqual([prefer, answers[0]]);
    }
  });

  test('a stale If-Match in the middle fails the whole transaction naming that entry; nothing is written', async () => {
    const old = ids('stale-old', 10);
    for (const id of old) await seed(id, 1);
    const fresh = ids('stale-new', 10);
    const entries: Entry[] = [];
    for (let i = 0; i < 10; i++) entries.push(put(old[i], `u${i}`, undefined, i === 5 ? 'W/"7"' : 'W/"1"'), put(fresh[i], `n${i}`));
    entries.push(del(old[9] + '-x'));
    const r = await api.post('/').set('Content-Type', FHIR).send(bundle(entries)).expect(412);
    expect(r.body.issue[0].diagnostics).toMatch(new RegExp(`^entry 10 \\(Basic/${old[5]}\\): If-Match W/"7" does not match the current version W/"1"`));
    for (const id of old) expect(await versionOf(id)).toBe('1');
    for (const id of fresh) expect(await versionOf(id)).toBe(404);
    // If-Match on a resource that does not exist is a 412 too, and a DELETE's If-Match is checked
    const r2 = await api.post('/').set('Content-Type', FHIR).send(bundle([put(fresh[0], 'x', undefined, 'W/"1"')])).expect(412);
    expect(r2.body.issue[0].diagnostics).toMatch(/^entry 0 .*does not exist/);
    await api.post('/').set('Content-Type', FHIR).send(bundle([del(old[0], 'W/"2"')])).expect(412);
    expect(await versionOf(old[0])).toBe('1');
    // the first failing entry in processing order is the one named: a DELETE runs before a PUT
    const r3 = await api.post('/').set('Content-Type', FHIR).send(bundle([put(old[1], 'y', undefined, 'W/"5"'), del(old[2], 'W/"6"')])).expect(412);
    expect(r3.body.issue[0].diagnostics).toMatch(/^entry 1: If-Match W\/"6"/);
  });

  test('an invalid resource or id among PUTs is refused whole (422/400 naming the entry)', async () => {
    const [a, b] = ids('inv', 2);
    const bad = { fullUrl: 'urn:uuid:eeeeeeee-0000-4000-8000-000000000001', resource: { resourceType: 'Basic', id: b, code: { text: 'x' }, created: 'not-a-date' }, request: { method: 'PUT', url: `Basic/${b}` } };
    const r = await api.post('/').set('Content-Type', FHIR).send(bundle([put(a, 'ok'), bad])).expect(422);
    expect(r.body.issue[0].diagnostics).toMatch(/^entry 1 \(urn:uuid:eeeeeeee-0000-4000-8000-000000000001\)/);
    expect(await versionOf(a)).toBe(404);
    const mismatch = await api.post('/').set('Content-Type', FHIR).send(bundle([put(a, 'ok'), { resource: basic('other', 'x'), request: { method: 'PUT', url: `Basic/${b}` } }])).expect(400);
    expect(mismatch.body.issue[0].diagnostics).toMatch(/^entry 1: the resource id does not match the id in the URL/);
    await api.post('/').set('Content-Type', FHIR).send(bundle([put(a, 'ok'), { request: { method: 'PUT', url: 'Basic/x', ifMatch: 'nonsense' }, resource: basic('x', 'x') }])).expect(400);
    expect(await versionOf(a)).toBe(404);
  });

  test('lastUpdated never moves backwards when the clock does; PHI is sealed with the right version', async () => {
    const [p] = ids('clock', 1);
    const patient = (family: string) => ({ resourceType: 'Patient', id: p, name: [{ family }], identifier: [{ system: `urn:clock:${run}`, value: family }] });
    await api.put(`/Patient/${p}`).set('Content-Type', FHIR).send(patient('Before')).expect(201);
    const first = await api.get(`/Patient/${p}`).expect(200);
    const past = new Date('2001-01-01T00:00:00Z');
    const ctx = { requestId: 'clock', principal: OPEN, clock: () => past, baseUrl: t.url, audit: new AuditTrail('transaction') };
    const r = await transactionOrBatch(t.svc, ctx, bundle([{ resource: patient('After'), request: { method: 'PUT', url: `Patient/${p}` } }]));
    const entry = (r.body as unknown as { entry: RespEntry[] }).entry[0];
    expect(entry.response.status).toBe('200 OK');
    expect(new Date(String(entry.resource?.meta?.lastUpdated)).getTime()).toBe(new Date(first.body.meta.lastUpdated).getTime() + 1);
    const now = await api.get(`/Patient/${p}`).expect(200);
    expect(now.body.name[0].family).toBe('After');
    expect(now.body.meta.versionId).toBe('2');
    const v1 = await api.get(`/Patient/${p}/_history/1`).expect(200);
    expect(v1.body.name[0].family).toBe('Before');
    const s = await api.get(`/Patient?identifier=${encodeURIComponent(`urn:clock:${run}|After`)}`).expect(200);
    expect(s.body.total).toBe(1);
    const s0 = await api.get(`/Patient?identifier=${encodeURIComponent(`urn:clock:${run}|Before`)}`).expect(200);
    expect(s0.body.total).toBe(0);
    const row = (await t.svc.db.knex('resource').where({ resource_type: 'Patient', id: p }).first()) as { content: unknown; sealed: string | null };
    expect(JSON.stringify(row.content)).not.toContain('After');
    expect(row.sealed).not.toBeNull();
  });

  test('a 600-entry PUT Bundle (new, then existing) and a 600-entry DELETE Bundle take a handful of statements (chunks of 500 and 250 rows)', async () => {
    const many = ids('many', 600);
    let statements = 0;
    const count = () => {
      statements++;
    };
    const knex = t.svc.db.knex;
    // The audit sequencer's own statements (it links the ledger every 100 ms) are not the Bundle's.
    await t.running.sequencer?.stop();
    knex.on('query', count);
    try {
      const counted = async (body: unknown, status: string, etag: string | undefined) => {
        statements = 0;
        const r = await api.post('/').set('Content-Type', FHIR).send(body as object).expect(200);
        expect(new Set(r.body.entry.map((x: RespEntry) => `${x.response.status} ${x.response.etag}`))).toEqual(new Set([`${status} ${etag}`]));
        return statements;
      };
      const created = await counted(bundle(many.map((id, i) => put(id, `m${i}`))), '201 Created', 'W/"1"');
      const updated = await counted(bundle(many.map((id, i) => put(id, `m${i}b`, undefined, 'W/"1"'))), '200 OK', 'W/"2"');
      const deletedCount = await counted(bundle(many.map((id) => del(id))), '204 No Content', 'W/"3"');
      // one by one, each entry took 7 statements (savepoint, advisory lock, SELECT ... FOR UPDATE,
      // history, current and index rows, release)
      for (const n of [created, updated, deletedCount]) {
        expect(n).toBeGreaterThan(0);
        expect(n).toBeLessThan(20);
      }
    } finally {
      knex.off('query', count);
      await t.running.sequencer?.start();
    }
    expect(await versionOf(many[0])).toBe(410);
    const hist = await api.get(`/Basic/${many[599]}/_history`).expect(200);
    expect(hist.body.entry.map((x: RespEntry) => x.resource?.meta?.versionId ?? null)).toEqual([null, '2', '1']);
  });
});
