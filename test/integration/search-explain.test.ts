// Index use of the search mix (search issue, acceptance: "EXPLAIN shows index use for each"). The SQL
// Vesta runs for each query of the bench's mix (bench/search-mix.ts) is EXPLAINed on data loaded from
// the Synthea fixtures. The tables here are small, so PostgreSQL would rightly pick sequential scans;
// the test therefore disables them (enable_seqscan = off, which keeps them only where no index can
// serve the access) and asserts that no sequential scan remains on the resource or index tables: every
// table access of every query has an index path. `npm run bench` reports the planner's own choice at
// 100,000 resources.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { MIX, planScans, vestaSql } from '../../bench/search-mix.js';
import { backends, startTestServer, type TestServer, authed } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const dir = join(process.cwd(), 'test', 'fixtures', 'synthea');

describe.each(backends())('search mix plans on %s PostgreSQL', (backend) => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer(backend, { PHI_ENCRYPTION: 'off' });
    for (const f of readdirSync(dir).filter((x) => x.endsWith('.json') && x !== 'manifest.json')) {
      await authed(t).post('/').set('Content-Type', FHIR).send(readFileSync(join(dir, f), 'utf8')).expect(200);
    }
    await t.svc.db.knex.raw('analyze');
  }, 120_000);
  afterAll(async () => {
    await t.close();
  });

  test('every query of the mix has an index path for every table it reads', async () => {
    const k = t.svc.db.knex;
    const sample = (await k.raw(`select content from resource where resource_type = 'Observation' and content->'encounter' is not null order by id limit 1`)) as { rows: { content: { subject: { reference: string }; code: { coding: { system: string; code: string }[] }; effectiveDateTime: string } }[] };
    const o = sample.rows[0].content;
    const s = {
      family: 'Abcd',
      identifier: { system: 'https://github.com/synthetichealth/synthea', value: 'x' },
      patientId: o.subject.reference.split('/')[1],
      code: o.code.coding[0],
      date: o.effectiveDateTime.slice(0, 10),
      word: 'glucose',
    };
    const report: Record<string, string[]> = {};
    for (const q of MIX) {
      const sql = vestaSql(q.path(s), { sealed: false }, t.url);
      const plan = await k.transaction(async (tx) => {
        await tx.raw('set local enable_seqscan = off');
        const res = (await tx.raw(`explain (format json) ${sql.text.replace(/\$\d+/g, '?')}`, sql.values as never[])) as { rows: Record<string, unknown>[] };
        const cell = Object.values(res.rows[0])[0];
        return (typeof cell === 'string' ? JSON.parse(cell) : cell) as { Plan: Record<string, unknown> }[];
      });
      const scans = planScans(plan[0].Plan);
      report[q.name] = scans.filter((n) => n.rel).map((n) => `${n.node} on ${n.rel}`);
      const seq = scans.filter((n) => n.node === 'Seq Scan' && n.rel && (n.rel === 'resource' || n.rel.startsWith('idx_')));
      expect({ query: q.name, seq }).toEqual({ query: q.name, seq: [] });
      expect(scans.some((n) => /Index/.test(n.node))).toBe(true);
    }
    expect(Object.keys(report)).toHaveLength(MIX.length);
  });
});
