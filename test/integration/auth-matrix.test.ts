// The authorization matrix (SMART App Launch scopes; issue 13 acceptance): every interaction x every
// token form. A cell is allowed when the token carries the letters the interaction needs on
// Observation (and, for patient/ tokens, the resources are in its patient's compartment). Allowed
// cells must succeed; refused cells must be a 401 (no or bad token), a 403, a 404, or an answer that
// shows and changes nothing outside the token's reach (an empty search, "nothing to delete").
// The test prints every cell it ran.
// Audit coverage (issue 16 acceptance): every cell, allowed or refused, leaves exactly one AuditEvent
// for its request (a Bundle: one per entry plus one for the Bundle) with the action of the
// interaction, the outcome of the response, the token's client as agent (anonymous without a valid
// token) and, for allowed access to patient P's data, P as the patient entity.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { backends, startTestServer, tokenFor, authed, type TestServer } from '../support/backends.js';

const FHIR = 'application/fhir+json';

interface Form {
  name: string;
  scope?: string;
  patient?: 'P' | 'Q';
  expired?: boolean;
  /** Letters the token has on Observation resources of patient P. */
  letters: string;
  /** Letters it has on the type, whatever the resource ($validate checks content sent, not stored data). */
  typeLetters?: string;
}

const FORMS: Form[] = [
  { name: 'no token', letters: '' },
  { name: 'expired', scope: 'system/*.cruds', expired: true, letters: '' },
  { name: 'v1 read', scope: 'system/Observation.read', letters: 'rs' },
  { name: 'v1 write', scope: 'system/Observation.write', letters: 'cud' },
  { name: 'v2 c', scope: 'system/Observation.c', letters: 'c' },
  { name: 'v2 r', scope: 'system/Observation.r', letters: 'r' },
  { name: 'v2 u', scope: 'system/Observation.u', letters: 'u' },
  { name: 'v2 d', scope: 'system/Observation.d', letters: 'd' },
  { name: 'v2 s', scope: 'system/Observation.s', letters: 's' },
  { name: 'wrong type', scope: 'system/Condition.cruds', letters: '' },
  { name: 'wildcard type', scope: 'system/*.cruds', letters: 'cruds' },
  { name: 'patient/ right patient', scope: 'patient/*.cruds', patient: 'P', letters: 'cruds' },
  { name: 'patient/ other patient', scope: 'patient/*.cruds', patient: 'Q', letters: '', typeLetters: 'cruds' },
  { name: 'user/', scope: 'user/Observation.cruds', letters: 'cruds' },
  { name: 'system/', scope: 'system/Observation.cruds', letters: 'cruds' },
];

type Api = ReturnType<typeof authed>;

/** The client id of a form's token (its AuditEvents name it). */
const clientOf = (f: Form) => `client-${f.name.replace(/[^a-z0-9]+/gi, '-')}`;

describe.each([backends()[backends().length - 1]])('authorization matrix on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let admin: Api;
  let P: string;
  let Q: string;
  const tokens = new Map<string, string | undefined>();
  const cells: string[] = [];

  beforeAll(async () => {
    t = await startTestServer(backend);
    admin = authed(t);
    P = (await admin.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', active: true }).expect(201)).body.id;
    Q = (await admin.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', active: true }).expect(201)).body.id;
    for (const f of FORMS) {
      if (!f.scope) tokens.set(f.name, undefined);
      else tokens.set(f.name, await tokenFor(t.url, { scope: f.scope, clientId: clientOf(f), ...(f.patient ? { patient: f.patient === 'P' ? P : Q } : {}), ...(f.expired ? { ttlSeconds: -3600 } : {}) }));
    }
  });
  afterAll(async () => {
    process.stdout.write(`authorization matrix (${cells.length} cells):\n${cells.join('\n')}\n`);
    await t.close();
  });

  const obs = (extra: Record<string, unknown> = {}) => ({ resourceType: 'Observation', status: 'final', code: { text: 'matrix' }, subject: { reference: `Patient/${P}` }, ...extra });
  async function seed(extra: Record<string, unknown> = {}): Promise<string> {
    return (await admin.post('/Observation').set('Content-Type', FHIR).send(obs(extra)).expect(201)).body.id;
  }
  async function exists(id: string): Promise<{ status: number; version?: string }> {
    const r = await admin.get(`/Observation/${id}`);
    return { status: r.status, version: r.body?.meta?.versionId };
  }
  async function countIdentifier(v: string): Promise<number> {
    return (await admin.get(`/Observation?identifier=urn:matrix|${v}&_summary=count`).expect(200)).body.total;
  }
  /** The request id of the cell running now: its request carries it, so its records can be found. */
  let cellRequest = '';
  /** Statuses of the cell's own requests. */
  let cellStatuses: number[] = [];
  function as(f: Form) {
    const token = tokens.get(f.name);
    const r = request(t.url);
    const wrap = (req: request.Test) => {
      const x = req.set('X-Request-Id', cellRequest).on('response', (res: { status: number }) => cellStatuses.push(res.status));
      return token ? x.set('Authorization', `Bearer ${token}`) : x;
    };
    return {
      get: (p: string) => wrap(r.get(p)),
      post: (p: string) => wrap(r.post(p)),
      put: (p: string) => wrap(r.put(p)),
      patch: (p: string) => wrap(r.patch(p)),
      delete: (p: string) => wrap(r.delete(p)),
    };
  }
  const REFUSED = [401, 403, 404];
  const has = (f: Form, letters: string) => [...letters].every((l) => f.letters.includes(l));
  /** Ids of Observations in a Bundle's entries. */
  const idsIn = (b: { entry?: { resource?: { resourceType: string; id: string } }[] }) => (b.entry ?? []).filter((e) => e.resource?.resourceType === 'Observation').map((e) => e.resource!.id);
  const historyIds = (b: { entry?: { fullUrl?: string }[] }) => (b.entry ?? []).map((e) => e.fullUrl ?? '').filter((u) => u.includes('/Observation/')).map((u) => u.split('/Observation/')[1]);

  interface Interaction {
    name: string;
    needs: string;
    /** Runs the cell; returns 'allowed' or 'refused' as observed, with a reason when neither holds. */
    run(f: Form): Promise<'allowed' | 'refused' | string>;
  }

  const INTERACTIONS: Interaction[] = [
    {
      name: 'read',
      needs: 'r',
      async run(f) {
        const id = await seed();
        const r = await as(f).get(`/Observation/${id}`);
        if (r.status === 200 && r.body.id === id) return 'allowed';
        return REFUSED.includes(r.status) ? 'refused' : `status ${r.status}`;
      },
    },
    {
      name: 'vread',
      needs: 'r',
      async run(f) {
        const id = await seed();
        const r = await as(f).get(`/Observation/${id}/_history/1`);
        if (r.status === 200 && r.body.id === id) return 'allowed';
        return REFUSED.includes(r.status) ? 'refused' : `status ${r.status}`;
      },
    },
    {
      name: 'update',
      needs: 'u',
      async run(f) {
        const id = await seed();
        const r = await as(f).put(`/Observation/${id}`).set('Content-Type', FHIR).send(obs({ id, status: 'amended' }));
        const after = await exists(id);
        if (r.status === 200 && after.version === '2') return 'allowed';
        return REFUSED.includes(r.status) && after.version === '1' ? 'refused' : `status ${r.status}, version ${after.version}`;
      },
    },
    {
      name: 'patch',
      needs: 'u',
      async run(f) {
        const id = await seed();
        const r = await as(f).patch(`/Observation/${id}`).set('Content-Type', 'application/json-patch+json').send([{ op: 'replace', path: '/status', value: 'amended' }]);
        const after = await exists(id);
        if (r.status === 200 && after.version === '2') return 'allowed';
        return REFUSED.includes(r.status) && after.version === '1' ? 'refused' : `status ${r.status}, version ${after.version}`;
      },
    },
    {
      name: 'delete',
      needs: 'd',
      async run(f) {
        const id = await seed();
        const r = await as(f).delete(`/Observation/${id}`);
        const after = await exists(id);
        if (r.status === 204 && after.status === 410) return 'allowed';
        return (REFUSED.includes(r.status) || r.status === 204) && after.status === 200 ? 'refused' : `status ${r.status}, then ${after.status}`;
      },
    },
    {
      name: 'history-instance',
      needs: 'r',
      async run(f) {
        const id = await seed();
        const r = await as(f).get(`/Observation/${id}/_history`);
        if (r.status === 200 && historyIds(r.body).includes(id)) return 'allowed';
        return REFUSED.includes(r.status) ? 'refused' : `status ${r.status}`;
      },
    },
    {
      name: 'history-type',
      needs: 's',
      async run(f) {
        const id = await seed();
        const r = await as(f).get('/Observation/_history?_count=1000');
        if (r.status === 200 && historyIds(r.body).includes(id)) return 'allowed';
        return REFUSED.includes(r.status) || (r.status === 200 && historyIds(r.body).length === 0) ? 'refused' : `status ${r.status}`;
      },
    },
    {
      name: 'history-system',
      needs: 's',
      async run(f) {
        const id = await seed();
        const r = await as(f).get('/_history?_count=1000');
        if (r.status === 200 && historyIds(r.body).includes(id)) return 'allowed';
        return REFUSED.includes(r.status) || (r.status === 200 && historyIds(r.body).length === 0) ? 'refused' : `status ${r.status}`;
      },
    },
    {
      name: 'create',
      needs: 'c',
      async run(f) {
        const v = randomUUID();
        const r = await as(f).post('/Observation').set('Content-Type', FHIR).send(obs({ identifier: [{ system: 'urn:matrix', value: v }] }));
        const n = await countIdentifier(v);
        if (r.status === 201 && n === 1) return 'allowed';
        return REFUSED.includes(r.status) && n === 0 ? 'refused' : `status ${r.status}, ${n} stored`;
      },
    },
    {
      name: 'conditional create',
      needs: 'cs',
      async run(f) {
        const v = randomUUID();
        const r = await as(f).post('/Observation').set('Content-Type', FHIR).set('If-None-Exist', `identifier=urn:matrix|${v}`).send(obs({ identifier: [{ system: 'urn:matrix', value: v }] }));
        const n = await countIdentifier(v);
        if (r.status === 201 && n === 1) return 'allowed';
        return REFUSED.includes(r.status) && n === 0 ? 'refused' : `status ${r.status}, ${n} stored`;
      },
    },
    {
      name: 'conditional update',
      needs: 'us',
      async run(f) {
        const v = randomUUID();
        const id = await seed({ identifier: [{ system: 'urn:matrix', value: v }] });
        const r = await as(f).put(`/Observation?identifier=urn:matrix|${v}`).set('Content-Type', FHIR).send(obs({ status: 'amended', identifier: [{ system: 'urn:matrix', value: v }] }));
        const after = await exists(id);
        const n = await countIdentifier(v);
        if (r.status === 200 && after.version === '2' && n === 1) return 'allowed';
        return REFUSED.includes(r.status) && after.version === '1' && n === 1 ? 'refused' : `status ${r.status}, version ${after.version}, ${n} stored`;
      },
    },
    {
      name: 'conditional delete',
      needs: 'ds',
      async run(f) {
        const v = randomUUID();
        const id = await seed({ identifier: [{ system: 'urn:matrix', value: v }] });
        const r = await as(f).delete(`/Observation?identifier=urn:matrix|${v}`);
        const after = await exists(id);
        if (r.status === 204 && after.status === 410) return 'allowed';
        return (REFUSED.includes(r.status) || r.status === 204) && after.status === 200 ? 'refused' : `status ${r.status}, then ${after.status}`;
      },
    },
    {
      name: 'search-type',
      needs: 's',
      async run(f) {
        const id = await seed();
        const r = await as(f).get(`/Observation?_id=${id}`);
        if (r.status === 200 && idsIn(r.body).includes(id)) return 'allowed';
        return REFUSED.includes(r.status) || (r.status === 200 && idsIn(r.body).length === 0) ? 'refused' : `status ${r.status}`;
      },
    },
    {
      name: 'search-system',
      needs: 's',
      async run(f) {
        const id = await seed();
        const r = await as(f).get(`/?_type=Observation&_id=${id}`);
        if (r.status === 200 && idsIn(r.body).includes(id)) return 'allowed';
        return REFUSED.includes(r.status) || (r.status === 200 && idsIn(r.body).length === 0) ? 'refused' : `status ${r.status}`;
      },
    },
    {
      name: 'search-compartment',
      needs: 's',
      async run(f) {
        const id = await seed();
        const r = await as(f).get(`/Patient/${P}/Observation?_id=${id}`);
        if (r.status === 200 && idsIn(r.body).includes(id)) return 'allowed';
        return REFUSED.includes(r.status) || (r.status === 200 && idsIn(r.body).length === 0) ? 'refused' : `status ${r.status}`;
      },
    },
    {
      name: 'transaction',
      needs: 'c',
      async run(f) {
        const v = randomUUID();
        const bundle = { resourceType: 'Bundle', type: 'transaction', entry: [{ request: { method: 'POST', url: 'Observation' }, resource: obs({ identifier: [{ system: 'urn:matrix', value: v }] }) }] };
        const r = await as(f).post('/').set('Content-Type', FHIR).send(bundle);
        const n = await countIdentifier(v);
        if (r.status === 200 && n === 1) return 'allowed';
        return REFUSED.includes(r.status) && n === 0 ? 'refused' : `status ${r.status}, ${n} stored`;
      },
    },
    {
      name: 'batch',
      needs: 'r',
      async run(f) {
        const id = await seed();
        const bundle = { resourceType: 'Bundle', type: 'batch', entry: [{ request: { method: 'GET', url: `Observation/${id}` } }] };
        const r = await as(f).post('/').set('Content-Type', FHIR).send(bundle);
        if (r.status === 200 && r.body.entry?.[0]?.response?.status === '200 OK' && r.body.entry[0].resource?.id === id) return 'allowed';
        if (REFUSED.includes(r.status)) return 'refused';
        const s = Number(String(r.body.entry?.[0]?.response?.status ?? '').slice(0, 3));
        return r.status === 200 && REFUSED.includes(s) && !r.body.entry[0].resource ? 'refused' : `status ${r.status}, entry ${s}`;
      },
    },
    {
      name: '$validate',
      needs: 'c|u',
      async run(f) {
        const r = await as(f).post('/Observation/$validate').set('Content-Type', FHIR).send(obs());
        if (r.status === 200 && r.body.resourceType === 'OperationOutcome') return 'allowed';
        return REFUSED.includes(r.status) ? 'refused' : `status ${r.status}`;
      },
    },
  ];

  interface Recorded {
    subtype: string;
    action: string;
    outcome: string;
    outcomeDesc: string;
    clients: string[];
    patients: string[];
    resources: string[];
  }
  /** The AuditEvents in the ledger that name a request id. */
  async function recordsOf(requestId: string): Promise<Recorded[]> {
    const rows = ((await t.svc.db.knex.raw('select canonical from audit_ledger where canonical like ?', [`%"value":"${requestId}"%`])) as { rows: { canonical: string }[] }).rows;
    type Ev = { subtype: { code: string }[]; action: string; outcome: string; outcomeDesc: string; agent: { who?: { identifier?: { value?: string } } }[]; entity: { what?: { reference?: string; identifier?: { value?: string } }; role?: { code: string } }[] };
    return rows
      .map((r) => JSON.parse(r.canonical) as Ev)
      .filter((e) => e.entity.some((x) => x.role?.code === '26' && x.what?.identifier?.value === requestId))
      .map((e) => ({
        subtype: e.subtype[0].code,
        action: e.action,
        outcome: e.outcome,
        outcomeDesc: e.outcomeDesc,
        clients: e.agent.flatMap((a) => (a.who?.identifier?.value ? [a.who.identifier.value] : [])),
        patients: e.entity.filter((x) => x.role?.code === '1').map((x) => x.what!.reference!),
        resources: e.entity.filter((x) => x.role?.code === '4').map((x) => x.what!.reference!),
      }));
  }
  const ACTION: Record<string, string> = {
    read: 'R', vread: 'R', update: 'U', patch: 'U', delete: 'D', 'history-instance': 'R', 'history-type': 'R', 'history-system': 'R', create: 'C',
    'conditional create': 'C', 'conditional update': 'U', 'conditional delete': 'D', 'search-type': 'R', 'search-system': 'R', 'search-compartment': 'R',
    transaction: 'E', batch: 'E', $validate: 'E',
  };
  /** Interactions whose allowed cell touches patient P's data, so its record names P. */
  const ABOUT_P = new Set(['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'conditional create', 'conditional update', 'conditional delete', 'search-compartment']);
  const outcomeOf = (status: number) => (status < 400 ? '0' : status < 500 ? '4' : '8');

  /** What is wrong with the cell's records (empty when they are right). */
  async function checkRecords(i: Interaction, f: Form, allowed: boolean): Promise<string[]> {
    const status = cellStatuses[0];
    const records = await recordsOf(cellRequest);
    const bundle = i.name === 'transaction' || i.name === 'batch';
    const problems: string[] = [];
    // A Bundle that reached the interaction has one record per entry (each Bundle here has one).
    const expected = bundle && status !== 401 ? 2 : 1;
    if (cellStatuses.length !== 1) problems.push(`${cellStatuses.length} requests`);
    if (records.length !== expected) return [...problems, `${records.length} records, expected ${expected}`];
    // POST [base] unauthenticated is not parsed: its record cannot tell a batch from a transaction.
    const top = bundle && status !== 401 ? records.find((r) => r.subtype === i.name) : records[0];
    if (!top) return [...problems, `no ${i.name} record`];
    if (top.action !== ACTION[i.name]) problems.push(`action ${top.action}`);
    if (top.outcome !== outcomeOf(status) || !top.outcomeDesc.startsWith(String(status))) problems.push(`outcome ${top.outcome} (${top.outcomeDesc}) for status ${status}`);
    const client = status === 401 ? 'anonymous' : clientOf(f);
    for (const r of records) if (!r.clients.includes(client)) problems.push(`agent ${r.clients.join(',')} instead of ${client}`);
    if (allowed && ABOUT_P.has(i.name) && !top.patients.includes(`Patient/${P}`)) problems.push(`no patient entity Patient/${P} (${top.patients.join(',')})`);
    if (bundle && status !== 401) {
      const entry = records.find((r) => r !== top)!;
      if (entry.action !== (i.name === 'transaction' ? 'C' : 'R')) problems.push(`entry action ${entry.action}`);
      if (allowed && !entry.patients.includes(`Patient/${P}`)) problems.push('entry without patient entity');
      if (allowed && entry.outcome !== '0') problems.push(`entry outcome ${entry.outcome}`);
    }
    return problems;
  }

  test('every interaction x every token form: 0 unauthorized 2xx, 0 missing 401, every allowed cell succeeds, every cell audited', async () => {
    const wrong: string[] = [];
    const audit: string[] = [];
    let n = 0;
    for (const i of INTERACTIONS) {
      for (const f of FORMS) {
        // $validate is decided on the type alone: it validates what is sent and reads nothing stored.
        const allowed = i.needs.includes('|') ? i.needs.split('|').some((l) => [...l].every((x) => (f.typeLetters ?? f.letters).includes(x))) : has(f, i.needs);
        cellRequest = `matrix-cell-${++n}-${randomUUID().slice(0, 8)}`;
        cellStatuses = [];
        const got = await i.run(f);
        const expected = allowed ? 'allowed' : 'refused';
        const problems = await checkRecords(i, f, allowed);
        cells.push(`${i.name.padEnd(20)} ${f.name.padEnd(24)} expected ${expected.padEnd(8)} got ${got}${problems.length ? `  AUDIT: ${problems.join('; ')}` : '  audited'}`);
        if (got !== expected) wrong.push(`${i.name} / ${f.name}: expected ${expected}, got ${got}`);
        if (problems.length) audit.push(`${i.name} / ${f.name}: ${problems.join('; ')}`);
      }
    }
    expect(wrong).toEqual([]);
    // 0 missing, 0 extra, every record right.
    expect(audit).toEqual([]);
    expect(cells).toHaveLength(INTERACTIONS.length * FORMS.length);
    // 270 cells of a few requests each in one test: 15-40 s here; bounded generously for a loaded machine.
  }, 240_000);

  test('no token and an expired token are 401 on every protected interaction (never 403 or 2xx)', async () => {
    const id = await seed();
    for (const f of FORMS.filter((x) => x.name === 'no token' || x.name === 'expired')) {
      const a = as(f);
      const statuses = [
        (await a.get(`/Observation/${id}`)).status,
        (await a.get('/Observation')).status,
        (await a.get('/_history')).status,
        (await a.post('/').set('Content-Type', FHIR).send({ resourceType: 'Bundle', type: 'batch', entry: [] })).status,
        (await a.post('/Observation/$validate').set('Content-Type', FHIR).send(obs())).status,
        (await a.delete(`/Observation/${id}`)).status,
      ];
      expect([f.name, statuses]).toEqual([f.name, statuses.map(() => 401)]);
    }
    expect((await exists(id)).status).toBe(200);
  });

  test('denials name the missing scope and never the data', async () => {
    const id = await seed({ valueString: 'secret-value-xyz' });
    const r = await request(t.url).get(`/Observation/${id}`).set('Authorization', `Bearer ${tokens.get('v2 s')}`);
    expect(r.status).toBe(403);
    expect(r.body.issue[0].diagnostics).toMatch(/"r" \(read\) on Observation/);
    expect(JSON.stringify(r.body)).not.toContain('secret-value-xyz');
    const w = await request(t.url).post('/Observation').set('Authorization', `Bearer ${tokens.get('patient/ other patient')}`).set('Content-Type', FHIR).send(obs({ valueString: 'secret-value-xyz' }));
    expect(w.status).toBe(403);
    expect(JSON.stringify(w.body)).not.toContain('secret-value-xyz');
    expect(JSON.stringify(w.body)).not.toContain(P);
  });
});
