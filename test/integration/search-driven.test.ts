// Index-only search plans (src/search/plan.ts planSearch, storage/search-store.ts pageQuery): a search
// on one type with a clause that can be a source of ids is answered from the index tables alone, its
// accurate total counted in the page's own statement. This test runs every query both ways on the same
// data - the index-only form and the plain conditions on the resource table - and requires the same
// pages forwards and backwards, the same totals, and the same answer after a matching resource is
// deleted (its index rows go with it, which is what the index-only form relies on).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseSearch } from '../../src/search/parse.js';
import { planSearch, type SearchPlan } from '../../src/search/plan.js';
import { countMatches, searchPage, type PageCursor } from '../../src/storage/search-store.js';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const dir = join(process.cwd(), 'test', 'fixtures', 'synthea');
const PAGE = 4;

describe.each(backends())('index-only search plans on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let paths: string[] = [];
  beforeAll(async () => {
    t = await startTestServer(backend, { PHI_ENCRYPTION: 'off' });
    for (const f of readdirSync(dir).filter((x) => x.endsWith('.json') && x !== 'manifest.json')) {
      await authed(t).post('/').set('Content-Type', FHIR).send(readFileSync(join(dir, f), 'utf8')).expect(200);
    }
    const k = t.svc.db.knex;
    const rows = (await k.raw(`select content from resource where resource_type = 'Observation' and content->'encounter' is not null and content->'effectiveDateTime' is not null order by id limit 40`)) as {
      rows: { content: { subject: { reference: string }; code: { coding: { system: string; code: string }[] }; effectiveDateTime: string } }[];
    };
    const q = encodeURIComponent;
    const seen = new Set<string>();
    for (const { content: o } of rows.rows) {
      const c = o.code.coding[0];
      if (seen.has(c.code)) continue;
      seen.add(c.code);
      const code = q(`${c.system}|${c.code}`);
      const patient = o.subject.reference.split('/')[1];
      paths.push(
        `/Observation?code=${code}`,
        `/Observation?code=${code}&date=ge${o.effectiveDateTime.slice(0, 7)}`,
        `/Observation?patient=${patient}&code=${code}`,
        `/Observation?date=lt${o.effectiveDateTime.slice(0, 4)}&status:not=final`,
        `/Encounter?_has:Observation:encounter:code=${code}`,
        `/Observation?subject:Patient.gender=female&code=${code}`,
        `/Observation?code=${code},${q('http://loinc.org|8302-2')}&_lastUpdated=gt2000-01-01`,
      );
    }
    paths = paths.slice(0, 28);
    paths.push('/Patient?gender=female&birthdate:missing=false', '/Encounter?class=AMB&subject:missing=false', '/Condition?clinical-status=active');
  }, 120_000);
  afterAll(async () => {
    await t.close();
  });

  const plans = (path: string): { driven: SearchPlan; plain: SearchPlan } => {
    const u = new URL(path, 'http://x');
    const req = parseSearch(u.pathname.slice(1), [...u.searchParams], { strict: true, phi: { sealed: false }, baseUrl: t.url });
    const driven = planSearch(req);
    return { driven, plain: { where: driven.where, ...(driven.type ? { type: driven.type } : {}) } };
  };

  /** Every id in order, PAGE at a time through forward cursors, then back again through backward cursors. */
  async function walk(plan: SearchPlan): Promise<{ forward: string[]; backward: string[]; totals: number[] }> {
    const k = t.svc.db.knex;
    const forward: string[] = [];
    const totals: number[] = [];
    let after: PageCursor | undefined;
    let last: PageCursor | undefined;
    for (;;) {
      const got = await searchPage(k, plan, [], { limit: PAGE, total: true, ...(after ? { after } : {}) });
      if (got.total !== undefined) totals.push(got.total);
      forward.push(...got.rows.map((r) => r.id));
      if (got.rows.length) last = got.rows[got.rows.length - 1];
      if (got.rows.length < PAGE) break;
      if (forward.length > 5000) throw new Error(`runaway forward walk: ${forward.slice(-25).join(' ')}`);
      after = got.rows[PAGE - 1];
    }
    const backward: string[] = [];
    if (last) {
      backward.push(last.id);
      let before: PageCursor = last;
      for (;;) {
        const got = await searchPage(k, plan, [], { limit: PAGE, before, total: true });
        if (got.total !== undefined) totals.push(got.total);
        backward.unshift(...got.rows.map((r) => r.id));
        if (got.rows.length < PAGE) break;
        if (backward.length > 5000) throw new Error(`runaway backward walk: ${backward.slice(0, 25).join(' ')}`);
        before = got.rows[0];
      }
    }
    return { forward, backward, totals };
  }

  test('the index-only form pages and counts exactly as the plain form', async () => {
    let drivenPlans = 0;
    let nonEmpty = 0;
    for (const path of paths) {
      const { driven, plain } = plans(path);
      if (driven.driven) drivenPlans++;
      const a = await walk(driven);
      const b = await walk(plain);
      expect({ path, ...a }).toEqual({ path, ...b });
      expect({ path, backward: a.backward }).toEqual({ path, backward: a.forward });
      const n = await countMatches(t.svc.db.knex, driven);
      expect({ path, n }).toEqual({ path, n: await countMatches(t.svc.db.knex, plain) });
      expect({ path, n }).toEqual({ path, n: a.forward.length });
      if (n > PAGE) nonEmpty++;
      for (const total of a.totals) expect(total).toBe(n);
    }
    // The comparison means something: every query took the index-only form, many matched several pages.
    expect(drivenPlans).toBe(paths.length);
    expect(nonEmpty).toBeGreaterThanOrEqual(5);
  }, 120_000);

  test('a deleted match leaves both forms at once (its index rows go with it)', async () => {
    const path = paths[0];
    const before = await walk(plans(path).driven);
    expect(before.forward.length).toBeGreaterThan(1);
    const gone = before.forward[1];
    await authed(t).delete(`/Observation/${gone}`).expect(204);
    const { driven, plain } = plans(path);
    const a = await walk(driven);
    expect(a.forward).toEqual(before.forward.filter((id) => id !== gone));
    expect(a).toEqual(await walk(plain));
    const res = await authed(t).get(`${path}&_count=1`).expect(200);
    expect(res.body.total).toBe(before.forward.length - 1);
  });

  test('plans that cannot be index-only keep the plain form', () => {
    const kept = (path: string, types?: string[]) => {
      const u = new URL(path, 'http://x');
      const req = parseSearch(u.pathname.slice(1), [...u.searchParams], { strict: true, phi: { sealed: false } });
      return planSearch(req, types ? { types } : {}).driven;
    };
    expect(kept('/Observation')).toBeUndefined(); // no clause
    expect(kept('/Observation?status:not=final')).toBeUndefined(); // only a negation
    expect(kept('/Observation?code:missing=true')).toBeUndefined();
    expect(kept('/Observation?_id=a,b')).toBeUndefined(); // a column, not an index table
    expect(kept('/Observation?_lastUpdated=gt2020')).toBeUndefined();
    expect(kept('/Observation?code=x', ['Observation', 'Condition'])).toBeUndefined(); // several types
    expect(kept('/Observation?code=x&status:not=final')).toBeDefined();
  });
});
