// Issue 14 items 0 and 1: every search and history request is bounded by budgets checked before any
// SQL (a 400 too-costly, or 413 for size, naming the budget and its limit), a NUL in a search value is
// a 400, and _include:iterate marks the Bundle incomplete when its round limit left resources out.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type request from 'supertest';
import { authed, backends, startTestServer, type TestServer } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const FORM = 'application/x-www-form-urlencoded';

function q(pairs: [string, string][]): string {
  return new URLSearchParams(pairs).toString();
}
function times(n: number, pair: [string, string]): [string, string][] {
  return Array.from({ length: n }, () => pair);
}

/** The response is a budget refusal naming the budget's variable and its limit, and no value. */
function expectBudget(res: request.Response, status: number, variable: string, limit: number): void {
  expect(res.status).toBe(status);
  expect(res.body.resourceType).toBe('OperationOutcome');
  const issue = res.body.issue[0];
  expect(issue.code).toBe('too-costly');
  expect(issue.diagnostics).toContain(variable);
  expect(issue.diagnostics).toContain(`limit is ${limit}`);
}

describe.each(backends())('search budgets on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let api: ReturnType<typeof authed>;
  beforeAll(async () => {
    t = await startTestServer(backend);
    api = authed(t);
  });
  afterAll(async () => {
    await t.close();
  });

  test('number of parameters: 100 pass, 101 are a 400 naming SEARCH_MAX_PARAMETERS', async () => {
    const pairs = (n: number) => Array.from({ length: n }, (_x, i) => [`unknown${i}`, 'x'] as [string, string]);
    await api.get(`/Patient?${q(pairs(100))}`).expect(200);
    expectBudget(await api.get(`/Patient?${q(pairs(101))}`), 400, 'SEARCH_MAX_PARAMETERS', 100);
  });

  test('values per parameter: 100 comma-separated pass, 101 are a 400 naming SEARCH_MAX_VALUES', async () => {
    const ids = (n: number) => Array.from({ length: n }, (_x, i) => `id-${i}`).join(',');
    await api.get(`/Patient?_id=${ids(100)}`).expect(200);
    expectBudget(await api.get(`/Patient?_id=${ids(101)}`), 400, 'SEARCH_MAX_VALUES', 100);
  });

  test('repetitions (AND) of one parameter, also through POST _search: 20 pass, 21 are a 400', async () => {
    await api.post('/Patient').set('Content-Type', FHIR).send({ resourceType: 'Patient', name: [{ family: 'Budgetson' }] }).expect(201);
    const ok = await api.post('/Patient/_search').set('Content-Type', FORM).send(q(times(20, ['name', 'Budgetson']))).expect(200);
    expect(ok.body.total).toBe(1);
    expectBudget(await api.post('/Patient/_search').set('Content-Type', FORM).send(q(times(21, ['name', 'Budgetson']))), 400, 'SEARCH_MAX_REPEATS', 20);
    // Modifiers do not make a parameter new: they AND on the same index.
    const mixed: [string, string][] = [...times(11, ['gender', 'male']), ...times(10, ['gender:not', 'female'])];
    expectBudget(await api.get(`/Patient?${q(mixed)}`), 400, 'SEARCH_MAX_REPEATS', 20);
  });

  test('chain depth: 3 hops pass, 4 are a 400 naming SEARCH_MAX_CHAIN_DEPTH', async () => {
    await api.get('/Observation?subject:Patient.organization.partof.name=x').expect(200);
    expectBudget(await api.get('/Observation?subject:Patient.organization.partof.partof.name=x'), 400, 'SEARCH_MAX_CHAIN_DEPTH', 3);
  });

  test('_has nesting: 2 pass, 3 are a 400 naming SEARCH_MAX_HAS_DEPTH', async () => {
    await api.get('/Patient?_has:Observation:subject:_has:Observation:has-member:status=final').expect(200);
    const three = '/Patient?_has:Observation:subject:_has:Observation:has-member:_has:Observation:has-member:status=final';
    expectBudget(await api.get(three), 400, 'SEARCH_MAX_HAS_DEPTH', 2);
  });

  test('_include and _revinclude count: 20 pass, 21 are a 400 naming SEARCH_MAX_INCLUDES', async () => {
    const inc = (n: number): [string, string][] => [...times(n - 1, ['_include', 'Observation:subject']), ['_revinclude', 'Provenance:target']];
    await api.get(`/Observation?${q(inc(20))}`).expect(200);
    expectBudget(await api.get(`/Observation?${q(inc(21))}`), 400, 'SEARCH_MAX_INCLUDES', 20);
  });

  test('_sort keys: 5 pass, 6 are a 400 naming SEARCH_MAX_SORT_KEYS', async () => {
    await api.get('/Patient?_sort=gender,-active,_id,_lastUpdated,death-date').expect(200);
    expectBudget(await api.get('/Patient?_sort=gender,-active,_id,_lastUpdated,death-date,language'), 400, 'SEARCH_MAX_SORT_KEYS', 5);
  });

  test('query size over 8 KB is a 413 naming SEARCH_MAX_QUERY_SIZE, in the URL and in a POST _search body', async () => {
    const under = 'a'.repeat(8 * 1024 - 200);
    const over = 'a'.repeat(8 * 1024 + 10);
    await api.get(`/Patient?unknown=${under}`).expect(200);
    await api.post('/Patient/_search').set('Content-Type', FORM).send(`unknown=${under}`).expect(200);
    const get = await api.get(`/Patient?unknown=${over}`);
    expect(get.status).toBe(413);
    expect(get.body.issue[0].code).toBe('too-costly');
    expect(get.body.issue[0].diagnostics).toContain('SEARCH_MAX_QUERY_SIZE');
    expect(get.body.issue[0].diagnostics).not.toContain('aaaa');
    const post = await api.post('/Patient/_search').set('Content-Type', FORM).send(`unknown=${over}`);
    expect(post.status).toBe(413);
    expect(post.body.issue[0].diagnostics).toContain('SEARCH_MAX_QUERY_SIZE');
  });

  test('history: an oversized query is a 413 naming SEARCH_MAX_QUERY_SIZE', async () => {
    const big = await api.get(`/_history?_elements=${'a'.repeat(9000)}`);
    expect(big.status).toBe(413);
    expect(big.body.issue[0].diagnostics).toContain('SEARCH_MAX_QUERY_SIZE');
    await api.get('/Patient/_history?_count=5&_elements=id').expect(200);
  });

  test.each([
    ['a string value', '/Patient?family=ab%00c'],
    ['a token value', '/Observation?code=http://loinc.org|12%00'],
    ['a reference value', '/Observation?subject=Patient/a%00'],
    ['a uri value', '/ValueSet?url=http://example.org/%00'],
    ['a _content value', '/Observation?_content=fever%00'],
    ['an _id value', '/Patient?_id=a%00'],
    ['a parameter name', '/Patient?fam%00ily=x'],
  ])('a NUL in %s is a 400 OperationOutcome, not a 500', async (_kind, path) => {
    const res = await api.get(path);
    expect(res.status).toBe(400);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(res.body.issue[0].diagnostics).toMatch(/NUL/);
  });

  test('a NUL in conditional criteria (If-None-Exist) is a 400, not a 500', async () => {
    const res = await api.post('/Patient').set('Content-Type', FHIR).set('If-None-Exist', 'identifier=a%00').send({ resourceType: 'Patient' });
    expect(res.status).toBe(400);
    expect(res.body.issue[0].diagnostics).toMatch(/NUL/);
  });

  test('a NUL in a history parameter is a 400', async () => {
    const res = await api.get('/Patient/_history?_since=2020%00');
    expect(res.status).toBe(400);
    expect(res.body.resourceType).toBe('OperationOutcome');
  });

  test('_include:iterate: hitting SEARCH_INCLUDE_ITERATE_DEPTH with more to include marks the Bundle incomplete', async () => {
    // A chain of six Observations, each hasMember the next: O0 -> O1 -> ... -> O5.
    const ids: string[] = [];
    let next: string | undefined;
    for (let i = 5; i >= 0; i--) {
      const obs = {
        resourceType: 'Observation',
        status: 'final',
        code: { text: `iterate-chain-${i}` },
        ...(next ? { hasMember: [{ reference: `Observation/${next}` }] } : {}),
      };
      const { body } = await api.post('/Observation').set('Content-Type', FHIR).send(obs).expect(201);
      next = body.id as string;
      ids.unshift(next);
    }
    const includedOf = (b: { entry?: { search: { mode: string }; resource: { id: string } }[] }) => (b.entry ?? []).filter((e) => e.search.mode === 'include').map((e) => e.resource.id);
    const outcomeOf = (b: { entry?: { search: { mode: string }; resource: { issue: { diagnostics: string }[] } }[] }) => (b.entry ?? []).find((e) => e.search.mode === 'outcome');

    // The first round and 3 :iterate rounds reach O4; O5 is left out and the Bundle says so.
    const cut = await api.get(`/Observation?_id=${ids[0]}&_include:iterate=Observation:has-member`).expect(200);
    expect(includedOf(cut.body).sort()).toEqual(ids.slice(1, 5).sort());
    const warning = outcomeOf(cut.body);
    expect(warning?.resource.issue.map((i) => i.diagnostics).join(' ')).toMatch(/SEARCH_INCLUDE_ITERATE_DEPTH.*incomplete/);

    // From O1 the same rounds reach the end of the chain: complete, no warning.
    const whole = await api.get(`/Observation?_id=${ids[1]}&_include:iterate=Observation:has-member`).expect(200);
    expect(includedOf(whole.body).sort()).toEqual(ids.slice(2).sort());
    expect(outcomeOf(whole.body)).toBeUndefined();
  });
});
