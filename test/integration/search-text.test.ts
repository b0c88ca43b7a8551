// Full-text search with `_text` (narrative) and `_content` (the whole resource)
// (https://hl7.org/fhir/R4/search.html#text) on every available backend: stemming, case and accents,
// words, phrases, `or`, negation, comma alternatives, updates and deletes, refusals, the backfill of
// migration 0008 and the CapabilityStatement; and with PHI sealed, that nothing sealed is indexed or
// found; a changed PHI policy applied by the re-seal takes the newly sealed words out of the index.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import request from 'supertest';
import { up as textMigration } from '../../migrations/0008_text_index.js';
import { loadConfig } from '../../src/config/config.js';
import { rotate } from '../../src/crypto/key-ring.js';
import { runReseal } from '../../src/jobs/reseal.js';
import { createLogger } from '../../src/log/logger.js';
import { buildServices, startServer } from '../../src/server.js';
import { backends, freePort, startTestServer, TEST_KEY_RING, type TestServer, authed, agentFor, TEST_SIGNING_RING, testAuditEnv } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const q = encodeURIComponent;
const div = (html: string) => ({ status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml">${html}</div>` });
const obs = (extra: Record<string, unknown>) => ({ resourceType: 'Observation', status: 'final', code: { text: 'finding' }, ...extra });

/** A server and helpers that label resources and search only the ones this file made. */
function harness(env: Record<string, string>) {
  const h = {
    t: undefined as unknown as TestServer,
    api: undefined as unknown as ReturnType<typeof request>,
    tag: randomUUID(),
    ids: {} as Record<string, string>,
    label(id: string) {
      return Object.entries(h.ids).find(([, v]) => v === id)?.[0] ?? id;
    },
    async post(l: string, r: Record<string, unknown>) {
      h.ids[l] = (await h.api.post(`/${r.resourceType}`).set('Content-Type', FHIR).send({ ...r, meta: { tag: [{ system: 'urn:vesta:test', code: h.tag }] } }).expect(201)).body.id;
    },
    /** The labels of the matches, sorted; throws with the outcome on anything but 200. */
    async find(type: string, query: string): Promise<string[]> {
      const res = await h.api.get(`/${type}?${query}&_tag=${q(`urn:vesta:test|${h.tag}`)}&_count=100`).set('Prefer', 'handling=strict');
      if (res.status !== 200) throw new Error(`${type}?${query}: ${res.status} ${JSON.stringify(res.body.issue)}`);
      return (res.body.entry ?? []).filter((e: { search: { mode: string } }) => e.search.mode === 'match').map((e: { resource: { id: string } }) => h.label(e.resource.id)).sort();
    },
    async start(backend: 'embedded' | 'pg') {
      h.t = await startTestServer(backend, env);
      h.api = authed(h.t);
    },
  };
  return h;
}

describe.each(backends())('_text and _content with PHI_ENCRYPTION=off on %s PostgreSQL', (backend) => {
  const h = harness({ PHI_ENCRYPTION: 'off' });
  const { find } = h;

  beforeAll(async () => {
    await h.start(backend);
    await h.post('fever', obs({ text: div('<p>The patient reports <b>fevers</b> and a dry cough.</p>'), valueString: 'elevated' }));
    await h.post('rash', obs({ text: div('<p>Rash on the left arm &amp; chest pain.</p>') }));
    await h.post('cafe', obs({ text: div('<p>Caf&#233; au lait spots</p>'), note: [{ text: 'Referred to dermatology' }] }));
    await h.post('plain', obs({ code: { coding: [{ system: 'http://loinc.org', code: '8310-5', display: 'Body temperature' }] }, valueString: 'Measured orally' }));
  });
  afterAll(async () => {
    await h.t.close();
  });

  test('_text: words of the narrative, stemmed, case- and accent-insensitive, tags and entities resolved', async () => {
    expect(await find('Observation', '_text=fever')).toEqual(['fever']); // "fevers" stems to "fever"
    expect(await find('Observation', '_text=COUGHING')).toEqual(['fever']);
    expect(await find('Observation', '_text=cafe')).toEqual(['cafe']); // &#233; decoded, accent folded
    expect(await find('Observation', `_text=${q('chest')}`)).toEqual(['rash']); // &amp; does not glue words together
    expect(await find('Observation', '_text=dermatology')).toEqual([]); // a note is content, not narrative
    expect(await find('Observation', '_text=temperature')).toEqual([]);
    expect(await find('Observation', '_text=xhtml')).toEqual([]); // markup is not text
  });

  test('query syntax: all words, `or`, "phrases", -negation; comma values are alternatives', async () => {
    expect(await find('Observation', `_text=${q('fever cough')}`)).toEqual(['fever']);
    expect(await find('Observation', `_text=${q('fever rash')}`)).toEqual([]);
    expect(await find('Observation', `_text=${q('fever or rash')}`)).toEqual(['fever', 'rash']);
    expect(await find('Observation', `_text=${q('fever,rash')}`)).toEqual(['fever', 'rash']);
    expect(await find('Observation', `_text=${q('"dry cough"')}`)).toEqual(['fever']);
    expect(await find('Observation', `_text=${q('"cough dry"')}`)).toEqual([]);
    expect(await find('Observation', `_text=${q('fever -cough')}`)).toEqual([]);
    expect(await find('Observation', `_text=${q('pain -fever')}`)).toEqual(['rash']);
  });

  test('_content: every string of the resource (narrative, notes, codes, values), not id or meta', async () => {
    expect(await find('Observation', '_content=dermatology')).toEqual(['cafe']);
    expect(await find('Observation', '_content=temperature')).toEqual(['plain']); // Coding.display
    expect(await find('Observation', '_content=8310-5')).toEqual(['plain']); // a code
    expect(await find('Observation', '_content=orally')).toEqual(['plain']);
    expect(await find('Observation', '_content=fever')).toEqual(['fever']); // the narrative's words too
    expect(await find('Observation', '_content=finding')).toEqual(['cafe', 'fever', 'rash']);
    expect(await find('Observation', `_content=${q(h.tag)}`)).toEqual([]); // meta.tag is not content
    expect(await find('Observation', `_content=${q(h.ids.plain)}`)).toEqual([]); // nor the id
    expect(await find('Observation', '_content=finding&_text=rash')).toEqual(['rash']); // AND with other parameters
  });

  test('_content across types: system search without _type, and with it', async () => {
    await h.post('cond', { resourceType: 'Condition', subject: { reference: 'Patient/x' }, code: { text: 'dermatology referral' } });
    const sys = async (query: string) => {
      const res = await h.api.get(`/?${query}&_tag=${q(`urn:vesta:test|${h.tag}`)}`).set('Prefer', 'handling=strict').expect(200);
      return (res.body.entry ?? []).map((e: { resource: { id: string } }) => h.label(e.resource.id)).sort();
    };
    expect(await sys('_content=dermatology')).toEqual(['cafe', 'cond']);
    expect(await sys('_content=dermatology&_type=Condition')).toEqual(['cond']);
    // _text is not on every type (Binary, Bundle and Parameters have no narrative): not without _type
    await h.api.get('/?_text=fever').set('Prefer', 'handling=strict').expect(400);
    expect(await sys('_text=fever&_type=Observation,Condition')).toEqual(['fever']);
    const cs = await h.api.get('/metadata').expect(200);
    expect(cs.body.rest[0].searchParam.map((p: { name: string }) => p.name)).toContain('_content');
  });

  test('an update replaces the indexed text; a delete removes it', async () => {
    await h.post('changing', obs({ text: div('<p>wheezing</p>') }));
    expect(await find('Observation', '_text=wheeze')).toEqual(['changing']);
    const id = h.ids.changing;
    await h.api.put(`/Observation/${id}`).set('Content-Type', FHIR).send({ ...obs({ text: div('<p>stridor</p>') }), id, meta: { tag: [{ system: 'urn:vesta:test', code: h.tag }] } }).expect(200);
    expect(await find('Observation', '_text=wheeze')).toEqual([]);
    expect(await find('Observation', '_text=stridor')).toEqual(['changing']);
    await h.api.delete(`/Observation/${id}`).expect(204);
    expect(await find('Observation', '_text=stridor')).toEqual([]);
    const rows = (await h.t.svc.db.knex.raw('select count(*)::int as n from idx_text where resource_id = ?', [id])) as { rows: { n: number }[] };
    expect(rows.rows[0].n).toBe(0);
  });

  test('refused with 400: modifiers, sorting, values too long or empty; never a 500', async () => {
    for (const query of ['_text:exact=fever', '_content:contains=fev', '_sort=_text', `_text=${'a'.repeat(1001)}`, '_text=']) {
      const res = await h.api.get(`/Observation?${query}`).set('Prefer', 'handling=strict');
      expect([query.slice(0, 30), res.status, res.body.resourceType]).toEqual([query.slice(0, 30), 400, 'OperationOutcome']);
    }
    // Operators alone or stray quotes are no error: they just match nothing.
    for (const query of [`_text=${q('"')}`, `_text=${q('or')}`, `_text=${q('- -')}`, `_text=${q("'&|!:*()")}`, '_text=the']) {
      expect([query, await find('Observation', query)]).toEqual([query, []]);
    }
  });

  test('the CapabilityStatement lists _text and _content with what is served', async () => {
    const cs = await h.api.get('/metadata').expect(200);
    const params = (type: string) => cs.body.rest[0].resource.find((r: { type: string }) => r.type === type).searchParam as { name: string; documentation: string }[];
    const o = params('Observation');
    expect(o.find((p) => p.name === '_text')?.documentation).toMatch(/narrative.*stemming/);
    expect(o.find((p) => p.name === '_content')?.documentation).toMatch(/every string element/);
    expect(params('Binary').map((p) => p.name)).not.toContain('_text'); // not a DomainResource: no narrative
    expect(params('Binary').map((p) => p.name)).toContain('_content');
  });

  test('migration 0008 indexes the resources stored before it', async () => {
    const knex = h.t.svc.db.knex;
    await knex.raw('drop table idx_text');
    await textMigration(knex);
    expect(await find('Observation', '_text=fever')).toEqual(['fever']);
    expect(await find('Observation', '_content=dermatology')).toEqual(['cafe']);
    expect(await find('Observation', `_text=${q('"dry cough"')}`)).toEqual(['fever']);
  });
});

describe.each(backends())('_text and _content with PHI sealed on %s PostgreSQL', (backend) => {
  const h = harness({});
  const { find } = h;

  beforeAll(async () => {
    await h.start(backend);
    await h.post('pat', {
      resourceType: 'Patient',
      gender: 'female',
      name: [{ family: 'Quarantillo', given: ['Ysolde'] }],
      text: div('<p>Ysolde Quarantillo, born 1931</p>'),
      maritalStatus: { text: 'Widowed' },
    });
    await h.post('obs', obs({ text: div('<p>narrative about Quarantillo</p>'), valueString: 'harmless', note: [{ text: 'confidential remark' }] }));
  });
  afterAll(async () => {
    await h.t.close();
  });

  test('_content finds the unsealed elements only; sealed ones (name, narrative, notes) never match', async () => {
    expect(await find('Patient', '_content=widowed')).toEqual(['pat']);
    expect(await find('Patient', '_content=female')).toEqual(['pat']);
    expect(await find('Patient', '_content=quarantillo')).toEqual([]);
    expect(await find('Patient', '_content=ysolde')).toEqual([]);
    expect(await find('Observation', '_content=harmless')).toEqual(['obs']);
    expect(await find('Observation', '_content=quarantillo')).toEqual([]);
    expect(await find('Observation', '_content=confidential')).toEqual([]);
  });

  test('_text is withheld when the policy seals the narrative: 400 when strict, reported when lenient', async () => {
    const strict = await h.api.get('/Observation?_text=narrative').set('Prefer', 'handling=strict');
    expect(strict.status).toBe(400);
    expect(JSON.stringify(strict.body.issue)).toMatch(/_text.*not available while PHI is sealed/);
    expect(JSON.stringify(strict.body)).not.toMatch(/narrative/); // the value is not echoed
    const lenient = await h.api.get(`/Observation?_text=narrative&_tag=${q(`urn:vesta:test|${h.tag}`)}`).expect(200);
    expect(lenient.body.entry.find((e: { search: { mode: string } }) => e.search.mode === 'outcome')).toBeDefined();
    const cs = await h.api.get('/metadata').expect(200);
    const names = cs.body.rest[0].resource.find((r: { type: string }) => r.type === 'Patient').searchParam.map((p: { name: string }) => p.name);
    expect(names).toContain('_content');
    expect(names).not.toContain('_text');
  });

  test('no sealed word reaches idx_text, not even as a lexeme', async () => {
    const rows = (await h.t.svc.db.knex.raw('select doc::text as doc from idx_text')) as { rows: { doc: string }[] };
    const all = rows.rows.map((r) => r.doc).join(' ');
    expect(all).toMatch(/widow/);
    expect(all).toMatch(/harmless/);
    expect(all).not.toMatch(/quarant|ysold|1931|confidenti|narrat/);
  });
});

describe.each(backends())('switching sealing on: the re-seal seals data written without it, on %s PostgreSQL', (backend) => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer(backend, { PHI_ENCRYPTION: 'off' });
  });
  afterAll(async () => {
    await t.close();
  });

  test('content, plaintext index rows and full text lose the PHI; searches go through the blind index', async () => {
    const api = authed(t);
    const pid = (await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', name: [{ family: 'Offwriter' }], gender: 'male' }).expect(201)).body.id;
    await api.post('/Observation').set('Content-Type', FHIR).send(obs({ subject: { reference: `Patient/${pid}` }, note: [{ text: 'confidential remark' }] })).expect(201);
    const dump = async () => {
      const tables = ['resource', 'resource_history', 'idx_string', 'idx_token', 'idx_text'];
      const parts = await Promise.all(tables.map(async (x) => JSON.stringify(((await t.svc.db.knex.raw(`select * from ${x}`)) as { rows: unknown[] }).rows)));
      return parts.join('\n');
    };
    expect(await dump()).toMatch(/offwriter/i);
    const config = loadConfig({ PORT: String(await freePort()), HOST: '127.0.0.1', LOG_LEVEL: 'silent', AUTH_KEYS: JSON.stringify(TEST_SIGNING_RING), ...testAuditEnv(), PHI_KEYS: JSON.stringify(TEST_KEY_RING), PAGE_TOKEN_SECRET: 'test-secret-test-secret-test-secret!' });
    const svc2 = await buildServices(config, createLogger('silent'), t.svc.db);
    expect(await svc2.store.countStale(svc2.db.knex)).toBe(2);
    expect((await runReseal(svc2)).done).toBe(2);
    expect(await svc2.store.countStale(svc2.db.knex)).toBe(0);
    expect(await dump()).not.toMatch(/offwriter|confidenti|remark/i);
    const running = await startServer(svc2);
    try {
      const found = await (await agentFor(running.url, svc2.config.baseUrl)).get("/Patient?family=offwriter").set('Prefer', 'handling=strict').expect(200);
      expect(found.body.entry.map((e: { resource: { id: string; name: unknown } }) => [e.resource.id, e.resource.name])).toEqual([[pid, [{ family: 'Offwriter' }]]]);
    } finally {
      await new Promise<void>((r) => running.server.close(() => r()));
    }
  });
});

describe.each(backends())('a changed PHI policy reaches the full-text index on re-seal, on %s PostgreSQL', (backend) => {
  let t: TestServer;
  const dir = mkdtempSync(join(tmpdir(), 'vesta-policy-'));
  beforeAll(async () => {
    // First a narrow policy: only Patient names are sealed, notes and narratives stay in the clear.
    const narrow = join(dir, 'narrow.json');
    writeFileSync(narrow, JSON.stringify({ description: 'test: names only', resources: { Patient: ['name'] } }));
    t = await startTestServer(backend, { PHI_POLICY_FILE: narrow });
  });
  afterAll(async () => {
    await t.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('words of a newly sealed element leave idx_text; the rest stays searchable', async () => {
    const api = authed(t);
    const id = (await api.post('/Observation').set('Content-Type', FHIR).send(obs({ valueString: 'harmless', note: [{ text: 'confidential remark' }] })).expect(201)).body.id;
    const words = async () => ((await t.svc.db.knex.raw('select doc::text as doc from idx_text where resource_id = ?', [id])) as { rows: { doc: string }[] }).rows.map((r) => r.doc).join(' ');
    expect(await words()).toMatch(/confidenti/);
    // The default policy (notes and narratives sealed) with a rotated ring; the re-seal applies it.
    const port = await freePort();
    const config = loadConfig({ PORT: String(port), HOST: '127.0.0.1', LOG_LEVEL: 'silent', AUTH_KEYS: JSON.stringify(TEST_SIGNING_RING), ...testAuditEnv(), PHI_KEYS: JSON.stringify(rotate(TEST_KEY_RING)), PAGE_TOKEN_SECRET: 'test-secret-test-secret-test-secret!', BASE_URL: `http://127.0.0.1:${port}` });
    const svc2 = await buildServices(config, createLogger('silent'), t.svc.db);
    const result = await runReseal(svc2);
    expect(result.done).toBeGreaterThanOrEqual(1);
    expect(await words()).not.toMatch(/confidenti|remark/);
    expect(await words()).toMatch(/harmless/);
    const running = await startServer(svc2);
    try {
      const find = async (query: string) => (await (await agentFor(running.url)).get(`/Observation?${query}`).expect(200)).body.entry?.map((e: { resource: { id: string } }) => e.resource.id) ?? [];
      expect(await find('_content=confidential')).toEqual([]);
      expect(await find('_content=harmless')).toEqual([id]);
      // and the resource still reads back whole
      expect((await (await agentFor(running.url)).get(`/Observation/${id}`).expect(200)).body.note).toEqual([{ text: 'confidential remark' }]);
    } finally {
      await new Promise<void>((r) => running.server.close(() => r()));
    }
  });
});
